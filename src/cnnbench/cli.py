"""The ``cnnbench`` command: parse arguments, call the library, choose the exit code.

Exit codes: 0 success; 1 some work failed (an image that could not be classified, a sweep
with no completed trial); 2 bad input (space file, data, arguments), nothing written;
130/143/129 stopped by SIGINT/SIGTERM/SIGHUP (what finished is kept); 74 a file could not be
written (a full disk, a read-only folder: one line naming it).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from cnnbench import runtime  # first: it prepares the environment before TensorFlow loads
from cnnbench.data import DataError
from cnnbench.export import ExportError
from cnnbench.predict import ModelError
from cnnbench.space import SpaceError

BAD_INPUT, INTERRUPTED = 2, 130
# the shell's convention: 128 + signal. SIGHUP (a closed terminal, a dropped ssh session)
# stops a sweep like SIGTERM.
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def install_stop_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP stop a sweep gracefully (the running trial is recorded as
    interrupted, what finished is ranked and exported). Installed explicitly, so a sweep
    started from a script or in the background, where SIGINT arrives ignored, still stops
    on ``kill -INT``. The first signal counts; later ones are ignored while cleaning up."""
    from cnnbench.engines.base import Interrupted

    def stop(signum, _frame):
        for each in EXIT_FOR_SIGNAL:
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signum)

    for each in EXIT_FOR_SIGNAL:
        signal.signal(each, stop)


def cmd_check(args) -> int:
    from cnnbench.report import check_summary
    from cnnbench.space import load_space

    space = load_space(args.space)
    if args.measure:
        from cnnbench.deadline import measure

        print(f"measuring training speed here ({space.source}, two short epochs on random images)...")
        print(f"  {measure(space) / 1e9:.0f} GFLOP/s")
    print(check_summary(space))
    if args.timeout:
        from cnnbench.deadline import plan

        n = space.data.train_subset or 50_000
        n_val = round(n * space.data.validation_fraction)
        found = plan(space, args.timeout, n_train=n - n_val, n_val=n_val, n_test=space.data.test_subset or 10_000)
        print(found.text() if found else "  plan: this machine's speed for networks of this size is unknown "
              "(cnnbench check --measure measures it in about half a minute)")
    return 0


def cmd_sweep(args) -> int:
    from cnnbench.report import print_leaderboard, wide_console
    from cnnbench.results import leaderboard_frame
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    request = SweepRequest(space_file=args.space, study=args.study, trials=args.trials,
                           timeout_minutes=args.timeout, engine=args.engine, algo=args.algo,
                           storage=args.storage, results=args.results, workers=args.workers,
                           tensorboard=args.tensorboard, final=False if args.no_final else None,
                           seed=args.seed, start_with=not args.no_start_with, cache=not args.no_cache, deterministic=args.deterministic,
                           warm_start=tuple(args.warm_start or ()), command="cnnbench " + shlex.join(args.argv))
    sweep = prepare(request)
    runtime.import_tensorflow_quietly()
    install_stop_handlers()
    summary = run_sweep(sweep)
    stopped = EXIT_FOR_SIGNAL.get(summary["stopped_by"], INTERRUPTED) if summary["stopped_by"] else 0
    if summary.get("worker"):
        return stopped
    console = wide_console()
    frame = leaderboard_frame(summary["records"], sweep.space)
    print_leaderboard(frame, f"{sweep.study}: top trials", list(sweep.space.searched()), top=5, console=console)
    print(f"leaderboard: {sweep.paths.root / 'leaderboard.md'}")
    card = summary["card"]
    if summary.get("final") is not None:
        print(summary["final"].message)
    if card:
        trained = (f"final training on {card['final']['train_images']:,} images" if card.get("final")
                   else "the trial's own model")
        validation = (f"validation accuracy {card['validation']['accuracy']:.4f}, " if card.get("validation")
                      else "")
        chosen = f"best trial {card['trial']}" if card["trial"] is not None else card["chosen"]
        print(f"{chosen}: {validation}test accuracy {card['test']['accuracy']:.4f} on "
              f"{card['test']['images']} test images ({trained})")
        print(f"exported model: {summary['best_model']}")
    else:
        print("no trial completed, so no model was exported")
    print(f"report: {summary['report']}")
    if stopped:
        print(f"stopped by {signal.Signals(summary['stopped_by']).name}: finished trials are kept; "
              "run the same command again to continue")
        return stopped
    return 0 if card else 1


