"""What every engine shares: the study job, the stop rules, waiting for workers.

An engine (Optuna, KerasTuner) only decides which configuration to try next and when to
prune. Recording, training (in a child process), saving the trial's model and describing
the outcome all go through ``engines.trial.run_trial``, so one configuration trains
identically whichever engine chose it, and every trial leaves the same record.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cnnbench import trials
from cnnbench.deadline import Deadline
from cnnbench.space import Space
from cnnbench.trials import Outcome, StudyPaths, TrialRecord, State


class Progress(Protocol):
    phase: str  # what the sweep is doing: "search", "promotion" or "final" (its progress line says)

    def trial_started(self, number: int, params: dict) -> None: ...
    def epoch_done(self, number: int, epoch: int, epochs: int, logs: dict) -> None: ...
    def trial_done(self, record: TrialRecord) -> None: ...
    def say(self, message: str) -> None: ...
    def caught_up(self, records: list[TrialRecord]) -> None: ...  # trials this process did not run


class SilentProgress:
    """A Progress that shows nothing: replays against a table, and the tests."""
    phase = "search"

    def trial_started(self, *a): pass
    def epoch_done(self, *a): pass
    def trial_done(self, *a): pass
    def say(self, *a): pass
    def caught_up(self, *a): pass


class Runner(Protocol):
    """Trains one configuration: ``isolation.TrialRunner`` (a child process) or in-process.
    ``final`` trains on train + validation (the final training), validating nothing;
    ``checkpoint`` is where the training keeps its per-epoch state (training/checkpoint.py);
    with ``stretch_to``, ``on_epoch`` may return a new number of epochs, up to it (final.py)."""
    def run(self, config: dict, seed: int, model_path: Path | None, on_epoch,
            log_dir: Path | None = None, final: bool = False,
            checkpoint: Path | None = None, stretch_to: int | None = None) -> Outcome: ...
    def close(self, kill: bool = False) -> None: ...


class TrialTaken(Exception):
    """This process's trial was declared lost while it was paused (SIGSTOP, a suspended
    machine) and handed to another: its result is dropped, its record left as the retry
    left it."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the running trial is recorded as interrupted, the sweep
    ranks and exports what finished, and exits 130 or 143."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class StudyJob:
    """Everything an engine needs to run a study; built by the sweep, nothing engine-specific."""
    study: str
    engine: str
    space: Space
    paths: StudyPaths
    trials: int                          # finished trials wanted in the study (earlier runs count)
    progress: Progress
    runner: Runner
    algo: str
    data_sizes: tuple[int, int, int] | None = None  # train, validation, test images (for the deadline)
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    storage: str | None = None
    workers: int = 0                     # processes to start on this machine (this one then only waits)
    worker_command: list[str] = field(default_factory=list)
    worker_index: int = 0                # 1, 2, ... in a worker process started by a sweep
    on_record: Callable[[TrialRecord], None] | None = None
    heartbeat_hook: Callable[[int], None] | None = None  # e.g. Optuna's RDB heartbeat, per trial number
    tensorboard: bool = False            # per-trial TensorBoard logs in <study>/tensorboard/trial-NNNN/
    ended_by: str = ""                   # why the search ended early (a stop rule), set by the engine
    data_fingerprint: str | None = None  # the data's; with ``cache``, finished trainings are reused
    cache: bool = True                   # serve a training already done (engines/cache.py); --no-cache
    warm_start: list = field(default_factory=list)  # (study, record) pairs to add before sampling (Optuna)
    trainer_name: str | None = None      # ``module:function`` of a trainer of the user's own (None: cnnbench's)
    fill_final: bool = False             # the final training's epochs fill the deadline (--recipe-only,
                                         # search.time_share)
    recipe_only: bool = False            # --recipe-only: the space is one recipe, trained alone

    @property
    def retries(self) -> int:
        return self.space.search.retries

    @property
    def test_images(self) -> int:
        """The test split's size: the export evaluates the final model on it (0: unknown)."""
        return self.data_sizes[2] if self.data_sizes else 0


