"""Lost trials: found, marked failed ("worker lost") and tried again.

A process killed with SIGKILL, by the out-of-memory killer or with its machine cannot
record its own end: its trial record stays ``running`` and stops being touched. Whoever
looks next (the next run of the study, a live worker before its next trial, or the parent
when a worker process exits) marks such a trial failed and queues its configuration again,
up to ``search.retries`` attempts. A trial is lost when its process is gone (same host) or
its heartbeat is stale (any host). On an RDB storage Optuna's own heartbeat does the same
for trials whose records live on other machines (``optuna_recovery``).

This module is engine-neutral (no Optuna): the KerasTuner engine uses it as well.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

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


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
