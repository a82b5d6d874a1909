"""Lost trials: found, marked failed ("worker lost") and tried again.

A process killed with SIGKILL, by the out-of-memory killer or with its machine cannot
record its own end: its trial record stays ``running`` and stops being touched. Whoever
looks next (the next run of the study, a live worker before its next trial, or the parent
when a worker process exits) marks such a trial failed and queues its configuration again,
up to ``search.retries`` attempts. A trial is lost when its process is gone (same host) or
its heartbeat is stale (any host). On an RDB storage Optuna's own heartbeat does the same
for trials whose records live on other machines.
"""
from __future__ import annotations

import os
import signal
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cnnbench import trials
from cnnbench.trials import TrialRecord

LOST = "worker lost"  # how a lost trial's record ends: "worker lost: <why>"


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # no /proc (not Linux): alive as far as we can tell
    return state in ("Z", "X")


def lost_because(record: TrialRecord, now: float | None = None) -> str | None:
    """Why a running record's trial is lost, or None while it may still be training."""
    if record.state != "running":
        return None
    now = time.time() if now is None else now
    if record.host == socket.gethostname() and record.pid and record.pid != os.getpid() and process_gone(record.pid):
        return f"its process {record.pid} on {record.host} is gone"
    silent = now - (record.heartbeat_at or record.started_at or 0)
    if silent > trials.STALE_SECONDS:
        return f"no heartbeat for {silent:.0f} s"
    return None


def claim(paths: trials.StudyPaths, record: TrialRecord) -> bool:
    """One process recovers a lost trial: the first to create its marker file."""
    marker = paths.lost_marker(record.trial)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def fail_lost(job, records: list[TrialRecord]) -> list[TrialRecord]:
    """Mark the study's lost trials failed (each by one process only) and say so; the
    records it marked. Retrying them is the engine's part."""
    marked = []
    for record in records:
        why = lost_because(record)
        if why is None or not claim(job.paths, record):
            continue
        record.state, record.reason, record.finished_at = "failed", f"{LOST}: {why}", time.time()
        trials.write_record(job.paths, record)
        job.progress.say(f"trial {record.trial} was lost ({why}); " + (
            f"its configuration is tried again (attempt {record.attempt + 1})" if record.attempt <= job.retries
            else f"not retried: {record.attempt} attempts made (search.retries {job.retries})"))
        marked.append(record)
    return marked


def recover_lost(job, study: optuna.Study) -> list[int]:
    """Mark lost trials failed and queue their configurations again. Returns their numbers."""
    if job.storage:
        with warnings.catch_warnings():  # marked experimental since Optuna 2.9; stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # Optuna's RDB heartbeat: trials lost on any machine
    running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    found = []
    for record in fail_lost(job, trials.read_records(job.paths)):
        if record.trial in running:
            study.tell(record.trial, state=TrialState.FAIL)
        if record.attempt <= job.retries:
            requeue(study, record.values, record.trial, record.attempt,
                    {"rung": record.rung, "promoted_from": record.promoted_from} if record.rung is not None else {})
        found.append(record.trial)
    rebuild_damaged(job, study)
    return found + recover_unrecorded(job, study)


def rebuild_damaged(job, study: optuna.Study) -> list[int]:
    """Trial records that cannot be read (torn by a full disk, cut by an editor) rebuilt from
    what Optuna's storage knows of a finished trial (its values, state, score and times),
    marked as rebuilt; a damaged record of a trial the storage has not finished is named,
    never silently left out. Returns the rebuilt trial numbers."""
    from cnnbench.engines import promotion

    damaged: list[str] = []
    trials.read_records(job.paths, damaged)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    rebuilt = []
    for entry in damaged:
        path = Path(entry.rsplit(": ", 1)[0])
        number = int(path.stem.split("-")[1])
        t = by_number.get(number)
        if t is None or t.state not in states:
            job.progress.say(f"{path}: damaged and not finished in the study's storage; left out of the "
                             "leaderboard (restore it, or delete it to run its configuration again)")
            continue
        rung = t.user_attrs.get("rung") if job.space.search.rungs else None
        state = "interrupted" if t.user_attrs.get("interrupted") else states[t.state]
        record = TrialRecord(trial=number, engine=job.engine, values=dict(t.params),
                             config={**job.space.complete(t.params), **promotion.overrides(job.space, rung)},
                             state=state, val_accuracy=t.value if t.state == TrialState.COMPLETE else None,
                             rung=rung, promoted_from=t.user_attrs.get("promoted_from"),
                             attempt=t.user_attrs.get("attempt", 1), seed=job.space.seed + number,
                             note="rebuilt from the Optuna storage: its record file was damaged (metrics other "
                                  "than val_accuracy are lost)",
                             started_at=t.datetime_start and t.datetime_start.timestamp(),
                             finished_at=t.datetime_complete and t.datetime_complete.timestamp())
        trials.write_record(job.paths, record)
        job.progress.say(f"{path}: damaged; rebuilt from the study's storage (trial {number}, {state})")
        rebuilt.append(number)
    return rebuilt


def requeue(study: optuna.Study, values: dict, lost: int, attempt: int, rung: dict) -> None:
    """Queue a lost trial's configuration again as attempt ``attempt + 1``, at the same rung
    (``rung``: its ``rung``/``promoted_from`` attributes, empty without rungs)."""
    study.enqueue_trial(values, user_attrs={"attempt": attempt + 1, "retry_of": lost, **rung})


OWNER = "owner"  # a trial's user attribute right after ``ask``: "host:pid" of the process that asked


def recover_unrecorded(job, study: optuna.Study, now: float | None = None) -> list[int]:
    """Optuna trials left RUNNING with no cnnbench record (their process died between
    ``ask`` and the record's first write): failed, and their configuration queued again, so
    the budget still holds. One is lost when its owner's process is gone (same host), or
    when it has no owner and started over ``STALE_SECONDS`` ago."""
    now = time.time() if now is None else now
    recorded = {r.trial for r in trials.read_records(job.paths)}
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in recorded:
            continue
        host, _, pid = str(t.user_attrs.get(OWNER, "")).rpartition(":")
        if host:  # this process runs one trial at a time and none now: its own RUNNING one is lost too
            lost = host == socket.gethostname() and (int(pid) == os.getpid() or process_gone(int(pid)))
        else:
            lost = t.datetime_start is not None and now - t.datetime_start.timestamp() > trials.STALE_SECONDS
        if not lost:
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


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
