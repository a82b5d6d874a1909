"""KerasTuner specifics: translation of the space, its own API on our folder, Hyperband's
epoch budget, failures through its failed-trial error, distributed chief + workers, and the
same network and accuracy through either engine."""
from __future__ import annotations

import json

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from cnnbench.engines import kerastuner as kerastuner_engine
from cnnbench.space import SpaceError, load_space, parse_space
from conftest import SPACES, run_cli
from stand_in import run


def test_conditions_become_conditional_scopes():
    space = load_space(SPACES / "smoke.yaml")
    hp = kerastuner_engine.hyperparameters(space)
    names = {h.name for h in hp.space}
    assert names == set(space.searched())
    hp.values["optimizer"] = "adam"
    assert not hp.is_active("momentum") and hp.is_active("learning_rate")
    hp.values["optimizer"] = "sgd"
    assert hp.is_active("momentum")
    lr = next(h for h in hp.space if h.name == "learning_rate")
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-3, 1e-2, "log")


def _space(trials=6, optimizers=("adam", "adamw"), epochs=4, failures=5):
    params = {"optimizer": {"type": "choice", "choices": list(optimizers)},
              "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
              "epochs": {"type": "fixed", "value": epochs}}
    return parse_space({"seed": 2, "budget": {"trials": trials},
                        "search": {"max_consecutive_failures": failures}, "params": params})


def _run(space, tmp_path, algo, trials):
    return tmp_path / "s", run(space, tmp_path, "s", trials, engine="kerastuner", algo=algo)


@pytest.mark.parametrize("algo", ["random", "bayesian", "hyperband"])
def test_algorithms_respect_the_trial_budget(monkeypatch, tmp_path, algo):
    paths, recs = _run(_space(), tmp_path, algo, 6)
    assert len(recs) == 6 and all(r.state == "complete" for r in recs)
    if algo == "hyperband":  # its budget is in epochs, up to the space's epochs
        assert {r.config["epochs"] for r in recs} <= {1, 2, 4} and min(r.epochs_run for r in recs) < 4


def test_resume_and_keras_tuners_own_api(monkeypatch, tmp_path, capsys):
    space = _space()
    paths, first = _run(space, tmp_path, "random", 3)
    _, again = _run(space, tmp_path, "random", 5)
    assert len(first) == 3 and len(again) == 5
    assert [r.values for r in again[:3]] == [r.values for r in first]
    # A user reloading the folder with plain KerasTuner sees the same trials.
    tuner = kt.RandomSearch(hypermodel=lambda hp: None, objective=kt.Objective("val_accuracy", "max"),
                            max_trials=5, directory=str(paths), project_name="kerastuner", overwrite=False)
    tuner.results_summary(num_trials=5)
    out = capsys.readouterr().out
    best = max(r.val_accuracy for r in again)
    assert "Results summary" in out and f"Score: {best}" in out
    assert len(tuner.oracle.trials) == 5


def test_grid_needs_a_finite_space():
    with pytest.raises(SpaceError, match="a grid search needs a finite space"):
        kerastuner_engine.validate(_space(), "grid", None)
    with pytest.raises(SpaceError, match="not a KerasTuner algorithm"):
        kerastuner_engine.validate(_space(), "tpe", None)
    with pytest.raises(SpaceError, match="--storage: is for the Optuna engine"):
        kerastuner_engine.validate(_space(), None, "sqlite:///x.db")
    assert kerastuner_engine.validate(_space(), None, None) == "random"  # what run.json records


