"""One trial, top to bottom, whichever engine chose it: the cache, the deadline's admission,
the record written at its start, the training (in the runner: a child process), a heartbeat
while it trains, and the record written at its end.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cnnbench import trials
from cnnbench.training import runtime
from cnnbench.forecast import TRAIN_COST
from cnnbench.engines.base import StudyJob, TrialTaken
from cnnbench.engines.recovery import LOST, losses_before, note_resume, retried_attempt, wants_retry
from cnnbench.training.isolation import ChildDied
from cnnbench.trials import Outcome, PruneTrial, TrialRecord, State


class _Heartbeat(threading.Thread):
    """Touches a running trial's record every few seconds; a stale one means a lost process."""

    def __init__(self, job: StudyJob, record: TrialRecord, lock: threading.Lock):
        super().__init__(daemon=True, name=f"heartbeat-{record.trial}")
        self.job, self.record, self.lock, self.stopped = job, record, lock, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(trials.HEARTBEAT_SECONDS):
            if not self.beat():
                return

    def beat(self) -> bool:
        """Touch the record once; False once the trial was declared lost (no more beats)."""
        marker = self.job.paths.lost_marker(self.record.trial)
        with self.lock:
            if marker.exists():
                return False  # declared lost while paused: the record is no longer ours
            self.record.heartbeat_at = time.time()
            try:
                trials.write_record(self.job.paths, self.record)
            except OSError:  # a full disk: the trial's own end-of-trial write reports it, once
                pass
            if marker.exists():
                # declared lost between the check and the write (this process paused there):
                # the write may have replaced the failed record; put the failure back
                lost = dataclasses.replace(self.record, history=list(self.record.history), state=State.FAILED,
                                           finished_at=time.time(),
                                           reason=f"{LOST}: declared lost while its process was paused")
                try:
                    trials.write_record(self.job.paths, lost)
                except OSError:
                    pass
                return False
        if self.job.heartbeat_hook:
            try:  # Optuna's RDB heartbeat: a lost connection is retried at the next beat
                self.job.heartbeat_hook(self.record.trial)
            except Exception:  # noqa: BLE001 (a thread's traceback would only interleave with the progress)
                pass
        return True

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

    Longer than most functions here on purpose: a trial's life in the order it happens
    (configuration, the earlier attempt's seed, the cache, admission, the record, training,
    lost-while-paused, the checkpoint, the record again), so that what is written when can
    be checked against a kill at any line.
    """
    from cnnbench.engines import cache

    space, paths = job.space, job.paths
    config = {**space.complete(values), **(overrides or {}), **space.rung_config(rung)}
    final_config = {**space.complete(values), **(overrides or {})}  # what its final training would train
    version = cache.trainer_version(job.trainer_name) if job.data_fingerprint else None
    # A retry trains with its first attempt's seed: the same training, so it can go on from
    # that attempt's checkpoint (and a deterministic one ends with the same figures).
    previous = retried_attempt(paths, values, rung, attempt)
    seed = previous.seed if previous is not None and previous.seed is not None else space.seed + number
    if served := _served_from_cache(job, number, values, config, final_config, version, rung, promoted_from,
                                    attempt, seed):
        return served  # before admission: a training already done costs nothing
    note = space.rung_name(rung) + (f", promoted from trial {promoted_from}" if promoted_from is not None
                                              else "") if rung is not None else ""
    checkpoint = paths.checkpoint(trials.checkpoint_key(config, seed, job.data_fingerprint, version))
    if job.deadline.end is not None and job.data_sizes:
        from cnnbench.training.checkpoint import epochs_done

        precision = runtime.resolve_precision(config["precision"])
        admitted, late = job.deadline.admit(config, *job.data_sizes, precision,
                                            [] if rung is not None else space.epoch_options(), final_config,
                                            epochs_done(checkpoint))  # a retry pays only for what is left
        note = "; ".join(filter(None, (note, late)))
        if admitted is not config:  # shortened: another training, with a checkpoint of its own
            config = admitted
            checkpoint = paths.checkpoint(trials.checkpoint_key(config, seed, job.data_fingerprint, version))
    record = trials.started(number, job.engine, values, config, note, attempt, seed=seed)
    record.rung, record.promoted_from = rung, promoted_from
    record.losses = losses_before(previous) if previous is not None else 0  # known before a loss of its own
    record.data_fingerprint, record.trainer_version = job.data_fingerprint, version
    stop, resumed_at = _train(job, record, config, should_stop, seed, checkpoint)
    if resumed_at is not None or previous is not None:
        note_resume(record, previous, resumed_at)
    if paths.lost_marker(number).exists():  # paused past the heartbeat limit: another took it over
        job.progress.say(f"trial {number} was declared lost while this process was paused and is tried "
                         "again elsewhere; this run's result is dropped")
        if stop is not None:
            raise stop
        raise TrialTaken(number)
    if not wants_retry(record, job.retries):
        checkpoint.unlink(missing_ok=True)  # the training is over: nothing will go on from it
    trials.write_record(paths, record)
    log_throughput(job, record)
    if record.state == State.COMPLETE:  # the deadline keeps time for the best one's final training
        job.deadline.note_complete(final_config, record.val_accuracy, rung)
    job.progress.trial_done(record)
    if stop is not None:
        raise stop
    return record


def _train(job: StudyJob, record: TrialRecord, config: dict, should_stop, seed: int,
           checkpoint: Path | None = None) -> tuple[KeyboardInterrupt | None, float | None]:
    """Train ``record``'s trial and put how it ended into the record (not yet written): the
    signal that stopped it, if one did, for the caller to raise once the record is safe, and
    when the checkpoint it went on from was written (None: it started at epoch 0)."""
    number, paths = record.trial, job.paths
    lock = threading.Lock()
    last_epoch_end = [time.perf_counter()]

    def on_epoch(epoch: int, logs: dict) -> None:
        now = time.perf_counter()
        seconds, last_epoch_end[0] = now - last_epoch_end[0], now
        with lock:
            record.history.append({**{k: v for k, v in logs.items() if k != "epoch"}, "epoch": epoch,
                                   "seconds": round(seconds, 2)})
            record.epochs_run = epoch
            if "val_accuracy" in logs:  # absent from a rung run's epochs before its last (validate: last_epoch)
                record.val_accuracy = max(record.val_accuracy or 0.0, logs["val_accuracy"])
        job.progress.epoch_done(number, epoch, config["epochs"], logs)
        if should_stop and "val_accuracy" in logs and should_stop(epoch, config["epochs"], logs["val_accuracy"]) \
                and epoch < config["epochs"]:
            raise PruneTrial(f"pruned after epoch {epoch} of {config['epochs']}")
        if epoch < config["epochs"] and job.deadline.epoch_would_overrun(seconds):
            raise PruneTrial(f"stopped after epoch {epoch} of {config['epochs']}: the deadline is near")

    heartbeat = _Heartbeat(job, record, lock)
    stop: KeyboardInterrupt | None = None
    try:  # from the first write on: a signal right after it still ends the record as interrupted
        trials.write_record(paths, record)
        job.progress.trial_started(number, record.values)
        heartbeat.start()
        log_dir = paths.root / "tensorboard" / f"trial-{number:04d}" if job.tensorboard else None
        outcome = job.runner.run(config, seed, paths.trial_model(number), on_epoch, log_dir, checkpoint=checkpoint)
    except ChildDied as died:  # out of memory, a segfault, kill -9 of the child: tried again, from its checkpoint
        outcome = Outcome(State.FAILED, f"{LOST}: {died}", None)
    except KeyboardInterrupt as signalled:  # Interrupted (SIGINT, SIGTERM) or a plain Ctrl-C
        stop = signalled
        outcome = Outcome(State.INTERRUPTED, f"interrupted by {signal_name(signalled)}", None)
    finally:
        heartbeat.stop()
    resumed_at = (outcome.metrics or {}).get("resumed_checkpoint_at")
    _end(record, outcome)
    return stop, resumed_at


def _end(record: TrialRecord, outcome: Outcome) -> None:
    """How the training ended, into its record: the trainer's figures and history."""
    record.state, record.reason = outcome.state, outcome.reason
    if outcome.metrics:
        trials.take_metrics(record, outcome.metrics, skip=("history",))  # merged with what the sweep saw, below
        history = outcome.metrics.get("history")
        record.history = merged_history(history, record.history) if history else record.history
    record.finished_at = time.time()


def _served_from_cache(job: StudyJob, number: int, values: dict, config: dict, final_config: dict,
                       version: str | None, rung: int | None, promoted_from: int | None,
                       attempt: int, seed: int) -> TrialRecord | None:
    """Trial ``number`` copied from a finished training of the same thing (engines/cache.py),
    or None when there is none (or the cache is off)."""
    from cnnbench.engines import cache

    if not (job.cache and job.data_fingerprint and version):
        return None
    found = cache.find(job.paths.root.parent, config, seed, job.data_fingerprint, version)
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
        job.deadline.log.add(record.precision, record.images_per_s * record.flops * TRAIN_COST, record.flops,
                             record.train_images or 0)


def signal_name(stop: KeyboardInterrupt) -> str:
    import signal

    return signal.Signals(getattr(stop, "signum", signal.SIGINT)).name
