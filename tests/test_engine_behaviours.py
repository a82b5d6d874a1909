"""One contract for both engines' search behaviours, with the stand-in trainer in this
process: known-good configurations first and once, failed trials as rows that do not stop
the search, a limit of consecutive failures that ends it (not a traceback), and a grid that
enumerates a finite space. What only one engine has (Optuna's samplers and pruners,
KerasTuner's Hyperband and its own API) stays in test_optuna_engine.py and
test_kerastuner_engine.py."""
from __future__ import annotations

import pytest

import stand_in
from cnnbench.space import parse_space

# (engine, algorithm): each engine's random search, and KerasTuner's other two oracles for
# start_with, which each oracle hands out through cnnbench's own mixin
ENGINES = [("optuna", "random"), ("kerastuner", "random")]


def _space(optimizers=("adam", "adamw"), trials=6, failures=5, **top):
    params = {"optimizer": {"type": "choice", "choices": list(optimizers)},
              "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
              "epochs": {"type": "fixed", "value": 4}}  # Hyperband needs room for brackets
    if "sgd" in optimizers:
        params["momentum"] = {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}}
    return parse_space({"seed": 2, "budget": {"trials": trials},
                        "search": {"sampler": "random", "pruner": "none", "max_consecutive_failures": failures},
                        "params": params, **top})


@pytest.mark.parametrize("engine, algo", ENGINES + [("optuna", "tpe"), ("kerastuner", "bayesian"),
                                                   ("kerastuner", "hyperband")])
def test_start_with_runs_known_good_configurations_first_and_once(tmp_path, engine, algo):
    known = [{"optimizer": "adamw", "learning_rate": 0.01}, {"optimizer": "adam", "learning_rate": 0.003}]
    space = _space(start_with=known)
    first = stand_in.run(space, tmp_path, trials=3, engine=engine, algo=algo)
    assert [r.values for r in first[:2]] == known
    again = stand_in.run(space, tmp_path, trials=5, engine=engine, algo=algo)  # resumed: not handed out again
    assert len(again) == 5 and sum(r.values in known for r in again) == 2
    assert [r.values for r in again[:3]] == [r.values for r in first]


@pytest.mark.parametrize("engine, algo", ENGINES)
def test_failed_trials_are_rows_with_their_reason_and_the_search_goes_on(tmp_path, engine, algo):
    records = stand_in.run(_space(("adam", "sgd"), trials=8, failures=20), tmp_path, engine=engine, algo=algo)
    failed = [r for r in records if r.state == "failed"]
    assert len(records) == 8 and failed and any(r.state == "complete" for r in records)
    assert all(r.reason == "ValueError: sgd broken on purpose" and r.values["optimizer"] == "sgd" for r in failed)
    # a conditional parameter is in a trial's values exactly when its condition holds
    assert all(("momentum" in r.values) == (r.values["optimizer"] == "sgd") for r in records)


@pytest.mark.parametrize("engine, algo", ENGINES)
def test_consecutive_failures_end_the_search_without_a_traceback(tmp_path, engine, algo):
    """Before, KerasTuner's own limit raised RuntimeError out of the sweep (a traceback);
    Optuna's engine stopped and said why. Now both stop and say why."""
    said: list[str] = []
    job = stand_in.make_job(_space(("sgd",), failures=2), tmp_path, trials=6, engine=engine, algo=algo)
    job.progress.say = said.append
    stand_in.engines.get(engine).run(job)
    assert [r.state for r in stand_in.read_records(job.paths)] == ["failed", "failed"]
    assert any("the last 2 trials failed; the space is probably broken" in line for line in said)
    if engine == "kerastuner":  # KerasTuner raised before saving the last one: it stayed RUNNING there
        import json

        states = [json.loads(p.read_text())["status"] for p in (job.paths.root / "kerastuner").glob("trial_*/trial.json")]
        assert sorted(states) == ["FAILED", "FAILED"]


@pytest.mark.parametrize("engine, algo", [("optuna", "grid"), ("kerastuner", "grid")])
def test_a_grid_enumerates_a_finite_space_and_stops_there(tmp_path, engine, algo):
    space = _space(trials=10)
    space = parse_space({**space.model_dump(mode="json", exclude_defaults=True),
                         "params": {**space.model_dump(mode="json")["params"],
                                    "learning_rate": {"type": "choice", "choices": [1e-3, 1e-2]}}})
    records = stand_in.run(space, tmp_path, engine=engine, algo=algo)
    assert sorted((r.values["optimizer"], r.values["learning_rate"]) for r in records) == \
        [("adam", 1e-3), ("adam", 1e-2), ("adamw", 1e-3), ("adamw", 1e-2)]


@pytest.mark.parametrize("engine, algo", ENGINES)
def test_after_its_workers_the_starting_process_counts_their_trials_and_their_best(tmp_path, engine, algo,
                                                                                   monkeypatch):
    """With --workers the search runs in worker processes; the starting process then goes on
    (the search's last refusals, the final training) with a progress line that said
    "1 of 100 | best val_accuracy -" in a measured hour. Here the workers' trials are a study
    run before, and starting the workers does nothing."""
    from cnnbench import engines
    from cnnbench.reports.report import SweepProgress

    space = _space(trials=3)
    by_workers = stand_in.run(space, tmp_path, trials=3, engine=engine, algo=algo)
    module = engines.get(engine)
    if engine == "optuna":
        monkeypatch.setattr(module, "run_workers", lambda job, study: None)
    else:
        monkeypatch.setattr(module, "_run_distributed", lambda job: False)
    progress = SweepProgress("s", total=3, live=False)
    job = stand_in.make_job(space, tmp_path, trials=3, engine=engine, algo=algo, workers=2, progress=progress)
    module.run(job)
    assert progress.done == 3
    assert progress.best == max(r.val_accuracy for r in by_workers) and progress.best is not None
