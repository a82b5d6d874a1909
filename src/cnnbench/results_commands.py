"""The commands that read what a sweep left: a study's leaderboard, plots, report and
export (``cnnbench leaderboard|plots|report|export|verify-export``), and an exported
model applied to new images (``cnnbench predict|evaluate``). The commands that run
something (sweep, check, tabulate, compare) are in ``commands``; ``cli`` picks either.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cnnbench.commands import BAD_INPUT
from cnnbench.provenance import RunInfo
from cnnbench.space import SpaceError


def cmd_leaderboard(args) -> int:
    from cnnbench.reports.report import rich_table, wide_console
    from cnnbench.reports.results import read_study_leaderboard, studies_frame

    root = Path(args.results)
    console = wide_console()
    if args.study:
        study_dir = root / args.study
        if not (study_dir / "leaderboard.csv").exists():
            print(f"cnnbench: no leaderboard for study {args.study!r} in {root}", file=sys.stderr)
            return BAD_INPUT
        frame = read_study_leaderboard(study_dir)
        searched = RunInfo.read(study_dir / "run.json").searched()  # fixed values are the same in every row
        cols = ["trial", "state", "engine", *searched, "val_accuracy", "val_loss", "epochs_run",
                "train_seconds", "images_per_s", "parameter_count", "flops", "reason", "note"]
        console.print(rich_table(frame, f"{args.study}: {len(frame)} trials, best first", cols, args.top))
    else:
        frame = studies_frame(root)
        if frame.empty:
            print(f"cnnbench: no studies in {root}", file=sys.stderr)
            return BAD_INPUT
        console.print(rich_table(frame, "All studies, best first", top=args.top))
    return 0


def _study_paths(args):
    from cnnbench.trials import StudyPaths

    paths = StudyPaths(Path(args.results) / args.study)
    if not (paths.root / "run.json").exists():
        raise SpaceError(f"{paths.root}: no study here (no run.json)")
    return paths


def _importances(paths) -> dict | None:
    from cnnbench import engines
    from cnnbench.space import parse_space
    from cnnbench.trials import read_records

    space = parse_space(RunInfo.read(paths.root / "run.json").space, str(paths.root / "run.json"))
    return engines.importances(space, read_records(paths))


def cmd_plots(args) -> int:
    from cnnbench.reports.pages import write_plots

    paths = _study_paths(args)
    for path in write_plots(paths, _importances(paths)):
        print(path)
    return 0


def cmd_report(args) -> int:
    from cnnbench.reports.pages import write_report

    paths = _study_paths(args)
    print(write_report(paths, _importances(paths)))
    return 0


def cmd_export(args) -> int:
    """Export a chosen trial (e.g. a point of a Pareto front) with its model card."""
    from cnnbench.reports.export import export_best
    from cnnbench.final import NO_TRIAL, FinalOutcome
    from cnnbench.trials import best_trial
    from cnnbench.trials import read_record, read_records

    paths, run, data = _study_data(args)
    records = read_records(paths)
    final = None
    done = read_record(paths.final_record)
    best = best_trial(records)
    if args.trial is None and done is not None and done.trial == (best.trial if best else NO_TRIAL):
        final = FinalOutcome(done, "the final training of the best trial")  # export it, as the sweep did
    card = export_best(records, paths, data, run, trial=args.trial, final=final, quantize=tuple(args.quantize))
    if card is None:
        print(f"cnnbench: {paths.root}: no completed trial to export", file=sys.stderr)
        return 1
    print(f"trial {card.trial}: test accuracy {card.test_accuracy:.4f}; exported to {paths.best}")
    return 0


def _study_data(args):
    """The study's folder, run.json and data (its test split checked to be the study's own)."""
    from cnnbench.request import check_same_data
    from cnnbench.space import parse_space
    from cnnbench.training.data import load_data

    paths = _study_paths(args)
    run = RunInfo.read(paths.root / "run.json")
    space = parse_space(run.space, str(paths.root / "run.json"))
    data = load_data(space.data, space.seed, Path(run.space_file).resolve().parent)
    check_same_data(paths, data)
    return paths, run, data


def cmd_verify_export(args) -> int:
    """Check the export's ONNX and LiteRT files (writing those missing) and put the figures
    in its model card."""
    import dataclasses

    from cnnbench.files import atomic_write, json_text
    from cnnbench.provenance import ModelCard
    from cnnbench.reports.export import card_markdown, deployment_files, load_or_set_aside

    paths, _, data = _study_data(args)
    card = ModelCard.read(paths.best / "model_card.json")
    if card is None or not (paths.best / "model.keras").exists():
        print(f"cnnbench: {paths.best}: nothing exported yet (cnnbench export {args.study})", file=sys.stderr)
        return BAD_INPUT
    model, problem = load_or_set_aside(paths.best / "model.keras")
    if model is None:
        print(f"cnnbench: {problem}; cnnbench export {args.study} exports again", file=sys.stderr)
        return 1
    runtimes = deployment_files(model, paths.best, data, tuple(args.quantize), say=print, keep_existing=True)
    card = dataclasses.replace(card, runtimes=runtimes)
    atomic_write(paths.best / "model_card.json", json_text(card.to_dict()))
    atomic_write(paths.best / "model_card.md", card_markdown(card))
    failed = [row for row in runtimes.values() if isinstance(row, dict) and row.get("status") == "failed"]
    return 1 if failed or "error" in runtimes else 0


def cmd_predict(args) -> int:
    from cnnbench.reports.predict import classify, expand, load, print_predictions
    from cnnbench.reports.report import progress_bar

    loaded = load(args.model)
    paths = expand(args.images)
    if not paths:
        print(f"cnnbench: no images found in {' '.join(args.images)}", file=sys.stderr)
        return BAD_INPUT
    with progress_bar(len(paths), "classifying", show=sys.stderr.isatty() and len(paths) > 256) as advance:
        results = classify(loaded, paths, top=args.top, on_batch=advance)
    return print_predictions(results, args.json, args.csv)


def cmd_evaluate(args) -> int:
    from cnnbench.reports.predict import evaluate_folder, load
    from cnnbench.reports.report import evaluation_table, wide_console

    loaded = load(args.model)
    result = evaluate_folder(loaded, Path(args.folder))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        wide_console().print(evaluation_table(result, loaded.class_names))
        for line in result["skipped_unreadable"]:
            print(f"skipped: {line}", file=sys.stderr)
    return 0
