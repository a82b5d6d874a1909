"""What every engine shares: the study job, and one way to run a trial.

An engine (Optuna, KerasTuner) only decides which configuration to try next and when to
prune. Recording, training (in a child process), saving the trial's model and describing
the outcome all go through ``run_trial`` here, so one configuration trains identically
whichever engine chose it, and every trial leaves the same record.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cnnbench import runtime, trials
from cnnbench.deadline import TRAIN_COST, Deadline
from cnnbench.isolation import ChildDied
from cnnbench.space import Space
from cnnbench.train import PruneTrial
from cnnbench.trials import StudyPaths, TrialRecord


class Progress(Protocol):
    def trial_started(self, number: int, params: dict) -> None: ...
    def epoch_done(self, number: int, epoch: int, epochs: int, logs: dict) -> None: ...
    def trial_done(self, record: TrialRecord) -> None: ...
    def say(self, message: str) -> None: ...


class SilentProgress:
    """A Progress that shows nothing: replays against a table, and the tests."""
    def trial_started(self, *a): pass
    def epoch_done(self, *a): pass
    def trial_done(self, *a): pass
    def say(self, *a): pass


class Runner(Protocol):
    """Trains one configuration: ``isolation.TrialRunner`` (a child process) or in-process.
    ``final`` trains on train + validation (the final training), validating nothing."""
    def run(self, config: dict, seed: int, model_path: Path | None, on_epoch,
            log_dir: Path | None = None, final: bool = False) -> tuple[str, str, dict | None]: ...
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

    @property
    def retries(self) -> int:
        return self.space.search.retries


def stop_rule_reason(job: StudyJob) -> str | None:
    """Why the space's stop rules end the search now (``search.stop_at``: a trial reached
    the accuracy; ``search.stop_after_no_improvement``: that many finished trials in a row
    brought no new best), or None. Read from cnnbench's records, so both engines and every
    worker apply the same rule. The reason is kept in ``job.ended_by``."""
    search = job.space.search
    if not (search.stop_at or search.stop_after_no_improvement):
        return None
    finished = sorted((r for r in trials.read_records(job.paths) if r.state in trials.FINISHED),
                      key=lambda r: (r.finished_at or 0, r.trial))
    # stagnation is judged within one fidelity: the first rung, which every configuration runs
    same_fidelity = [r for r in finished if r.rung in (None, 0)] if search.rungs else finished
    reason = None
    target = (search.stop_at or {}).get("val_accuracy")
    reached = [r for r in finished if r.state == "complete" and r.val_accuracy is not None
               and target is not None and r.val_accuracy >= target]
    if reached:
        reason = (f"stop_at: trial {reached[0].trial} reached val_accuracy {reached[0].val_accuracy:.4f} "
                  f"(>= {target})")
    elif search.stop_after_no_improvement:
        best, since = None, 0
        for r in same_fidelity:
            if r.state == "complete" and r.val_accuracy is not None and (best is None or r.val_accuracy > best):
                best, since = r.val_accuracy, 0
            else:
                since += 1
        if best is not None and since >= search.stop_after_no_improvement:
            reason = (f"stop_after_no_improvement: the last {since} finished trials brought no better "
                      f"val_accuracy than {best:.4f}")
    if reason:
        job.ended_by = reason
    return reason


class _Heartbeat(threading.Thread):
    """Touches a running trial's record every few seconds; a stale one means a lost process."""

    def __init__(self, job: StudyJob, record: TrialRecord, lock: threading.Lock):
        super().__init__(daemon=True, name=f"heartbeat-{record.trial}")
        self.job, self.record, self.lock, self.stopped = job, record, lock, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(trials.HEARTBEAT_SECONDS):
            with self.lock:
                if self.job.paths.lost_marker(self.record.trial).exists():
                    return  # declared lost while paused: the record is no longer ours
                self.record.heartbeat_at = time.time()
                try:
                    trials.write_record(self.job.paths, self.record)
                except OSError:  # a full disk: the trial's own end-of-trial write reports it, once
                    pass
            if self.job.heartbeat_hook:
                self.job.heartbeat_hook(self.record.trial)

    def stop(self) -> None:
        self.stopped.set()
        if self.ident is not None:  # a signal may come before it was started
            self.join()


def merged_history(trained: list[dict], observed: list[dict]) -> list[dict]:
    """The trainer's own per-epoch history (it may hold more, e.g. the training loss) with
    the epoch number and the wall seconds per epoch that the sweep observed (tables and
    forecasts need them; a stand-in trainer may report neither)."""
    seen = {h["epoch"]: h for h in observed}
    return [{**seen.get(h.get("epoch", i), {}), **h, "epoch": h.get("epoch", i)} for i, h in enumerate(trained, 1)]


