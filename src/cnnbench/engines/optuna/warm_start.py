"""Warm start: a new Optuna study begins with what earlier studies learned.

``cnnbench sweep --warm-start OTHER`` (repeatable) reads the completed trials of the study
OTHER in the same results folder (from its records, at its highest fidelity) and, before
anything is sampled, adds them to the new study with ``study.add_trials``, so TPE models
them from its first suggestion. The added trials are marked ``warm_start_from`` and count
neither toward the budget nor on the leaderboard (they were not trained here).

Refused in one line: a study that does not exist or has no completed trial, and one whose
space searches other parameters (a trial TPE could not place). Trials with a value outside
this space's ranges are left out, and the sweep says how many.
"""
from __future__ import annotations

from pathlib import Path

from cnnbench import trials
from cnnbench.provenance import RunInfo
from cnnbench.space import Space, SpaceError
from cnnbench.trials import TrialRecord

ATTRIBUTE = "warm_start_from"  # "<study>/<trial>" on each added Optuna trial


def gather(results: Path, studies: list[str], space: Space) -> tuple[list[tuple[str, TrialRecord]], str]:
    """The (study, record) pairs to add and a note of what was left out; SpaceError when a
    study cannot warm this space."""
    if space.minimize:
        raise SpaceError("--warm-start: a multi-objective study (minimize) takes no warm start yet: earlier "
                         "records hold no value for every objective")
    searched = set(space.searched())
    chosen, skipped = [], 0
    for name in studies:
        root = results / name
        if not (root / "run.json").is_file():
            raise SpaceError(f"--warm-start {name}: no study {name!r} in {results}")
        theirs = set(RunInfo.read(root / "run.json").searched())
        if theirs != searched:
            raise SpaceError(f"--warm-start {name}: its space searches {', '.join(sorted(theirs)) or 'nothing'}, this "
                             f"one {', '.join(sorted(searched))}; a warm start needs the same searched parameters")
        done = trials.top_fidelity([r for r in trials.read_records(trials.StudyPaths(root)) if not r.cached_from])
        if not done:
            raise SpaceError(f"--warm-start {name}: no completed trial in {root}")
        for record in done:
            fits = all(space.params[k].admits(v) is None for k, v in record.values.items() if k in space.params)
            if fits:
                chosen.append((name, record))
            else:
                skipped += 1
    note = f"{skipped} trial(s) of the warm-start studies left out: a value outside this space's ranges" if skipped else ""
    return chosen, note


def add(study, space: Space, chosen: list[tuple[str, TrialRecord]]) -> int:
    """Add ``chosen`` to the (empty) Optuna ``study``; returns how many were added."""
    import optuna

    from cnnbench.engines.optuna.study import distributions

    every = distributions(space)
    added = []
    for name, record in chosen:
        params = {k: v for k, v in record.values.items() if k in every}
        try:  # checked against this space's distributions (a value off its step grid is refused)
            added.append(optuna.trial.create_trial(
                params=params, distributions={k: every[k] for k in params}, value=record.val_accuracy,
                user_attrs={ATTRIBUTE: f"{name}/{record.trial}"}))
        except ValueError:
            continue
    study.add_trials(added)  # all at once: a new study gets all of them or none
    return len(added)
