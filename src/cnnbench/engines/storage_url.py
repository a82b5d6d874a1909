"""Optuna database URLs: where they come from and how they are shown (``optuna_study.open_rdb``
opens one).

A URL may carry a password. It is never written or printed as given: run.json, model
cards, leaderboards, logs and error messages show it masked. Because ``ps`` shows every
process's command line, the URL can also come from the ``CNNBENCH_STORAGE`` environment
variable or from a file (``--storage @path``) instead of the command line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cnnbench.space import SpaceError

STORAGE_ENV = "CNNBENCH_STORAGE"
_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][\w+.-]*://[^:/@]*):(?P<password>[^@]*)@")


def masked(url: str | None) -> str | None:
    """``url`` with its password replaced by ***."""
    if not url:
        return url
    return _PASSWORD.sub(lambda m: f"{m['head']}:***@", url)


def resolve(given: str | None) -> str | None:
    """The storage URL to use: ``--storage`` (``@path`` reads the URL from a file), else
    the CNNBENCH_STORAGE environment variable, else None (a journal file in the study)."""
    url = given or os.environ.get(STORAGE_ENV) or None
    if url and url.startswith("@"):
        path = Path(url[1:]).expanduser()
        try:
            url = path.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise SpaceError(f"--storage: cannot read a database URL from {path}") from None
    if url and url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3, the driver we ship
    return url


def scrub(text: str, url: str | None) -> str:
    """``text`` with ``url``'s password masked wherever it appears."""
    match = _PASSWORD.match(url or "")
    if match and match["password"]:
        text = text.replace(match["password"], "***")
    return (masked(text) or text) if "://" in text else text
