"""Optuna engine logic with a stand-in trainer: samplers, pruners, failures, budget, seeds.

The stand-in replaces only ``train_and_evaluate`` (so these tests run in seconds without
TensorFlow training); everything around it, run_trial and the storage included, is real.
"""
from __future__ import annotations

import time

import pytest

from cnnbench.engines import optuna as optuna_engine
from cnnbench.engines.optuna import study as optuna_study
from cnnbench.engines.optuna import pruning
from cnnbench.space import SpaceError, parse_space
from stand_in import make_job, run


def space(sampler="tpe", pruner="none", optimizers=("adam", "adamw"), lr=None, trials=8):
    params = {
        "optimizer": {"type": "choice", "choices": list(optimizers)},
        "learning_rate": lr or {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "epochs": {"type": "fixed", "value": 4},
    }
    if "sgd" in optimizers:
        params["momentum"] = {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}}
    return parse_space({"seed": 1, "budget": {"trials": trials}, "search": {"sampler": sampler, "pruner": pruner},
                        "params": params})


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_each_sampler_finishes_the_budget(tmp_path, sampler):
    recs = run(space(sampler), tmp_path)
    assert len(recs) == 8 and all(r.state == "complete" for r in recs)
    assert all(1e-4 <= r.values["learning_rate"] <= 1e-1 for r in recs)


def test_the_grid_sampler_needs_a_finite_space_and_a_sampler_name(tmp_path):
    # the grid's run is in test_engine_behaviours.py, for both engines
    with pytest.raises(SpaceError, match="a grid search needs a finite space"):
        optuna_engine.validate(space("grid"), None, None)
    with pytest.raises(SpaceError, match="'hyperband' is not an Optuna sampler"):
        optuna_engine.validate(space(), "hyperband", None)


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive_halving"])
def test_pruners_stop_weak_trials_early(tmp_path, pruner):
    recs = run(space("random", pruner=pruner, trials=16), tmp_path)
    pruned = [r for r in recs if r.state == "pruned"]
    assert pruned, [r.state for r in recs]
    assert all(r.epochs_run < 4 and r.val_accuracy is not None for r in pruned)


def test_resume_counts_finished_trials_toward_the_budget(tmp_path):
    sp = space("tpe")
    first = run(sp, tmp_path, trials=3)
    again = run(sp, tmp_path, trials=5)
    assert len(first) == 3 and len(again) == 5
    assert [r.values for r in again[:3]] == [r.values for r in first]
    assert len(run(sp, tmp_path, trials=5)) == 5  # budget met: nothing more runs


def test_same_seed_same_suggestions(tmp_path):
    a = run(space("tpe", trials=12), tmp_path, "a")
    b = run(space("tpe", trials=12), tmp_path, "b")
    assert [r.values for r in a] == [r.values for r in b]


def test_rdb_storage_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    recs = run(space("random"), tmp_path, trials=3, storage=url)
    assert (tmp_path / "study.db").exists() and not (tmp_path / "s" / "optuna.journal").exists()
    assert len(recs) == 3 and all(r.state == "complete" for r in recs)


def test_deadline_stops_a_trial_that_cannot_finish(tmp_path):
    from cnnbench.training import runtime
    from cnnbench.deadline import Deadline
    from cnnbench.throughput import ThroughputLog

    log = ThroughputLog(tmp_path / "throughput.json")
    from cnnbench.model import architecture_stats

    flops = architecture_stats(space("random").complete({})).flops
    log.add(runtime.resolve_precision("auto"), 1e9, flops)  # 1 GFLOP/s: a CIFAR-sized trial takes hours
    job = make_job(space("random", trials=3), tmp_path, "late", deadline=Deadline(time.time() + 600, log),
                   data_sizes=(45_000, 5_000, 10_000))
    said = []
    job.progress.say = said.append
    optuna_engine.run(job)
    assert not list(job.paths.trials.glob("trial-*.json"))  # nothing trained, nothing recorded
    # every configuration asked for is too big: a few are asked for, none trained, then it stops
    assert said[-1].startswith(f"stopped before trial {optuna_engine.NOT_STARTED_TRIES - 1}: not started: forecast")
    assert sum("asking for another configuration" in line for line in said) == optuna_engine.NOT_STARTED_TRIES - 1


def test_near_the_deadline_a_configuration_that_fits_is_still_tried(tmp_path):
    from cnnbench.deadline import Deadline, NotStarted
    from cnnbench.trials import read_records

    job = make_job(space("random", trials=4), tmp_path, "near", deadline=Deadline(time.time() + 600),
                   data_sizes=(45_000, 5_000, 10_000))
    refusals = iter([True, False, True, True, True, True, True, True])  # the first refused, the second fits

    def admit(config, *args):
        if next(refusals):
            raise NotStarted("not started: forecast too long")
        return config, ""

    job.deadline.admit = admit
    said = []
    job.progress.say = said.append
    optuna_engine.run(job)
    records = read_records(job.paths)
    assert [r.state for r in records] == ["complete"]  # the one that fitted trained; the rest were refused
    assert said[0].startswith("trial 0 not started") and said[-1].startswith("stopped before trial")



def test_pruners_hear_progress_in_tenths_of_each_trials_own_schedule():
    assert [list(pruning.progress_steps(e, 4)) for e in range(1, 5)] == [[1, 2], [3, 4, 5], [6, 7], [8, 9, 10]]
    assert [list(pruning.progress_steps(e, 20)) for e in (1, 2, 20)] == [[], [1], [10]]
    assert list(pruning.progress_steps(1, 1)) == list(range(1, 11))


def test_a_resumed_study_continues_the_search_instead_of_replaying_it(tmp_path):
    sp = space("random", trials=4)
    first = run(sp, tmp_path, trials=4)
    again = run(sp, tmp_path, trials=8)
    assert [r.values for r in again[:4]] == [r.values for r in first]
    keys = [tuple(sorted(r.values.items())) for r in again]
    assert len(again) == 8 and len(set(keys)) == 8  # trials 4-7 are new configurations


def test_process_seeds_differ_per_worker_and_per_resume_but_not_on_a_fresh_run():
    seeds = {optuna_study.process_seed(7, w, n) for w in range(3) for n in (0, 5)}
    assert optuna_study.process_seed(7, 0, 0) == 7 and len(seeds) == 6
