"""Optuna's journal file, kept readable: torn writes cut or removed before they can lodge
inside the file (every sweep, under Optuna's own lock), and ``cnnbench repair``."""
from __future__ import annotations

import json
import re
from pathlib import Path

from cnnbench.files import atomic_write


def repair_journal(journal: Path, torn_tail_only: bool = False) -> str:
    """Make an Optuna journal file readable again, keeping every complete entry; says what
    it did ("" when nothing was wrong).

    A write cut short (a full disk, a kill mid-write) leaves a last line without its newline.
    Optuna skips it when reading, but its next write would go straight after it, leaving an
    unreadable line inside the file for good; so every sweep cuts such a tail before it
    opens the journal. ``cnnbench repair`` (``torn_tail_only=False``) also drops unreadable
    lines inside the file (left by an older torn write), which Optuna cannot read past.
    """
    if not journal.exists():
        return ""
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(journal))  # Optuna's own: no worker is mid-append meanwhile
    lock.acquire()
    try:
        return _repair_locked(journal, torn_tail_only)
    finally:
        lock.release()


def _repair_locked(journal: Path, torn_tail_only: bool) -> str:
    data = journal.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends cleanly
    kept, mended, created, cut = [], 0, 0, 0
    for i, line in enumerate(lines):
        if torn_tail_only or _is_json(line):
            kept.append(line)
            continue
        # A torn write (often followed by the next entry on the same line). Losing it is safe
        # unless it created a study or a trial: Optuna numbers trials by the order of their
        # creation entries, so one lost would renumber every later trial (and their cnnbench
        # records). A trial's creation is replaced by a bare one, which keeps the numbering;
        # anything else unknown, or a study's creation, cuts the file before it.
        torn = re.match(rb'\{"op_code":\s*(\d+)', line)
        if torn is None or int(torn[1]) == CREATE_STUDY:
            cut = len(lines) - i
            break
        if int(torn[1]) == CREATE_TRIAL:
            kept.append(_bare_creation(line, kept))
            created += 1
        else:
            mended += 1
        start = line.rfind(b'{"op_code"')
        if start > 0 and _is_json(line[start:]):
            kept.append(line[start:])  # the next entry, written straight after the torn one
    if not tail and not mended and not created and not cut:
        return ""
    atomic_write(journal, b"".join(line + b"\n" for line in kept))
    said = [f"cut a torn last entry ({len(tail)} bytes)"] if tail else []
    said += [f"removed {mended} torn entr{'y' if mended == 1 else 'ies'}"] if mended else []
    said += [f"replaced {created} torn trial creation(s) by bare ones (the trials keep their numbers; "
             "their first attributes are lost)"] if created else []
    said += [f"cut {cut} entr{'y' if cut == 1 else 'ies'} from the first unreadable one on"] if cut else []
    return "; ".join(said) + f"; kept {len(kept)} complete entries"


CREATE_STUDY, CREATE_TRIAL = 0, 4  # Optuna's JournalOperation numbers


def _bare_creation(torn: bytes, kept: list[bytes]) -> bytes:
    """A CREATE_TRIAL entry standing in for a torn one: the same study (read from the torn
    bytes, else the last creation kept), no start time, nothing else; the entries after it
    still set its parameters and its end."""
    found = re.search(rb'"study_id":\s*(\d+)', torn)
    if found is None:
        earlier = (json.loads(line) for line in reversed(kept))
        study = next((e["study_id"] for e in earlier if e.get("op_code") == CREATE_TRIAL), 0)
    else:
        study = int(found[1])
    return json.dumps({"op_code": CREATE_TRIAL, "worker_id": "cnnbench-repair", "study_id": study,
                       "datetime_start": None}).encode()


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except (ValueError, RecursionError):
        return False


def named_backend(path: Path):
    """Optuna's journal file backend, whose write failures name the file: Optuna's own raise
    a bare ``[Errno 28] No space left on device``, and the user is told which file."""
    from optuna.storages.journal import JournalFileBackend

    class NamedJournalFileBackend(JournalFileBackend):
        def append_logs(self, logs):
            try:
                super().append_logs(logs)
            except OSError as error:
                if error.filename is None:
                    raise OSError(error.errno, error.strerror, str(path)) from error
                raise

    return NamedJournalFileBackend(str(path))