@pytest.mark.slow
def test_distributed_chief_and_two_workers(tmp_path, jpeg_root):
    results = tmp_path / "results"
    proc = run_cli("sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "dist", "--results", str(results),
                   "--engine", "kerastuner", "--algo", "random", "--trials", "4", "--workers", "2",
                   env={"CNNBENCH_CIFAR10": str(jpeg_root)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = pd.read_csv(results / "dist" / "leaderboard.csv")
    assert sorted(board["trial"]) == [0, 1, 2, 3]  # none lost, none duplicated
    tuners = {json.loads(p.read_text()).get("trial_id") for p in (results / "dist" / "kerastuner").glob("trial_*/trial.json")}
    assert len(tuners) == 4
    logs = proc.stdout
    assert (results / "dist" / "best" / "model.keras").exists()
    # both workers ran trials: each worker prints its own progress lines with its tuner id
    assert "worker tuner0" in logs and "worker tuner1" in logs


@pytest.mark.slow
def test_same_configuration_same_network_and_accuracy_through_both_engines(tmp_path, jpeg_root):
    """seed.yaml's idea, shrunk: everything fixed, so both engines train trial 0 identically."""
    space_file = tmp_path / "fixed.yaml"
    space_file.write_text((SPACES / "smoke.yaml").read_text()
                          .replace("{type: int, low: 1, high: 2}", "{type: fixed, value: 2}")
                          .replace("{type: choice, choices: [8, 16]}", "{type: fixed, value: 16}")
                          .replace("{type: choice, choices: [true, false]}", "{type: fixed, value: true}")
                          .replace("{type: choice, choices: [adam, sgd]}", "{type: fixed, value: adam}")
                          .replace("{type: float, low: 1.0e-3, high: 1.0e-2, log: true}", "{type: fixed, value: 3.0e-3}")
                          .replace("  momentum:", "  # momentum:"))
    cards = {}
    for engine in ("optuna", "kerastuner"):
        proc = run_cli("sweep", "--space", str(space_file), "--study", engine, "--results", str(tmp_path / "r"),
                       "--engine", engine, "--trials", "1", "--no-final",  # the trial itself is compared
                       env={"CNNBENCH_CIFAR10": str(jpeg_root)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        cards[engine] = json.loads((tmp_path / "r" / engine / "best" / "model_card.json").read_text())
    a, b = cards["optuna"], cards["kerastuner"]
    assert a["config"] == b["config"] and a["parameter_count"] == b["parameter_count"] and a["flops_per_image"] == b["flops_per_image"]
    import keras
    layers = [[(layer.name, layer.__class__.__name__) for layer in keras.models.load_model(tmp_path / "r" / e / "best" / "model.keras").layers]
              for e in ("optuna", "kerastuner")]
    assert layers[0] == layers[1]
    assert a["validation"]["accuracy"] == pytest.approx(b["validation"]["accuracy"], abs=0.03)
    assert np.isfinite(a["test"]["accuracy"])


def test_the_kerastuner_internals_cnnbench_relies_on_are_pinned_and_present(tmp_path):
    """An upgrade of KerasTuner that renames one of them fails here, not silently in a sweep."""
    from cnnbench.engines.kerastuner.oracle import PINNED, CnnbenchOracle, adopt

    assert kt.__version__ == PINNED
    from stand_in import make_job

    grid = parse_space({"seed": 2, "params": {"optimizer": {"type": "choice", "choices": ["adam", "adamw"]},
                                              "epochs": {"type": "fixed", "value": 2}}})
    for algo in kerastuner_engine.ALGORITHMS:
        job = make_job(grid if algo == "grid" else _space(), tmp_path, algo, engine="kerastuner", algo=algo)
        oracle = adopt(kerastuner_engine.make_tuner(job).oracle, [])
        assert isinstance(oracle, CnnbenchOracle) and type(oracle).__name__ == f"Cnnbench{type(oracle).__mro__[2].__name__}"
    with pytest.raises(RuntimeError, match=f"lacks .*as in KerasTuner {PINNED}"):
        adopt(object(), [])


def test_kerastuners_state_files_are_written_whole_and_a_torn_one_is_one_line(tmp_path, monkeypatch):
    from cnnbench.engines.kerastuner import oracle as kerastuner_oracle

    written = []
    real = kerastuner_oracle.atomic_write
    monkeypatch.setattr(kerastuner_oracle, "atomic_write", lambda path, data: (written.append(path.name), real(path, data)))
    space = _space()
    paths, first = _run(space, tmp_path, "random", 2)
    assert {"oracle.json", "trial.json", "tuner0.json"} <= set(written)
    oracle = paths / "kerastuner" / "oracle.json"
    oracle.write_text(oracle.read_text()[:40])  # torn by hand (or by an older cnnbench killed mid-write)
    with pytest.raises(SpaceError, match=r"oracle.json: KerasTuner's state is torn or unreadable .*new --study"):
        _run(space, tmp_path, "random", 3)
    oracle.write_text("")
    with pytest.raises(SpaceError, match="oracle.json: KerasTuner's state is torn"):
        _run(space, tmp_path, "random", 3)
