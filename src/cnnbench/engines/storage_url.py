"""Optuna database URLs: where they come from, how they are shown, whether they open.

A URL may carry a password. It is never written or printed as given: run.json, model
cards, leaderboards, logs and error messages show it masked. Because ``ps`` shows every
process's command line, the URL can also come from the ``CNNBENCH_STORAGE`` environment
variable or from a file (``--storage @path``) instead of the command line.
"""
from __future__ import annotations

import os
import re
import warnings
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


def open_rdb(url: str, heartbeat: bool = False):
    """An Optuna RDBStorage for ``url``; SpaceError (one line, password masked) when it
    cannot be opened. With ``heartbeat``, running trials record heartbeats so a lost
    machine's trial is failed (and retried) by whoever looks next."""
    import optuna

    from cnnbench.trials import HEARTBEAT_SECONDS, STALE_SECONDS

    kwargs = {"heartbeat_interval": int(HEARTBEAT_SECONDS), "grace_period": int(STALE_SECONDS)} if heartbeat else {}
    try:
        with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as e:  # driver missing, host unreachable, bad credentials, bad URL
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpaceError(f"--storage {masked(url)}: cannot open the database: {scrub(reason, url)}") from None


def scrub(text: str, url: str | None) -> str:
    """``text`` with ``url``'s password masked wherever it appears."""
    match = _PASSWORD.match(url or "")
    if match and match["password"]:
        text = text.replace(match["password"], "***")
    return masked(text) if "://" in text else text
