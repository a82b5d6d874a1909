"""The ``cnnbench`` command: parse arguments, call the library, choose the exit code.

Exit codes: 0 success; 1 some work failed (an image that could not be classified, a sweep
with no completed trial); 2 bad input (space file, data, arguments), nothing written;
130 interrupted (what finished is kept).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from cnnbench import runtime  # first: it prepares the environment before TensorFlow loads
from cnnbench.data import DataError
from cnnbench.predict import ModelError
from cnnbench.space import SpaceError

BAD_INPUT, INTERRUPTED = 2, 130
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's convention: 128 + signal


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM stop a sweep gracefully (the running trial is recorded as
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
    return 0


def cmd_sweep(args) -> int:
    from cnnbench.report import print_leaderboard, wide_console
    from cnnbench.results import leaderboard_frame
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    request = SweepRequest(space_file=args.space, study=args.study, trials=args.trials,
                           timeout_minutes=args.timeout, engine=args.engine, algo=args.algo,
                           storage=args.storage, results=args.results, workers=args.workers)
    sweep = prepare(request)
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
    if card:
        print(f"best trial {card['trial']}: validation accuracy {card['validation']['accuracy']:.4f}, "
              f"test accuracy {card['test']['accuracy']:.4f} on {card['test']['images']} test images")
        print(f"exported model: {summary['best_model']}")
    else:
        print("no trial completed, so no model was exported")
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
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("check", help="validate a space file and print what it searches")
    c.add_argument("space")
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

    ev = sub.add_parser("evaluate", help="score an exported model on a labelled image folder")
    ev.add_argument("model", help="path to model.keras")
    ev.add_argument("folder", help="a folder with one subfolder of images per class")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runtime.pin_from_environment()  # a worker started by a sweep keeps to its share of the cores
    if args.command in ("sweep", "predict", "evaluate") or getattr(args, "measure", False):
        runtime.import_tensorflow_quietly()
    try:
        return args.func(args)
    except (SpaceError, DataError, ModelError) as e:
        print(f"cnnbench: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt as stop:  # before the sweep could take over (e.g. while loading data)
        print("cnnbench: interrupted", file=sys.stderr)
        return EXIT_FOR_SIGNAL.get(getattr(stop, "signum", signal.SIGINT), INTERRUPTED)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
