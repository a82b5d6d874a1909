"""The stop rules users ask for (search.stop_at, search.stop_after_no_improvement), through
both engines with the stand-in trainer: the search ends early and says why."""
from __future__ import annotations

import pytest

import stand_in
from cnnbench.space import parse_space


def space(search: dict, learning_rate: dict):
    return parse_space({"seed": 3, "budget": {"trials": 8}, "search": {"sampler": "random", "pruner": "none", **search},
                        "params": {"learning_rate": learning_rate, "epochs": {"type": "fixed", "value": 2},
                                   # fake_train ignores it: more distinct configurations, same scores
                                   "label_smoothing": {"type": "choice", "choices": [0.0, 0.1, 0.2]}}})


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_stop_at_ends_the_search_at_the_first_trial_that_reaches_it(tmp_path, engine):
    # fake_train: accuracy 1.0 at learning rate 1e-2, lower the further from it
    rates = {"type": "choice", "choices": [1e-2, 1e-4]}
    job = stand_in.make_job(space({"stop_at": {"val_accuracy": 0.99}}, rates), tmp_path, engine=engine)
    stand_in.engines.get(engine).run(job)
    records = stand_in.read_records(job.paths)
    reached = [r for r in records if r.val_accuracy and r.val_accuracy >= 0.99]
    assert len(reached) == 1 and records[-1].trial == reached[0].trial  # nothing trained after it
    assert len(records) < 8 and job.ended_by.startswith(f"stop_at: trial {reached[0].trial} reached")


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_no_improvement_rule_stops_after_that_many_trials_without_a_new_best(tmp_path, engine):
    rates = {"type": "choice", "choices": [1e-3, 1e-1]}  # both score 0.5: none improves on the first
    job = stand_in.make_job(space({"stop_after_no_improvement": 2}, rates), tmp_path, engine=engine)
    stand_in.engines.get(engine).run(job)
    records = stand_in.read_records(job.paths)
    assert len(records) == 3 and "the last 2 finished trials" in job.ended_by


def test_without_rules_the_budget_decides(tmp_path):
    job = stand_in.make_job(space({}, {"type": "fixed", "value": 1e-3}), tmp_path, trials=4)
    stand_in.engines.get("optuna").run(job)
    assert len(stand_in.read_records(job.paths)) == 4 and job.ended_by == ""
