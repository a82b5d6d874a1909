"""One sweep from start to finish: load data, run an engine, rank, final training, export.

``request.prepare`` has validated the input before anything here runs. Every trial keeps
its own record (``trials.py``), and the leaderboard and progress files are rewritten from
those records after every trial and once more at the end, so what is on disk after any stop
matches what was done.
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import yaml

from cnnbench import engines, trials
from cnnbench.provenance import ModelCard, RunInfo
from cnnbench.training import runtime
from cnnbench import final as final_training
from cnnbench.training.data import DataSpec, load_data
from cnnbench.deadline import Deadline
from cnnbench.engines.base import StudyJob, note_best
from cnnbench.reports.export import export_best
from cnnbench.training.isolation import DEFAULT_TRAINER, InProcessRunner, TrialRunner, load_trainer
from cnnbench.reports.pages import write_report
from cnnbench.reports.report import SweepProgress, markdown_table, study_markdown
from cnnbench.request import GLOBAL_BOARD_TITLE, Sweep, SweepRequest, check_same_data, prepare
from cnnbench.reports.results import (atomic_write, epoch_curves, json_text, leaderboard_frame, phase_spans,
                                      progress_frame, read_json, studies_frame, write_study_leaderboard)
from cnnbench.trials import State

__all__ = ["Sweep", "SweepRequest", "prepare", "run_sweep"]  # the flow's door: request.py validates


class _CallableModule(types.ModuleType):
    """``import cnnbench.sweep`` binds this module to the name ``cnnbench.sweep``, which is
    also the API's function (cnnbench/__init__.py): calling the module calls the function,
    so a notebook's ``cnnbench.sweep(...)`` works whatever was imported before."""

    def __call__(self, *args, **kwargs):
        from cnnbench.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def is_worker(sweep: Sweep) -> bool:
    """This process runs trials only: another sweep (or a person) started it as a worker
    (``SweepRequest.worker``, which the command line reads from the environment)."""
    return sweep.request.worker is not None



def run_sweep(sweep: Sweep, live: bool | None = None) -> dict:
    """Run the trials, keep the leaderboard current, export the best model. Returns a summary.

    Longer than most functions here on purpose: a sweep's whole life in order (data, the
    deadline, the engine, the final training, the export, the reports), with the one
    try/finally that stops the trial process on any ending.
    """
    req, space, paths = sweep.request, sweep.space, sweep.paths
    space_dir = Path(req.space_file).resolve().parent
    data = load_data(space.data, space.seed, space_dir)
    check_same_data(paths, data)
    engine = engines.get(req.engine)
    if sweep.storage and hasattr(engine, "check_study_data"):  # a shared storage, another machine's run.json
        engine.check_study_data(sweep.study, sweep.storage, data.split_fingerprint())
    runtime.import_tensorflow_quietly()  # only now: bad data or a mismatched study is an error in a second
    run = describe(sweep, data)
    before = trials.read_records(paths)
    deadline = _deadline(sweep, data, before)
    label = f"{sweep.study} worker {req.worker}" if is_worker(sweep) else sweep.study
    progress = SweepProgress(label, sweep.trials, timeout_minutes=sweep.timeout, live=live)
    progress.caught_up(before)
    if data.skipped and not is_worker(sweep):
        shown = "; ".join(data.skipped[:5]) + (f"; and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else "")
        progress.say(f"skipped {len(data.skipped)} unreadable image(s) (listed in run.json): {shown}")
    refresh = _refresher(sweep, run, progress)
    trainer = req.trainer or DEFAULT_TRAINER
    runner = (InProcessRunner(data, load_trainer(trainer)) if req.in_process
              else TrialRunner((DataSpec.of(space.data), space.seed, space_dir), trainer))
    job = StudyJob(study=sweep.study, engine=req.engine, space=space, paths=paths, trials=sweep.trials,
                   progress=progress, runner=runner, algo=sweep.algo,
                   data_sizes=(len(data.y_train), len(data.y_val), len(data.y_test)), deadline=deadline,
                   storage=sweep.storage, workers=0 if is_worker(sweep) else req.workers,
                   worker_command=req.worker_command(), worker_index=req.worker_index,
                   on_record=refresh, tensorboard=req.tensorboard, data_fingerprint=data.split_fingerprint(),
                   cache=req.cache, warm_start=sweep.warm, trainer_name=req.trainer,
                   fill_final=req.recipe_only or (space.search.time_share is not None and deadline.end is not None),
                   recipe_only=req.recipe_only)
    stopped_by, final = None, None
    # Worker processes keep the same deadline: the engines hand it to them in their own
    # environment (Deadline.worker_environment); this process's environment is not touched.
    try:
        final = _search_then_final(sweep, job, run)
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM: keep what finished, rank it, export it
        stopped_by = getattr(stop, "signum", 2)
        final = _interrupted_final(sweep)
    finally:
        runner.close(kill=stopped_by is not None)
        progress.close()
    records = refresh()
    summary = {"study": sweep.study, "records": records, "card": None, "stopped_by": stopped_by,
               "best_model": None, "worker": is_worker(sweep)}
    if is_worker(sweep):  # the starting process ranks and exports once every worker is done
        return summary
    if not req.export:  # a table's levels: every trial's score is the result, no model is
        write_global_leaderboard(Path(req.results))
        return summary
    card = export_best(records, paths, data, run, final=final, quantize=req.quantize)
    write_global_leaderboard(Path(req.results))
    write_progress_plot(sweep, records, run, card)
    report = write_report(paths, engines.importances(space, records))
    return {**summary, "card": card, "best_model": str(paths.best / "model.keras") if card else None,
            "report": str(report), "final": final}


def describe(sweep: Sweep, data) -> dict:
    """run.json: the request's provenance plus the data and the machine; written (with the
    resolved space beside it) by the process that started the sweep, not by its workers."""
    paths = sweep.paths
    run = {**sweep.run, "data": {"source": data.source, "fingerprint": data.fingerprint,
                                 "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
                                 "skipped_unreadable": data.skipped},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sweep.started)),
           "started_unix": sweep.started, "timeout_minutes": sweep.timeout, "machine": runtime.machine()}
    # progress.csv counts minutes from the study's first start, across resumed runs
    run["first_started_unix"] = read_json(paths.root / "run.json").get("first_started_unix", sweep.started)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not is_worker(sweep):
        atomic_write(paths.root / "run.json", json_text(run))
        atomic_write(paths.root / "space.yaml", yaml.safe_dump(run["space"], sort_keys=False))
    return run


