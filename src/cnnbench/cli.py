"""The ``cnnbench`` command: parse arguments, call the library, choose the exit code.

Exit codes: 0 success; 1 some work failed (an image that could not be classified, a sweep
with no completed trial); 2 bad input (space file, data, arguments), nothing written;
130/143/129 stopped by SIGINT/SIGTERM/SIGHUP (what finished is kept); 74 a file could not be
written (a full disk, a read-only folder: one line naming it).
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from cnnbench.training import runtime
from cnnbench.commands import (BAD_INPUT, EXIT_FOR_SIGNAL, INTERRUPTED, cmd_check, cmd_compare, cmd_repair,
                               cmd_schema, cmd_sweep, cmd_tabulate)
from cnnbench.results_commands import (cmd_evaluate, cmd_export, cmd_leaderboard, cmd_plots, cmd_predict,
                                       cmd_report, cmd_verify_export)
from cnnbench.training.data import DataError
from cnnbench.reports.export import ExportError
from cnnbench.reports.predict import ModelError
from cnnbench.deploy.convert import QUANTIZATIONS
from cnnbench.deploy.runtimes import runtime_of
from cnnbench.space import SpaceError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnbench", description="Hyperparameter search for CNNs on CIFAR-10.")
    sub = p.add_subparsers(dest="command", required=True)

    _sweep_arguments(sub.add_parser("sweep", help="run (or continue) a search and export the best model"))
    _other_commands(sub)
    return p


def _sweep_arguments(s: argparse.ArgumentParser) -> None:
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
    s.add_argument("--set", action="append", metavar="KNOB=VALUE", dest="sets",
                   help="fix a parameter at a value (repeatable), e.g. --set lookahead=false: a recipe with one "
                        "ingredient taken out")
    s.add_argument("--no-start-with", action="store_true",
                   help="ignore the space's start_with recipes: the search on its own, as for a user without one")
    s.add_argument("--recipe-only", action="store_true",
                   help="no search: the space's first start_with recipe (else its centre) trained on all training "
                        "images for as many epochs as --timeout holds (study NAME-recipe-only)")
    s.add_argument("--at-rung", type=int, metavar="K",
                   help="every trial at the fidelity of the space's search.rungs[K] only, no promotion "
                        "(what cnnbench tabulate trains a multi-fidelity table with)")
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
    s.add_argument("--trainer", metavar="MODULE:FUNCTION",
                   help="a trainer of your own, called as cnnbench.training.train.train_and_evaluate(config, data, "
                   "on_epoch, seed) and returning a cnnbench.trials.TrialResult (default: cnnbench's)")
    _quantize_argument(s)
    s.set_defaults(func=cmd_sweep)


def _quantize_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", action="append", choices=QUANTIZATIONS, default=[],
                   help="also write a quantized LiteRT file: dynamic (int8 weights) or int8 (weights and "
                   "activations, calibrated on training images); repeatable")


def _other_commands(sub) -> None:
    # One declaration per command, in the order `cnnbench --help` lists them: a table more
    # than a function, so it stays in one piece.
    c = sub.add_parser("check", help="validate a space file and print what it searches")
    c.add_argument("space")
    c.add_argument("--timeout", type=float, help="minutes: print what a sweep of that length holds on this machine")
    c.add_argument("--measure", action="store_true",
                   help="first measure this machine's training speed, for the time-per-trial forecast")
    c.add_argument("--recipe-only", action="store_true",
                   help="the plan of a --recipe-only sweep: the recipe alone, as many epochs as --timeout holds")
    c.add_argument("--workers", type=int, default=0,
                   help="the plan of a sweep with --workers N: the search on N processes, each on its share of the "
                   "cores")
    c.set_defaults(func=cmd_check)

    lb = sub.add_parser("leaderboard", help="print a study's leaderboard, or all studies")
    lb.add_argument("study", nargs="?")
    lb.add_argument("--results", default="results")
    lb.add_argument("--top", type=int, default=20, help="rows to show")
    lb.set_defaults(func=cmd_leaderboard)

    pr = sub.add_parser("predict", help="classify images with an exported model")
    pr.add_argument("model", help="path to model.keras, model.onnx or model.tflite (the last two without TensorFlow)")
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
            _quantize_argument(command)
        command.set_defaults(func=func)

    ve = sub.add_parser("verify-export", help="check model.onnx and model.tflite against model.keras in a process "
                        "without TensorFlow (writes the missing ones), into the model card")
    ve.add_argument("study")
    ve.add_argument("--results", default="results")
    _quantize_argument(ve)
    ve.set_defaults(func=cmd_verify_export)

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
    cp.add_argument("--minutes", type=float,
                    help="--live: minutes per strategy and seed (default 5); a table: the simulated minutes "
                         "strategies are compared at (default: the median of every strategy and seed's total)")
    cp.add_argument("--out", help="output folder (default: beside the table, compare/)")
    cp.set_defaults(func=cmd_compare)

    sc = sub.add_parser("schema", help="print the JSON Schema of space files (for editors)")
    sc.set_defaults(func=cmd_schema)
    rp = sub.add_parser("repair", help="make a study's Optuna journal readable again (torn or unreadable entries)")
    rp.add_argument("study")
    rp.add_argument("--results", default="results", help="results folder")
    rp.set_defaults(func=cmd_repair)
    ev = sub.add_parser("evaluate", help="score an exported model on a labelled image folder")
    ev.add_argument("model", help="path to model.keras, model.onnx or model.tflite")
    ev.add_argument("folder", help="a folder with one subfolder of images per class")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(func=cmd_evaluate)


def main(argv: list[str] | None = None) -> int:
    runtime.prepare_environment()  # before anything can import TensorFlow
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # run.json quotes it
    runtime.pin_from_environment()  # a worker started by a sweep keeps to its share of the cores
    # compare replays through KerasTuner, which imports TensorFlow too
    # A sweep imports TensorFlow once its input is validated: a bad space file is a
    # sub-second error (cmd_sweep); KerasTuner's validation itself needs TensorFlow.
    # ONNX and LiteRT files run without it (only NumPy, Pillow and their runtime)
    keras_model = args.command in ("predict", "evaluate") and not runtime_of(args.model)
    if keras_model or args.command in ("export", "verify-export", "tabulate", "compare") \
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
# a full disk or quota, a read-only or unwritable folder, a failing device, a file over the
# size limit (EFBIG), a network filesystem's lost handle or connection (ESTALE, ENOTCONN)
WRITE_FAILURES = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO, errno.EPERM, errno.EFBIG,
                  errno.ESTALE, errno.ENOTCONN)


if __name__ == "__main__":
    sys.exit(main())
