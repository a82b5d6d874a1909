"""Writing files so that a reader, a crash or a full disk never leaves half of one.

Every record, card, cache entry and journal repair goes through ``atomic_write``: the data
goes to a temporary file named per process beside the target (so two processes never share
one), which then replaces the target in one rename. When the write fails (ENOSPC, a
read-only folder), the temporary file is removed and the error names the target.
"""
from __future__ import annotations

import os
from pathlib import Path


def temporary_name(target: Path) -> Path:
    """A hidden name beside ``target``, unique to this process."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def atomic_write(target: Path, data: str | bytes) -> None:
    """Replace ``target`` with ``data`` in one step; OSError naming ``target`` on failure."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(target)) from None