def run_trial(job: StudyJob, number: int, values: dict, should_stop: Callable[[int, int, float], bool] | None = None,
              overrides: dict | None = None, attempt: int = 1, rung: int | None = None,
              promoted_from: int | None = None) -> TrialRecord:
    """Train the configuration ``values`` selects, recording it from start to end.

    ``should_stop(epoch, epochs, val_accuracy)`` is the engine's pruning hook (it hears
    every epoch; a trial that trained all its epochs is complete). ``overrides`` replace
    config values the engine controls itself (Hyperband's epochs). A trial that cannot
    finish before the deadline raises ``NotStarted`` before anything is recorded (or is
    shortened, when the space searches epochs); one that is running when the deadline
    nears stops at an epoch's end. SIGINT/SIGTERM (``Interrupted``) record the trial as
    interrupted and propagate.

    ``rung`` (a space with ``search.rungs``): the run trains at that rung's fidelity, never
    shortened (a shorter run would be another fidelity); ``promoted_from`` is the trial
    whose score at the rung below earned it.
    """
    from cnnbench.engines import cache, promotion

    space, paths = job.space, job.paths
    config = {**space.complete(values), **(overrides or {}), **promotion.overrides(space, rung)}
    final_config = {**space.complete(values), **(overrides or {})}  # what its final training would train
    version = cache.trainer_version() if job.data_fingerprint else None
    if served := _served_from_cache(job, number, values, config, final_config, version, rung, promoted_from,
                                    attempt):
        return served  # before admission: a training already done costs nothing
    note = promotion.describe(space, rung) + (f", promoted from trial {promoted_from}" if promoted_from is not None
                                              else "") if rung is not None else ""
    if job.deadline.end is not None and job.data_sizes:
        precision = runtime.resolve_precision(config["precision"])
        config, late = job.deadline.admit(config, *job.data_sizes, precision,
                                          [] if rung is not None else space.epoch_options(), final_config)
        note = "; ".join(filter(None, (note, late)))
    record = trials.started(number, job.engine, values, config, note, attempt, seed=space.seed + number)
    record.rung, record.promoted_from = rung, promoted_from
    record.data_fingerprint, record.trainer_version = job.data_fingerprint, version
    lock = threading.Lock()
    last_epoch_end = [time.perf_counter()]

    def on_epoch(epoch: int, logs: dict) -> None:
        now = time.perf_counter()
        seconds, last_epoch_end[0] = now - last_epoch_end[0], now
        with lock:
            record.history.append({**{k: v for k, v in logs.items() if k != "epoch"}, "epoch": epoch,
                                   "seconds": round(seconds, 2)})
            record.epochs_run = epoch
            record.val_accuracy = max(record.val_accuracy or 0.0, logs["val_accuracy"])
        job.progress.epoch_done(number, epoch, config["epochs"], logs)
        if should_stop and should_stop(epoch, config["epochs"], logs["val_accuracy"]) and epoch < config["epochs"]:
            raise PruneTrial(f"pruned after epoch {epoch} of {config['epochs']}")
        if epoch < config["epochs"] and job.deadline.epoch_would_overrun(seconds):
            raise PruneTrial(f"stopped after epoch {epoch} of {config['epochs']}: the deadline is near")

    heartbeat = _Heartbeat(job, record, lock)
    stop: KeyboardInterrupt | None = None
    try:  # from the first write on: a signal right after it still ends the record as interrupted
        trials.write_record(paths, record)
        job.progress.trial_started(number, values)
        heartbeat.start()
        log_dir = paths.root / "tensorboard" / f"trial-{number:04d}" if job.tensorboard else None
        state, reason, result = job.runner.run(config, space.seed + number, paths.trial_model(number), on_epoch,
                                               log_dir)
    except ChildDied as died:
        state, reason, result = "failed", str(died), None
    except KeyboardInterrupt as signalled:  # Interrupted (SIGINT, SIGTERM) or a plain Ctrl-C
        stop = signalled
        state, reason, result = "interrupted", f"interrupted by {signal_name(signalled)}", None
    finally:
        heartbeat.stop()
    _end(record, state, reason, result)
    if paths.lost_marker(number).exists():  # paused past the heartbeat limit: another took it over
        job.progress.say(f"trial {number} was declared lost while this process was paused and is tried "
                         "again elsewhere; this run's result is dropped")
        if stop is not None:
            raise stop
        raise TrialTaken(number)
    trials.write_record(paths, record)
    log_throughput(job, record)
    if record.state == "complete":  # the deadline keeps time for the best one's final training
        job.deadline.note_complete(final_config, record.val_accuracy, rung)
    job.progress.trial_done(record)
    if stop is not None:
        raise stop
    return record


def _end(record: TrialRecord, state: str, reason: str, result: dict | None) -> None:
    """How the training ended, into its record: the trainer's figures and history."""
    record.state, record.reason = state, reason
    if result:
        history = result.pop("history", None)
        for key, value in result.items():
            if hasattr(record, key) and value is not None:
                setattr(record, key, value)
        record.history = merged_history(history, record.history) if history else record.history
    record.finished_at = time.time()


def _served_from_cache(job: StudyJob, number: int, values: dict, config: dict, final_config: dict,
                       version: str | None, rung: int | None, promoted_from: int | None,
                       attempt: int) -> TrialRecord | None:
    """Trial ``number`` copied from a finished training of the same thing (engines/cache.py),
    or None when there is none (or the cache is off)."""
    from cnnbench.engines import cache

    if not (job.cache and job.data_fingerprint):
        return None
    found = cache.find(job.paths.root.parent, config, job.space.seed + number, job.data_fingerprint, version)
    if found is None:
        return None
    record = cache.serve(job.paths, number, job.engine, values, found)
    record.rung, record.promoted_from, record.attempt = rung, promoted_from, attempt
    trials.write_record(job.paths, record)
    job.progress.say(f"trial {number}: the same training was done in {found[0]}; served from it")
    job.deadline.note_complete(final_config, record.val_accuracy, rung)
    job.progress.trial_done(record)
    return record


def log_throughput(job: StudyJob, record: TrialRecord) -> None:
    """Keep the training speed a finished training reached here, for later forecasts."""
    if record.images_per_s and record.precision and record.flops and job.deadline.log is not None:
        job.deadline.log.add(record.precision, record.images_per_s * record.flops * TRAIN_COST, record.flops)


def signal_name(stop: KeyboardInterrupt) -> str:
    import signal

    return signal.Signals(getattr(stop, "signum", signal.SIGINT)).name


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
    return codes
