"""What the ``cnnbench`` commands that run something do (sweep, check, tabulate, compare,
repair, schema), one function per command (``cli`` parses the arguments and picks one);
those that read a finished study or model are in ``results_commands``. Each returns its
exit code; bad input raises one of the errors ``cli.main`` turns into a line and exit 2.
"""
from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from pathlib import Path

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
    from cnnbench.reports.report import check_summary
    from cnnbench.space import load_space

    space = load_space(args.space)
    if args.recipe_only:
        from cnnbench.space.variants import recipe_alone

        space = recipe_alone(space)
    if args.measure:
        from cnnbench.plan import measure

        print(f"measuring training speed here ({space.source}, two short epochs on random images)...")
        print(f"  {measure(space) / 1e9:.0f} GFLOP/s")
    print(check_summary(space))
    if args.timeout:
        from cnnbench.plan import plan
        from cnnbench.training.data import class_count

        n = space.data.train_subset or 50_000
        n_val = round(n * space.data.validation_fraction)
        found = plan(space, args.timeout, n_train=n - n_val, n_val=n_val, n_test=space.data.test_subset or 10_000,
                     recipe_only=args.recipe_only, num_classes=class_count(space.data, Path(args.space).resolve().parent),
                     workers=args.workers)
        print(found.text() if found else "  plan: this machine's speed for networks of this size is unknown "
              "(cnnbench check --measure measures it in about half a minute)")
    return 0


def worker_role() -> tuple[str | None, int]:
    """(worker id, worker number) when a sweep started this process as one of its workers
    (KerasTuner's KERASTUNER_TUNER_ID, cnnbench's CNNBENCH_WORKER), else (None, 0): the one
    place that reads those variables outside the engines."""
    number = os.environ.get("CNNBENCH_WORKER") or None
    worker = os.environ.get("KERASTUNER_TUNER_ID") or number
    return worker, int(number) if number and number.isdigit() else 0


def cmd_sweep(args) -> int:
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    worker, worker_index = worker_role()
    request = SweepRequest(space_file=args.space, study=args.study, trials=args.trials,
                           worker=worker, worker_index=worker_index,
                           timeout_minutes=args.timeout, engine=args.engine, algo=args.algo,
                           storage=args.storage, results=args.results, workers=args.workers,
                           tensorboard=args.tensorboard, final=False if args.no_final else None,
                           seed=args.seed, start_with=not args.no_start_with, recipe_only=args.recipe_only,
                           at_rung=args.at_rung,
                           cache=not args.no_cache, deterministic=args.deterministic,
                           quantize=tuple(args.quantize), warm_start=tuple(args.warm_start or ()), sets=tuple(args.sets or ()), trainer=args.trainer,
                           command="cnnbench " + shlex.join(args.argv))
    sweep = prepare(request)  # TensorFlow loads later, once the data has (a bad input is a sub-second error)
    install_stop_handlers()
    summary = run_sweep(sweep)
    stopped = EXIT_FOR_SIGNAL.get(summary["stopped_by"], INTERRUPTED) if summary["stopped_by"] else 0
    if summary.get("worker"):
        return stopped
    try:
        _print_summary(sweep, summary, stopped)
    except OSError as error:  # the terminal is gone (a closed ssh session): its writes fail with EIO
        if error.errno != errno.EIO:
            raise
        for stream in (sys.stdout, sys.stderr):  # nor may the interpreter's last flush fail (exit 120)
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return stopped or (0 if summary["card"] else 1)


def _print_summary(sweep, summary: dict, stopped: int) -> None:
    """The sweep's last words: the top of its leaderboard, its export, where its report is."""
    from cnnbench.reports.report import print_leaderboard, wide_console
    from cnnbench.reports.results import leaderboard_frame

    console = wide_console()
    frame = leaderboard_frame(summary["records"], sweep.space)
    print_leaderboard(frame, f"{sweep.study}: top trials", list(sweep.space.searched()), top=5, console=console)
    print(f"leaderboard: {sweep.paths.root / 'leaderboard.md'}")
    card = summary["card"]
    if summary.get("final") is not None:
        print(summary["final"].message)
    if card:
        trained = (f"final training on {card.final_train_images:,} images" if card.final
                   else "the trial's own model")
        validation = f"validation accuracy {card.validation['accuracy']:.4f}, " if card.validation else ""
        chosen = f"best trial {card.trial}" if card.trial is not None else card.chosen
        print(f"{chosen}: {validation}test accuracy {card.test_accuracy:.4f} on "
              f"{card.test['images']} test images ({trained})")
        print(f"exported model: {summary['best_model']}")
    else:
        print("no trial completed, so no model was exported")
    print(f"report: {summary['report']}")
    if stopped:
        print(f"stopped by {signal.Signals(summary['stopped_by']).name}: finished trials are kept; "
              "run the same command again to continue")


def cmd_schema(args) -> int:
    from cnnbench.space.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_repair(args) -> int:
    """Make a study's Optuna journal readable again, keeping every complete entry."""
    from cnnbench.engines.optuna.journal import repair_journal

    journal = Path(args.results) / args.study / "optuna.journal"
    if not journal.is_file():
        raise SpaceError(f"{journal}: no Optuna journal here (a study run with --storage keeps its state in the "
                         "database)")
    print(f"{journal}: {repair_journal(journal) or 'nothing to repair'}")
    return 0


def cmd_tabulate(args) -> int:
    from cnnbench.benchmarking.tabular import tabulate

    print(f"table: {tabulate(args.space, args.study, args.results, args.workers, args.out and Path(args.out))}")
    return 0


def cmd_compare(args) -> int:
    from cnnbench.benchmarking.compare import compare_table
    from cnnbench.benchmarking.live import compare_live

    names = args.strategies.split(",") if args.strategies else None
    if args.live:
        written = compare_live(args.source, args.seeds, args.minutes or 5.0, Path(args.out or "results/compare-live"),
                               names)
    else:
        written = compare_table(Path(args.source), args.seeds, args.trials, args.out and Path(args.out), names,
                                horizon=args.minutes)
    print(Path(written["markdown"]).read_text())
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