def cmd_leaderboard(args) -> int:
    from cnnbench.report import rich_table, wide_console
    from cnnbench.results import read_json, read_study_leaderboard, studies_frame

    root = Path(args.results)
    console = wide_console()
    if args.study:
        study_dir = root / args.study
        if not (study_dir / "leaderboard.csv").exists():
            print(f"cnnbench: no leaderboard for study {args.study!r} in {root}", file=sys.stderr)
            return BAD_INPUT
        frame = read_study_leaderboard(study_dir)
        searched = list(read_json(study_dir / "run.json").get("space", {}).get("params", {}))
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


def cmd_plots(args) -> int:
    from cnnbench.pages import write_plots

    for path in write_plots(_study_paths(args)):
        print(path)
    return 0


def cmd_report(args) -> int:
    from cnnbench.pages import write_report

    print(write_report(_study_paths(args)))
    return 0


def cmd_export(args) -> int:
    """Export a chosen trial (e.g. a point of a Pareto front) with its model card."""
    from cnnbench.data import load_data
    from cnnbench.export import export_best
    from cnnbench.results import read_json
    from cnnbench.space import parse_space
    from cnnbench.final import NO_TRIAL, FinalOutcome, best_trial
    from cnnbench.trials import read_record, read_records

    paths = _study_paths(args)
    run = read_json(paths.root / "run.json")
    space = parse_space(run["space"], str(paths.root / "run.json"))
    data = load_data(space.data, space.seed, Path(run["space_file"]).resolve().parent)
    from cnnbench.sweep import check_same_data

    check_same_data(paths, data)  # the test split must be the study's own
    records = read_records(paths)
    final = None
    done = read_record(paths.final_record)
    best = best_trial(records)
    if args.trial is None and done is not None and done.trial == (best.trial if best else NO_TRIAL):
        final = FinalOutcome(done, "the final training of the best trial")  # export it, as the sweep did
    card = export_best(records, paths, data, run, trial=args.trial, final=final)
    if card is None:
        print(f"cnnbench: {paths.root}: no completed trial to export", file=sys.stderr)
        return 1
    print(f"trial {card['trial']}: test accuracy {card['test']['accuracy']:.4f}; exported to {paths.best}")
    return 0


def cmd_schema(args) -> int:
    from cnnbench.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_repair(args) -> int:
    """Make a study's Optuna journal readable again, keeping every complete entry."""
    from cnnbench.engines.journal import repair_journal

    journal = Path(args.results) / args.study / "optuna.journal"
    if not journal.is_file():
        raise SpaceError(f"{journal}: no Optuna journal here (a study run with --storage keeps its state in the "
                         "database)")
    print(f"{journal}: {repair_journal(journal) or 'nothing to repair'}")
    return 0


def cmd_tabulate(args) -> int:
    from cnnbench.tabular import tabulate

    print(f"table: {tabulate(args.space, args.study, args.results, args.workers, args.out and Path(args.out))}")
    return 0


