"""Lost trials in an Optuna study: the records' view (``recovery``) told to the storage.

Each run (and a parent, when one of its workers exits) fails the lost trials in the study
and queues their configurations again; RUNNING trials that never got a record (a process
killed between ``ask`` and its first write) are found by their owner attribute, as are those
recorded as ended whose process died before telling the study (told from the record);
records torn by a full disk are rebuilt from what the storage knows.
"""
from __future__ import annotations

import os
import socket
import time
import warnings

import optuna
from optuna.trial import TrialState

from cnnbench import trials
from cnnbench.engines.recovery import damaged_records, fail_lost, name_unrebuildable, process_gone, to_retry
from cnnbench.trials import TrialRecord, State


def recover_lost(job, study: optuna.Study) -> list[int]:
    """Mark lost trials failed and queue their configurations again. Returns their numbers."""
    if job.storage:
        with warnings.catch_warnings():  # marked experimental since Optuna 2.9; stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # Optuna's RDB heartbeat: trials lost on any machine
    running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    found = []
    records = trials.read_records(job.paths)
    for record in fail_lost(job, records):  # marks them in ``records`` too
        if record.trial in running:
            study.tell(record.trial, state=TrialState.FAIL)
        found.append(record.trial)
    # lost ones, interrupted ones (an earlier run's Ctrl-C) and those whose trial process
    # died: queued again, each once; the new trial goes on from the old one's checkpoint
    for record in to_retry(job, records):
        requeue(study, record.values, record.trial, record.attempt,
                {"rung": record.rung, "promoted_from": record.promoted_from} if record.rung is not None else {})
        if record.state == State.INTERRUPTED:
            job.progress.say(f"trial {record.trial} was interrupted; its configuration runs again"
                             " (from its last epoch when it has a checkpoint)")
    rebuild_damaged(job, study)
    return found + recover_unrecorded(job, study)


def rebuild_damaged(job, study: optuna.Study) -> list[int]:
    """Trial records that cannot be read (torn by a full disk, cut by an editor) rebuilt from
    what Optuna's storage knows of a finished trial (its values, state, score and times),
    marked as rebuilt; a damaged record of a trial the storage has not finished is named,
    never silently left out. Returns the rebuilt trial numbers."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    states = {TrialState.COMPLETE: State.COMPLETE, TrialState.PRUNED: State.PRUNED, TrialState.FAIL: State.FAILED}
    rebuilt = []
    for path, number in damaged_records(job):
        t = by_number.get(number)
        if t is None or t.state not in states:
            name_unrebuildable(job, path, "the study's storage")
            continue
        rung = t.user_attrs.get("rung") if job.space.search.rungs else None
        state = State.INTERRUPTED if t.user_attrs.get("interrupted") else states[t.state]
        record = TrialRecord(trial=number, engine=job.engine, values=dict(t.params),
                             config={**job.space.complete(t.params), **job.space.rung_config(rung)},
                             state=state, val_accuracy=t.value if t.state == TrialState.COMPLETE else None,
                             rung=rung, promoted_from=t.user_attrs.get("promoted_from"),
                             attempt=t.user_attrs.get("attempt", 1), seed=job.space.seed + number,
                             note="rebuilt from the Optuna storage: its record file was damaged (metrics other "
                                  "than val_accuracy are lost)",
                             started_at=t.datetime_start.timestamp() if t.datetime_start else None,
                             finished_at=t.datetime_complete.timestamp() if t.datetime_complete else None)
        trials.write_record(job.paths, record)
        job.progress.say(f"{path}: damaged; rebuilt from the study's storage (trial {number}, {state})")
        rebuilt.append(number)
    return rebuilt


def requeue(study: optuna.Study, values: dict, lost: int, attempt: int, rung: dict) -> None:
    """Queue a lost trial's configuration again as attempt ``attempt + 1``, at the same rung
    (``rung``: its ``rung``/``promoted_from`` attributes, empty without rungs)."""
    study.enqueue_trial(values, user_attrs={"attempt": attempt + 1, "retry_of": lost, **rung})


def tell_outcome(job, study: optuna.Study, trial: optuna.Trial | int, record: TrialRecord) -> None:
    """Tell Optuna how ``trial`` (a trial or its number) ended, as its record says: its
    score (and the costs of a multi-objective space) when complete, else pruned or failed."""
    objectives = [record.val_accuracy, *(getattr(record, cost) for cost in job.space.minimize)]
    if record.state == State.COMPLETE and None not in objectives:
        study.tell(trial, objectives if job.space.minimize else record.val_accuracy)
    else:
        study.tell(trial, state=TrialState.PRUNED if record.state == State.PRUNED else TrialState.FAIL)


def _tell_recorded(job, study: optuna.Study, number: int, record: TrialRecord) -> None:
    """Tell Optuna how a trial ended, from its record: its process wrote the record and died
    before ``study.tell`` (a window as narrow as the one between ``ask`` and the first
    record), which left the trial RUNNING in the storage for ever."""
    tell_outcome(job, study, number, record)
    job.progress.say(f"trial {number} was recorded {record.state} but its process died before the study heard; "
                     "told the study from its record")


OWNER = "owner"  # a trial's user attribute right after ``ask``: "host:pid" of the process that asked


def recover_unrecorded(job, study: optuna.Study, now: float | None = None) -> list[int]:
    """Optuna trials left RUNNING with no cnnbench record (their process died between
    ``ask`` and the record's first write): failed, and their configuration queued again, so
    the budget still holds. One is lost when its owner's process is gone (same host), or
    when it has no owner and started over ``STALE_SECONDS`` ago."""
    now = time.time() if now is None else now
    recorded = {r.trial: r for r in trials.read_records(job.paths)}
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = recorded.get(t.number)
        if record is not None and record.state == State.RUNNING:
            continue  # a running record: fail_lost judges it by its heartbeat
        host, _, pid = str(t.user_attrs.get(OWNER, "")).rpartition(":")
        if host:  # this process runs one trial at a time and none now: its own RUNNING one is lost too
            lost = host == socket.gethostname() and (int(pid) == os.getpid() or process_gone(int(pid)))
        else:
            lost = t.datetime_start is not None and now - t.datetime_start.timestamp() > trials.STALE_SECONDS
        if not lost:
            continue
        if record is not None:  # recorded as ended, killed before the storage heard: the record decides
            if record.state == State.INTERRUPTED:  # as the engine marks one it tells itself
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            _tell_recorded(job, study, t.number, record)
            continue
        study._storage.set_trial_user_attr(t._trial_id, "lost_before_record", True)
        study.tell(t.number, state=TrialState.FAIL)
        attempt = t.user_attrs.get("attempt", 1)
        # an enqueued trial (start_with, a promotion, a retry) keeps its values even when its
        # process died before suggesting them
        values = {**t.system_attrs.get("fixed_params", {}), **t.params}
        if attempt <= job.retries:
            requeue(study, values, t.number, attempt,
                    {k: t.user_attrs[k] for k in ("rung", "promoted_from") if k in t.user_attrs})
        job.progress.say(f"trial {t.number} was lost before its record was written; " + (
            "its configuration is tried again" if attempt <= job.retries else f"not retried ({attempt} attempts)"))
        found.append(t.number)
    return found
