"""Lost trials under KerasTuner: found by the oracle's process and tried again as new trials.

KerasTuner's oracle has no heartbeat. A worker killed mid-trial (kill -9, out of memory, its
machine gone) leaves its trial "ongoing" for ever, and the chief never ends: it waits for
every worker it has seen. So the process that holds the oracle (the chief, or a single run)
looks at the trial records (``recovery.lost_because``) before it hands out each trial, and
the chief also every ``WATCH_SECONDS``: a lost trial is marked failed (``worker lost``) in
its record and in the oracle, its worker is forgotten, and its configuration is handed out
again as a *new* trial (a new record with ``attempt`` + 1), up to ``search.retries``.
KerasTuner's own retry (the same trial id again) is not used: it would overwrite the failed
attempt's record.

What is still to retry is derived from the records, not kept in memory, so a retry that one
run could not hand out (its last worker died) is handed out by the next run of the study.
"""
from __future__ import annotations

import threading
import time

import keras_tuner as kt

from cnnbench import trials
from cnnbench.engines import recovery
from cnnbench.engines.recovery import LOST
from cnnbench.trials import config_key, State

WATCH_SECONDS = 2.0  # how often the chief looks for lost trials between requests


def attempt_of(records: list, values: dict) -> int:
    """The attempt a trial of ``values`` is: one more than its lost and interrupted attempts
    so far. (KerasTuner runs an interrupted trial again under its own id when the study is
    reloaded; as attempt 2 it finds the interrupted record and goes on from its checkpoint.)"""
    key = config_key(values)
    return 1 + sum((r.state == State.INTERRUPTED or r.reason.startswith(LOST)) and config_key(r.values) == key
                   for r in records)


def uncounted(records: list) -> int:
    """Trials that are not results: KerasTuner counts every trial it handed out, so the
    budget grows by these."""
    return sum(r.state == State.INTERRUPTED or r.reason.startswith(LOST) for r in records)


class LostTrials:
    """Finds lost trials for one oracle and hands their configurations out again."""

    def __init__(self, job, oracle):
        self.job, self.oracle = job, oracle
        self.handed_out: set[tuple[str, int]] = set()  # (configuration, attempt) given to a worker
        self.pending: list[tuple[str, int, dict]] = []

    def release(self) -> None:
        """Mark lost trials failed, free their workers, and work out what to try again.
        Call with the oracle's lock held."""
        job, oracle = self.job, self.oracle
        records = trials.read_records(job.paths)
        before = (oracle.max_trials, len(oracle.end_order))
        recovery.fail_lost(job, records)  # marks the records in place
        for record in records:
            if record.reason.startswith(LOST):
                oracle.end_as_failed(record.trial, record.reason)
        taken = {(config_key(r.values), r.attempt) for r in records} | self.handed_out
        self.pending = [(config_key(r.values), r.attempt + 1, r.values) for r in records
                        if r.reason.startswith(LOST) and recovery.wants_retry(r, job.retries)
                        and (config_key(r.values), r.attempt + 1) not in taken]
        oracle.max_trials = job.trials + uncounted(records)
        if (oracle.max_trials, len(oracle.end_order)) != before:
            oracle.save()

    def next_retry(self) -> dict | None:
        if not self.pending:
            return None
        key, attempt, values = self.pending.pop(0)
        self.handed_out.add((key, attempt))
        return values


@kt.synchronized
def _release(oracle, lost: LostTrials) -> None:  # the oracle first: kt.synchronized locks on it
    lost.release()


def rebuild_damaged(job, oracle, trial_values) -> list[int]:
    """Trial records that cannot be read (torn by a full disk, cut by an editor) rebuilt from
    what KerasTuner's oracle knows of a finished trial (its values, status and score),
    marked as rebuilt; a damaged record of a trial the oracle has not finished is named,
    never silently left out. The Optuna engine's ``rebuild_damaged``, for this engine.
    ``trial_values``: the engine's reading of a KerasTuner trial's values (searched values,
    overrides). Returns the rebuilt trial numbers."""
    by_number = {int(t.trial_id): t for t in oracle.trials.values()}
    rebuilt = []
    for path, number in recovery.damaged_records(job):
        t = by_number.get(number)
        if t is None or t.status not in FINISHED:
            recovery.name_unrebuildable(job, path, "KerasTuner's state")
            continue
        values, overrides = trial_values(t.hyperparameters.values, job.space)
        state = FINISHED[t.status]
        record = trials.TrialRecord(
            trial=number, engine=job.engine, values=values, config={**job.space.complete(values), **overrides},
            state=state, val_accuracy=t.score if state == State.COMPLETE else None, seed=job.space.seed + number,
            reason="" if state == State.COMPLETE else "failed (rebuilt: the reason was in the damaged record)",
            note="rebuilt from KerasTuner's state: its record file was damaged (metrics other than "
                 "val_accuracy, and whether it was pruned, are lost)")
        trials.write_record(job.paths, record)
        job.progress.say(f"{path}: damaged; rebuilt from KerasTuner's state (trial {number}, {state})")
        rebuilt.append(number)
    return rebuilt


# KerasTuner's statuses of an ended trial (a pruned trial ends COMPLETED with its best score)
FINISHED = {"COMPLETED": State.COMPLETE, "FAILED": State.FAILED, "INVALID": State.FAILED}


def install(job, oracle, watch: bool) -> LostTrials:
    """Make ``oracle`` (a ``kerastuner_oracle.CnnbenchOracle``) release lost trials before
    each trial it hands out and hand their configurations out first; with ``watch``, also
    every WATCH_SECONDS in a background thread."""
    lost = LostTrials(job, oracle)
    _release(oracle, lost)
    oracle.cnnbench_lost = lost
    if watch:
        def watch_loop():
            while True:
                time.sleep(WATCH_SECONDS)
                try:
                    _release(oracle, lost)
                except Exception as error:  # noqa: BLE001  (the next look may succeed; the chief must not die)
                    job.progress.say(f"looking for lost trials failed: {error}")
        threading.Thread(target=watch_loop, name="cnnbench-lost-trials", daemon=True).start()
    return lost