def cmd_compare(args) -> int:
    from cnnbench.compare import compare_live, compare_table

    names = args.strategies.split(",") if args.strategies else None
    if args.live:
        written = compare_live(args.source, args.seeds, args.minutes, Path(args.out or "results/compare-live"), names)
    else:
        written = compare_table(Path(args.source), args.seeds, args.trials, args.out and Path(args.out), names)
    print(Path(written["markdown"]).read_text())
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def cmd_predict(args) -> int:
    from cnnbench.predict import classify, expand, load
    from cnnbench.report import predictions_csv, predictions_json, predictions_text, progress_bar

    loaded = load(args.model)
    paths = expand(args.images)
    if not paths:
        print(f"cnnbench: no images found in {' '.join(args.images)}", file=sys.stderr)
        return BAD_INPUT
    with progress_bar(len(paths), "classifying", show=sys.stderr.isatty() and len(paths) > 256) as advance:
        results = classify(loaded, paths, top=args.top, on_batch=advance)
    if args.json:
        print(predictions_json(results))
    elif args.csv:
        print(predictions_csv(results), end="")
    else:
        text, errors = predictions_text(results)
        print(text, end="")
        print(errors, end="", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


def cmd_evaluate(args) -> int:
    from cnnbench.predict import evaluate_folder, load
    from cnnbench.report import evaluation_table, wide_console

    loaded = load(args.model)
    result = evaluate_folder(loaded, Path(args.folder))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        wide_console().print(evaluation_table(result, loaded.class_names))
        for line in result["skipped_unreadable"]:
            print(f"skipped: {line}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnbench", description="Hyperparameter search for CNNs on CIFAR-10.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="run (or continue) a search and export the best model")
    s.add_argument("--space", default="search_spaces/default.yaml", help="search-space YAML file")
    s.add_argument("--study", help="study name (default: the space file's name); the same name resumes")
    s.add_argument("--trials", type=int, help="finished trials wanted in the study (default: the space's budget)")
    s.add_argument("--timeout", type=float, help="minutes after which no new trial starts")
    s.add_argument("--engine", default="optuna", help="optuna or kerastuner")
    s.add_argument("--algo", help="optuna: tpe|random|grid|cmaes; kerastuner: random|bayesian|hyperband|grid")
    s.add_argument("--storage", help="Optuna RDB URL shared by many machines, or @FILE holding it "
                   "(default: $CNNBENCH_STORAGE, else a journal file in the study folder)")
    s.add_argument("--results", default="results", help="results folder")
    s.add_argument("--workers", type=int, default=0,
                   help="worker processes on this machine (kerastuner: plus a chief oracle process)")
    s.add_argument("--no-final", action="store_true",
                   help="export the best trial's own model instead of training it once more on all training images")
    s.add_argument("--seed", type=int, help="replaces the space's seed (sampler and training): another run of a recipe")
    s.add_argument("--no-start-with", action="store_true",
                   help="ignore the space's start_with recipes: the search on its own, as for a user without one")
    s.add_argument("--warm-start", action="append", metavar="STUDY",
                   help="start a new Optuna study from the finished trials of STUDY (same results folder, same "
                   "searched parameters); repeatable")
    s.add_argument("--deterministic", action="store_true",
                   help="TensorFlow's op determinism in every trial: a configuration and seed give the same figures")
    s.add_argument("--no-cache", action="store_true",
                   help="train every trial, even one whose training (same configuration, seed, data and code) "
                   "was done before in this results folder")
    s.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard logs per trial in results/STUDY/tensorboard/trial-NNNN/")
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("check", help="validate a space file and print what it searches")
    c.add_argument("space")
    c.add_argument("--timeout", type=float, help="minutes: print what a sweep of that length holds on this machine")
    c.add_argument("--measure", action="store_true",
                   help="first measure this machine's training speed, for the time-per-trial forecast")
    c.set_defaults(func=cmd_check)

    lb = sub.add_parser("leaderboard", help="print a study's leaderboard, or all studies")
    lb.add_argument("study", nargs="?")
    lb.add_argument("--results", default="results")
    lb.add_argument("--top", type=int, default=20, help="rows to show")
    lb.set_defaults(func=cmd_leaderboard)

    pr = sub.add_parser("predict", help="classify images with an exported model")
    pr.add_argument("model", help="path to model.keras")
    pr.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    pr.add_argument("--top", type=int, default=1, help="classes to show per image")
    out = pr.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--csv", action="store_true", help="one row per image: image, class, probability, error")
    pr.set_defaults(func=cmd_predict)

    for name, func, text in (("plots", cmd_plots, "remake a study's pictures (results/STUDY/plots/)"),
                             ("report", cmd_report, "write a study's one-page report (results/STUDY/report.html)"),
                             ("export", cmd_export, "export the best trial, or --trial N, with its model card")):
        command = sub.add_parser(name, help=text)
        command.add_argument("study")
        command.add_argument("--results", default="results")
        if name == "export":
            command.add_argument("--trial", type=int, help="the trial to export (default: best validation accuracy)")
        command.set_defaults(func=func)

    tb = sub.add_parser("tabulate", help="train every configuration of a finite space into a table")
    tb.add_argument("space")
    tb.add_argument("--study", help="default: table-<space name>; the same name resumes")
    tb.add_argument("--results", default="results")
    tb.add_argument("--workers", type=int, default=0)
    tb.add_argument("--out", help="folder for table.csv and table.json (default: the study folder)")
    tb.set_defaults(func=cmd_tabulate)

    cp = sub.add_parser("compare", help="compare search strategies on a table (or live, on a space)")
    cp.add_argument("source", help="a table.csv from cnnbench tabulate (with --live: a space file)")
    cp.add_argument("--seeds", type=int, default=10)
    cp.add_argument("--trials", type=int, default=30, help="trials per strategy and seed (tables)")
    cp.add_argument("--strategies", help="comma-separated subset (default: all)")
    cp.add_argument("--live", action="store_true", help="real training: each strategy and seed a sweep of --minutes")
    cp.add_argument("--minutes", type=float, default=5.0, help="minutes per strategy and seed (--live)")
    cp.add_argument("--out", help="output folder (default: beside the table, compare/)")
    cp.set_defaults(func=cmd_compare)

    sc = sub.add_parser("schema", help="print the JSON Schema of space files (for editors)")
    sc.set_defaults(func=cmd_schema)
    rp = sub.add_parser("repair", help="make a study's Optuna journal readable again (torn or unreadable entries)")
    rp.add_argument("study")
    rp.add_argument("--results", default="results", help="results folder")
    rp.set_defaults(func=cmd_repair)
    ev = sub.add_parser("evaluate", help="score an exported model on a labelled image folder")
    ev.add_argument("model", help="path to model.keras")
    ev.add_argument("folder", help="a folder with one subfolder of images per class")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # run.json quotes it
    runtime.pin_from_environment()  # a worker started by a sweep keeps to its share of the cores
    # compare replays through KerasTuner, which imports TensorFlow too
    # A sweep imports TensorFlow once its input is validated: a bad space file is a
    # sub-second error (cmd_sweep); KerasTuner's validation itself needs TensorFlow.
    if args.command in ("predict", "evaluate", "export", "tabulate", "compare") \
            or getattr(args, "measure", False) or getattr(args, "engine", None) == "kerastuner":
        runtime.import_tensorflow_quietly()
    try:
        return args.func(args)
    except (SpaceError, DataError, ModelError, ExportError) as e:
        print(f"cnnbench: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt as stop:  # before the sweep could take over (e.g. while loading data)
        print("cnnbench: interrupted", file=sys.stderr)
        return EXIT_FOR_SIGNAL.get(getattr(stop, "signum", signal.SIGINT), INTERRUPTED)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a full disk, a read-only folder, a lost mount: one line, the study kept
        if e.errno not in WRITE_FAILURES:
            raise
        where = f"{e.filename}: " if e.filename else ""
        try:  # after SIGHUP the terminal itself may be gone
            print(f"cnnbench: {where}{e.strerror}; every finished trial is kept, and once the cause is fixed "
                  "the same command continues", file=sys.stderr)
        except OSError:
            pass
        return WRITE_FAILED


WRITE_FAILED = 74  # EX_IOERR
WRITE_FAILURES = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO, errno.EPERM)


if __name__ == "__main__":
    sys.exit(main())
