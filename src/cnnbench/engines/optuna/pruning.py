"""When a trial stops early: progress in tenths of each trial's own schedule, Optuna's
pruners for one objective, and cnnbench's median rule for several (Optuna's pruners are
single-objective)."""
from __future__ import annotations

import statistics

import optuna

from cnnbench import trials
from cnnbench.engines.base import StudyJob
from cnnbench.space import Space
from cnnbench.trials import State

# Trials report validation accuracy at tenths of their own schedule, not at epochs: a
# 20-epoch trial at epoch 5 is a quarter through its learning-rate decay, a 10-epoch one
# half, so pruners compare trials at the same share of their training.
PROGRESS_STEPS = 10


def progress_steps(epoch: int, epochs: int) -> range:
    """The tenths of the schedule first reached at the end of ``epoch`` (of ``epochs``)."""
    reached = lambda e: PROGRESS_STEPS * e // epochs  # noqa: E731
    return range(reached(epoch - 1) + 1, reached(epoch) + 1)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    kind, startup = space.search.pruner, space.search.prune_after_trials
    if kind == "median":  # from 30% of the schedule on, below the median of earlier trials there
        # Optuna prunes once a trial's step is not below n_warmup_steps: 3 = the third tenth
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=PROGRESS_STEPS, reduction_factor=3)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def median_rule(job: StudyJob, step: int, val_accuracy: float) -> bool:
    """Multi-objective pruning on validation accuracy: prune from 30% of the schedule on when
    below the median of earlier finished trials at the same tenth of their schedule (what
    Optuna's MedianPruner does for one objective), read from cnnbench's own records."""
    if job.space.search.pruner != "median" or step <= 2:
        return False
    at_step = []
    for record in trials.read_records(job.paths):
        if record.state not in (State.COMPLETE, State.PRUNED) or not record.history:
            continue
        epochs = record.config.get("epochs", len(record.history))
        # its accuracy at the first epoch that reached this tenth of its schedule
        value = next((h["val_accuracy"] for h in record.history if PROGRESS_STEPS * h["epoch"] // epochs >= step),
                     None)
        if value is not None:
            at_step.append(value)
    if len(at_step) < max(job.space.search.prune_after_trials, 1):
        return False
    return val_accuracy < statistics.median(at_step)
