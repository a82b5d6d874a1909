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
from cnnbench.trials import TrialRecord, State

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
    if record.state != State.RUNNING:
        return None
    now = time.time() if now is None else now
    if record.host == socket.gethostname() and record.pid and record.pid != os.getpid() and process_gone(record.pid):
        return f"its process {record.pid} on {record.host} is gone"
    silent = now - (record.heartbeat_at or record.started_at or 0)
    if silent > trials.STALE_SECONDS:
        return f"no heartbeat for {silent:.0f} s"
    return None


def fail_lost(job, records: list[TrialRecord]) -> list[TrialRecord]:
    """Mark the study's lost trials failed (each by one process only) and say so; the
    records it marked. Retrying them is the engine's part."""
    marked = []
    for record in records:
        why = lost_because(record)
        if why is None or not claim(job.paths, record):
            continue
        record.state, record.reason, record.finished_at = State.FAILED, f"{LOST}: {why}", time.time()
        trials.write_record(job.paths, record)
        if not wants_retry(record, job.retries):  # nothing will go on from its checkpoint
            key = trials.checkpoint_key(record.config, record.seed, record.data_fingerprint, record.trainer_version)
            job.paths.checkpoint(key).unlink(missing_ok=True)
        job.progress.say(f"trial {record.trial} was lost ({why}); " + (
            f"its configuration is tried again (attempt {record.attempt + 1})" if wants_retry(record, job.retries)
            else f"not retried: {losses_before(record)} of its attempts were lost (search.retries {job.retries})"))
        marked.append(record)
    return marked


def _lost(record: TrialRecord) -> bool:
    return record.state == State.FAILED and record.reason.startswith(LOST)


def losses_before(record: TrialRecord) -> int:
    """Lost attempts of a configuration up to and including ``record``'s, its retry's ``losses``."""
    earlier = record.losses if record.losses is not None else record.attempt - 1
    return earlier + _lost(record)


def wants_retry(record: TrialRecord, retries: int) -> bool:
    """Whether ``record``'s configuration is to run again (and go on from its checkpoint):
    an interrupted trial always (a stop is not the configuration's fault), a lost one (its
    process or trial child died) until ``retries`` of its attempts were lost: a Ctrl-C
    before a loss does not use up a retry."""
    if record.state == State.INTERRUPTED:
        return True
    return _lost(record) and losses_before(record) <= retries


def to_retry(job, records: list[TrialRecord]) -> list[TrialRecord]:
    """The records whose configuration is to run again and that nobody has handed out yet,
    each claimed by this process (a marker file: with workers, one of them hands it out)."""
    wanted = [r for r in records if wants_retry(r, job.retries) and not r.cached_from]
    return [r for r in wanted if claim(job.paths, r, job.paths.retry_marker(r.trial))]


def retried_attempt(paths: trials.StudyPaths, values: dict, rung: int | None, attempt: int) -> TrialRecord | None:
    """The attempt before ``attempt`` of this configuration (at this rung), if it was lost or
    interrupted: the one a retry goes on from."""
    if attempt <= 1:
        return None
    key = trials.config_key(values)
    earlier = [r for r in trials.read_records(paths) if r.attempt == attempt - 1 and r.rung == rung
               and trials.config_key(r.values) == key
               and (r.state == State.INTERRUPTED or r.reason.startswith(LOST))]
    return max(earlier, key=lambda r: r.started_at or 0.0, default=None)


def note_resume(record: TrialRecord, previous: TrialRecord | None, resumed_at: float | None) -> None:
    """Say in a retry's record what its earlier attempts cost: the epochs it went on from
    (``resumed_from_epoch``, from the trainer), the wall time they trained past their last
    checkpoint (``lost_seconds``; all of it when there was no checkpoint), and the earlier
    epochs' seconds in its history, so its learning curve is whole."""
    lost = (previous.lost_seconds or 0.0) if previous is not None else 0.0
    if previous is not None:
        # the last sign of life: a graceful stop's end, or a lost process's last heartbeat
        end = previous.finished_at if previous.state == State.INTERRUPTED else previous.heartbeat_at
        start = resumed_at if resumed_at is not None else previous.started_at
        lost += max(0.0, (end or 0.0) - (start or end or 0.0))
        seconds = {h["epoch"]: h.get("seconds") for h in previous.history if "epoch" in h}
        for h in record.history:
            if "seconds" not in h and seconds.get(h.get("epoch")) is not None:
                h["seconds"] = seconds[h["epoch"]]
    record.lost_seconds = round(lost, 1)
    if record.resumed_from_epoch:
        record.note = "; ".join(filter(None, (record.note, f"resumed from epoch {record.resumed_from_epoch[-1]}")))


def claim(paths: trials.StudyPaths, record: TrialRecord, marker: Path | None = None) -> bool:
    """One process acts on a trial: the first to create its marker file (by default the
    lost marker)."""
    marker = marker or paths.lost_marker(record.trial)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def damaged_records(job) -> list[tuple[Path, int]]:
    """(file, trial number) of every trial record that cannot be read, for the engine to
    rebuild from its own storage (``rebuild_damaged`` in each engine's recovery module)."""
    damaged: list[str] = []
    trials.read_records(job.paths, damaged)
    return [(path, int(path.stem.split("-")[1])) for path in (Path(e.rsplit(": ", 1)[0]) for e in damaged)]


def name_unrebuildable(job, path: Path, storage: str) -> None:
    """A damaged record whose trial ``storage`` has not finished: said, never dropped silently."""
    job.progress.say(f"{path}: damaged and not finished in {storage}; left out of the leaderboard (restore it, "
                     "or delete it to run its configuration again)")
