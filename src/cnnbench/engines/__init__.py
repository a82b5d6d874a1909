"""Search engines: who decides which configuration to try next, and when to prune.

An engine is a module with the members of ``Engine`` below. The sweep calls ``validate``
before any data is loaded or anything is written (so a bad algorithm, storage or grid on a
continuous range is one clear error), then ``run`` with a ``StudyJob``. Engines never
record results: every trial goes through ``engines.trial.run_trial``, which writes
cnnbench's own trial records; an engine's storage is its resume state and nothing more.
Adding an engine is one module and one line in ``ENGINES``.
"""
from __future__ import annotations

import importlib
from typing import Protocol

from cnnbench.space import Space, SpaceError


class Engine(Protocol):
    NAME: str
    ALGORITHMS: tuple[str, ...]

    def validate(self, space: Space, algo: str | None, storage: str | None) -> str:
        """The algorithm that will actually run (defaults resolved); SpaceError if unusable."""

    def run(self, job) -> None:
        """Run trials for ``job`` (an ``engines.base.StudyJob``) until its budget, deadline
        or a signal ends them; with ``job.workers``, start worker processes and wait."""


ENGINES = {"optuna": "cnnbench.engines.optuna", "kerastuner": "cnnbench.engines.kerastuner"}


def get(name: str) -> Engine:
    """The engine module called ``name``; SpaceError naming the choices otherwise."""
    if name not in ENGINES:
        raise SpaceError(f"--engine: {name!r} is not one of {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name])


def importances(space: Space, records: list) -> dict[str, float] | None:
    """What mattered: Optuna's fANOVA importances of the searched parameters, whichever
    engine ran the study (None with too few trials). Data for the report page."""
    from cnnbench.engines.optuna.study import importances as fanova

    return fanova(space, records)
