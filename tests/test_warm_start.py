"""Warm start: earlier studies' finished trials go into a new Optuna study before sampling
(stand-in trainer, real journal, in-process)."""
from __future__ import annotations

import json

import optuna
import pytest

import stand_in
from cnnbench.engines.optuna import warm_start
from cnnbench.space import SpaceError, parse_space
from cnnbench.trials import read_records

PARAMS = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
          "epochs": {"type": "fixed", "value": 2}}


def _space(sampler="tpe", trials=3, params=PARAMS):
    return parse_space({"seed": 5, "budget": {"trials": trials}, "search": {"sampler": sampler, "pruner": "none"},
                        "params": params})


def _earlier(tmp_path, name="a", trials=8):
    space = _space("random", trials)
    stand_in.run(space, tmp_path, study=name, trials=trials)
    (tmp_path / name / "run.json").write_text(json.dumps({"space": space.model_dump(mode="json")}))


def _optuna(tmp_path, name):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def test_a_warm_start_adds_the_earlier_trials_and_changes_what_tpe_tries_first(tmp_path):
    _earlier(tmp_path)
    space = _space()
    chosen, note = warm_start.gather(tmp_path, ["a"], space)
    assert len(chosen) == 8 and note == ""
    warm = stand_in.run(space, tmp_path, study="warm", warm_start=chosen)
    cold = stand_in.run(space, tmp_path, study="cold")
    assert len(warm) == 3 and [r.trial for r in warm] == [8, 9, 10]  # the added trials are not trained here
    added = [t for t in _optuna(tmp_path, "warm").trials if warm_start.ATTRIBUTE in t.user_attrs]
    assert sorted(t.user_attrs[warm_start.ATTRIBUTE] for t in added) == sorted(f"a/{i}" for i in range(8))
    assert warm[0].values != cold[0].values  # TPE models the earlier trials from its first suggestion


def test_a_study_that_cannot_warm_this_space_is_one_line(tmp_path):
    _earlier(tmp_path)
    other = _space(params={**PARAMS, "batch_size": {"type": "choice", "choices": [32, 64]}})
    with pytest.raises(SpaceError, match="^--warm-start a: its space searches learning_rate, this one batch_size"):
        warm_start.gather(tmp_path, ["a"], other)
    with pytest.raises(SpaceError, match="^--warm-start nope: no study 'nope'"):
        warm_start.gather(tmp_path, ["nope"], _space())
    narrow = _space(params={**PARAMS, "learning_rate": {"type": "float", "low": 1e-2, "high": 1e-1, "log": True}})
    chosen, note = warm_start.gather(tmp_path, ["a"], narrow)
    kept = sum(r.values["learning_rate"] >= 1e-2 for r in read_records(stand_in.StudyPaths(tmp_path / "a")))
    assert len(chosen) == kept < 8 and f"{8 - kept} trial(s) of the warm-start studies left out" in note