def _deadline(sweep: Sweep, data, before: list) -> Deadline:
    deadline = Deadline.from_minutes(sweep.timeout, sweep.started)
    deadline.image_size, deadline.num_classes = int(data.x_train.shape[1]), len(data.class_names)
    share = sweep.space.search.time_share
    if share is not None and sweep.timeout and sweep.final and deadline.search_end is None:
        deadline.search_end = sweep.started + share * sweep.timeout * 60  # then the final fills the rest
    if sweep.final:  # keep time for the best configuration's final training
        deadline.final_images = len(data.y_train) + len(data.y_val)
        if not is_worker(sweep):  # a worker keeps the search's end its parent handed it: it trains on
            # fewer cores than the final will, and sees only its own trials
            deadline.final_floor, deadline.test_images = sweep.space.search.final_min_epochs or 0, len(data.y_test)
            deadline.floor_config = sweep.space.recipe_config()
    note_best(deadline, sweep.space, before)
    return deadline


def _refresher(sweep: Sweep, run: dict, progress):
    """``refresh()``: the study's leaderboard and progress files rewritten from the records
    (after every trial and at the end); returns the records."""
    paths, reported = sweep.paths, set[str]()

    def refresh(_record=None) -> list:
        unreadable: list[str] = []
        records = trials.read_records(paths, unreadable)
        for problem in sorted(set(unreadable) - reported):  # said once, never dropped silently
            progress.say(f"unreadable trial record, left out of the leaderboard: {problem}")
            reported.add(problem)
        frame = leaderboard_frame(records, sweep.space)
        final = trials.read_record(paths.final_record)
        write_study_leaderboard(frame, paths.root, study_markdown(sweep.study, frame, RunInfo.from_dict(run), final))
        atomic_write(paths.root / "progress.csv",
                     progress_frame(records, run["first_started_unix"]).to_csv(index=False))
        return records

    return refresh


def _search_then_final(sweep: Sweep, job: StudyJob, run: dict):
    """The search (unless the space has one configuration), then the final training of its
    best configuration; the final's outcome, or None."""
    space, paths, deadline = sweep.space, sweep.paths, job.deadline
    if sweep.search_needed:
        engines.get(job.engine).run(job)
        if job.ended_by and not is_worker(sweep):  # a stop rule ended the search: say so where it lasts
            run["search_ended_by"] = job.ended_by
            atomic_write(paths.root / "run.json", json_text(run))
    if not sweep.final or is_worker(sweep):
        return None
    best_trial = trials.best_trial(trials.read_records(paths))
    if best_trial is not None or not sweep.search_needed:
        return final_training.run_final(job, best_trial, deadline.final_images)
    if deadline.end is not None and not trials.finished_count(trials.read_records(paths)):
        # The hour held no search trial beside a final training (a slow machine: every one
        # was refused, none failed): rather than nothing, the known recipe (else the space's
        # centre) on all images, sized to the time left.
        return final_training.run_final(job, None, deadline.final_images, recipe=space.recipe(),
                                        recipe_name="the start_with recipe" if space.start_with
                                        else "the space's centre (no start_with recipe)")
    return None


def _interrupted_final(sweep: Sweep):
    """This run's final training, when the stop came during it (not an earlier run's)."""
    interrupted = trials.read_record(sweep.paths.final_record)
    if interrupted is not None and interrupted.state == State.INTERRUPTED and \
            (interrupted.started_at or 0) >= sweep.started:
        return final_training.FinalOutcome(interrupted, "the final training was interrupted; exported the "
                                           "best trial's own model; run the same command again to do it")
    return None


def write_progress_plot(sweep: Sweep, records: list, run: dict, card: ModelCard | None) -> None:
    """progress.png: time to accuracy at a glance, with the exported model's test accuracy."""
    from cnnbench.reports.plots import time_to_accuracy

    info = RunInfo.from_dict(run)
    origin, cpu = info.first_started_unix, info.cpu
    time_to_accuracy(progress_frame(records, origin), sweep.paths.root / "progress.png",
                     f"{sweep.study}: {info.space_file}, {cpu.get('model')} ({cpu.get('cores')} cores)",
                     test_accuracy=card.test_accuracy if card else None,
                     export_minutes=(time.time() - origin) / 60, curves=epoch_curves(records, origin),
                     phases=phase_spans(records, trials.read_record(sweep.paths.final_record), origin))


def write_global_leaderboard(results_root: Path) -> None:
    frame = studies_frame(results_root)
    atomic_write(results_root / "leaderboard.md",
                 f"{GLOBAL_BOARD_TITLE}\n\nOne row per study under results/: its best trial by validation "
                 "accuracy and that model's test accuracy. Rewritten by every `cnnbench sweep`.\n\n"
                 + markdown_table(frame))

