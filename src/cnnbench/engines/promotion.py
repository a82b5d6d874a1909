"""Successive halving over cheap fidelities: which configuration trains next, at which rung.

A space with ``search.rungs`` compares configurations cheaply before it spends on them:
every new configuration trains at ``rungs[0]`` (a stratified subset of the training
images and a schedule compressed to fewer epochs: a complete small training, not the
first epochs of a long one), and the best ``1/reduction_factor`` of each rung train
again, from scratch, at the next rung. The best configuration of the last rung gets the
final training on all images (final.py).

This is asynchronous successive halving (ASHA, Li et al. 2020): before the sampler is
asked for a new configuration, the highest rung with a promotable configuration (in the
top ``n // reduction_factor`` of the ``n`` finished at that rung, and not promoted yet)
is served first; so nothing waits for a rung to fill, and workers stay busy. Unlike plain
ASHA, a rung never sends on more than ``n // reduction_factor`` of its ``n`` runs in all:
promoting whoever is in the top third at each moment let 13 of 23 first-rung runs through
in a measured hour, each at 2.4 times a first-rung run's cost.

Why cnnbench's own promotion and not Optuna's SuccessiveHalvingPruner: that pruner decides
within one running trial at growing *steps* of one training, and its rungs are epochs of
that training; a data-size rung is a new training on more images, which one Optuna trial
cannot continue into. So each rung run is a trial of its own (the same searched values,
enqueued into the study with ``rung`` and ``promoted_from`` as user attributes), decided
from cnnbench's trial records, which every engine and worker shares. Optuna's sampler
still chooses every new configuration; it is told each run's score at its rung, so
promoted configurations weigh a little more in its model (they are the ones it already
rates best). KerasTuner's Hyperband keeps working on epochs; the KerasTuner engine refuses
``search.rungs`` in one line.
"""
from __future__ import annotations

from dataclasses import dataclass

from cnnbench import trials
from cnnbench.space import Space
from cnnbench.trials import TrialRecord, State


@dataclass(frozen=True)
class Promotion:
    source: TrialRecord  # the run whose score earned it
    rung: int            # the rung it trains at next

    @property
    def values(self) -> dict:
        return dict(self.source.values)


def _taken(records: list[TrialRecord], claimed: set[tuple[int, int]]) -> set[tuple[str, int]]:
    """(configuration, rung) pairs already run, running or handed out: an interrupted run
    does not count (it is run again)."""
    done = {(trials.config_key(r.values), r.rung) for r in records
            if r.rung is not None and r.state != State.INTERRUPTED}
    by_trial = {r.trial: r for r in records}
    for source, rung in claimed:  # promotions handed to the engine whose run has no record yet
        if source in by_trial:
            done.add((trials.config_key(by_trial[source].values), rung))
    return done


def next_promotion(space: Space, records: list[TrialRecord],
                   claimed: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset()) -> Promotion | None:
    """The run to do before sampling anything new, or None (sample a new configuration).

    ``claimed``: (source trial, rung) pairs already handed out (enqueued in the engine's
    storage but maybe not started), so a promotion is never given twice.
    """
    rungs, eta = space.search.rungs, space.search.reduction_factor
    taken = _taken(records, set(claimed))
    for rung in range(len(rungs) - 2, -1, -1):  # the highest rung first: finish what is furthest on
        at_rung = [r for r in records if r.rung == rung and r.state == State.COMPLETE and r.val_accuracy is not None]
        keys = {trials.config_key(r.values) for r in at_rung}
        promoted = sum(key in keys for key, at in taken if at == rung + 1)
        if promoted >= len(at_rung) // eta:
            # at most 1/eta of a rung goes on: plain ASHA promotes whoever is in the top third
            # *when asked*, and the union of those tops grew to 13 of 23 runs in a measured hour
            continue
        best = sorted(at_rung, key=lambda r: (-(r.val_accuracy or 0.0), r.trial))[:len(at_rung) // eta]
        for record in best:
            if (trials.config_key(record.values), rung + 1) not in taken:
                return Promotion(record, rung + 1)
    return None


def rung_counts(space: Space, records: list[TrialRecord]) -> list[int]:
    """Finished runs at each rung (the progress line and the plan's check)."""
    return [sum(r.rung == i and r.state in trials.FINISHED for r in records) for i in range(len(space.search.rungs))]