def stop_rule_reason(job: StudyJob) -> str | None:
    """Why the space's stop rules end the search now (``search.stop_at``: a trial reached
    the accuracy; ``search.stop_after_no_improvement``: that many finished trials in a row
    brought no new best; ``search.time_share``: the search's share of the time is over),
    or None. Read from cnnbench's records, so both engines and every
    worker apply the same rule. The reason is kept in ``job.ended_by``."""
    search = job.space.search
    if job.deadline.search_over():
        job.ended_by = (_floor_reached(job) if job.deadline.floor_binds() else
                        f"search.time_share: the search's {search.time_share:g} of the time is over; the final "
                        "training fills the rest")
        return job.ended_by
    if not (search.stop_at or search.stop_after_no_improvement):
        return None
    finished = sorted((r for r in trials.read_records(job.paths) if r.state in trials.FINISHED),
                      key=lambda r: (r.finished_at or 0, r.trial))
    # stagnation is judged within one fidelity: the first rung, which every configuration runs
    same_fidelity = [r for r in finished if r.rung in (None, 0)] if search.rungs else finished
    reason = None
    target = (search.stop_at or {}).get("val_accuracy")
    reached = [r for r in finished if r.state == State.COMPLETE and r.val_accuracy is not None
               and target is not None and r.val_accuracy >= target]
    if reached:
        reason = (f"stop_at: trial {reached[0].trial} reached val_accuracy {reached[0].val_accuracy:.4f} "
                  f"(>= {target})")
    elif search.stop_after_no_improvement:
        best, since = None, 0
        for r in same_fidelity:
            if r.state == State.COMPLETE and r.val_accuracy is not None and (best is None or r.val_accuracy > best):
                best, since = r.val_accuracy, 0
            else:
                since += 1
        if best is not None and since >= search.stop_after_no_improvement:
            reason = (f"stop_after_no_improvement: the last {since} finished trials brought no better "
                      f"val_accuracy than {best:.4f}")
    if reason:
        job.ended_by = reason
    return reason


def share_used_up(job: StudyJob) -> None:
    """The search stopped because no run fitted before its share's end (search.time_share):
    say so in ``job.ended_by`` as the stop rules do (both engines)."""
    if job.deadline.floor_binds():
        job.ended_by = _floor_reached(job)
    elif job.deadline.search_end is not None:
        job.ended_by = (f"search.time_share: no run fitted in what was left of the search's "
                        f"{job.space.search.time_share:g} of the time; the final training fills the rest")


def _floor_reached(job: StudyJob) -> str:
    return (f"search.final_min_epochs: the rest of the time is what {job.deadline.final_floor} epochs of the final "
            "training need here; the final training fills it")


def workers_finished(job: StudyJob) -> None:
    """The worker processes ran the search in their own processes: this one's progress line
    (the search's last refusals, the final training) counts their trials and their best, and
    its deadline keeps time for that best's final training (search.final_min_epochs)."""
    records = trials.read_records(job.paths)
    job.progress.caught_up(records)
    note_best(job.deadline, job.space, records)


def note_best(deadline: Deadline, space, records: list) -> None:
    """Trials finished elsewhere (workers, an earlier run of the command): the deadline keeps
    time for the final training of their best, at the final's fidelity, not a rung's."""
    if (best := trials.best_trial(records)) is not None:
        deadline.note_complete(space.complete(best.values) if best.rung is not None else best.config,
                               best.val_accuracy, best.rung)


def wait_all(processes: list, on_exit: Callable | None = None) -> list[int]:
    """Wait for every worker process; ``on_exit(process, code)`` as each one ends. A signal
    here (SIGINT, SIGTERM) is passed on to the workers, which stop the same way: they record
    their running trials as interrupted and exit; then it propagates."""
    import signal

    codes: list[int | None] = [None] * len(processes)
    try:
        while None in codes:
            for i, process in enumerate(processes):
                if codes[i] is None and (code := process.poll()) is not None:
                    codes[i] = code
                    if on_exit:
                        on_exit(process, code)
            time.sleep(0.2)
    except BaseException as stop:
        forwarded = getattr(stop, "signum", signal.SIGTERM)
        for process in processes:
            if process.poll() is None:
                process.send_signal(forwarded)
        for process in processes:
            process.wait()
        raise
    return [code for code in codes if code is not None]  # all set: the loop waits for every one
