"""Writing files so that a reader, a crash or a full disk never leaves half of one.

Every record, card, cache entry and journal repair goes through ``atomic_write``: the data
goes to a temporary file named per process beside the target (so two processes never share
one), which then replaces the target in one rename. When the write fails (ENOSPC, a
read-only folder), the temporary file is removed and the error names the target.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def temporary_name(target: Path, keep_suffix: bool = False) -> Path:
    """A hidden name beside ``target``, unique to this process (two sweeps of one study may
    write the same file at once). ``keep_suffix``: ending in ``target``'s own suffix, for
    writers that choose the format by it (Keras' .keras, matplotlib's .png, numpy's .npz)."""
    if keep_suffix:
        return target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def atomic_write(target: Path, data: str | bytes, durable: bool = False) -> None:
    """Replace ``target`` with ``data`` in one step; OSError naming ``target`` on failure.
    ``durable``: flushed to the disk before the rename, so a machine that goes down keeps a
    whole file rather than a renamed empty one (checkpoints; a record is rewritten often
    enough that the page cache serves it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        if durable:
            with open(tmp, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())
                f.flush()
                os.fsync(f.fileno())
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(target)) from None
    except BaseException:  # a signal mid-write: no temporary left behind either
        tmp.unlink(missing_ok=True)
        raise


def atomic_copy(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of ``source`` in one step (a temporary with the target's
    suffix, renamed into place); on failure no half copy is left and the OSError names
    ``target``, the file that could not be written."""
    import shutil

    tmp = temporary_name(target, keep_suffix=True)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(target)) from None
    except BaseException:  # a signal mid-copy
        tmp.unlink(missing_ok=True)
        raise


def json_text(obj) -> str:
    """Indented JSON for the files people read (run.json, model cards)."""
    return json.dumps(obj, indent=2, default=str) + "\n"


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable (callers that must tell
    the two apart check the file themselves). Nested too deep to parse (RecursionError)
    counts as unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
