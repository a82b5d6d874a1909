"""Strategy comparisons replayed against the shipped table, in seconds; the table's format."""
from __future__ import annotations

import pandas as pd
import pytest

from cnnbench.benchmarking.compare import STRATEGIES, compare_table, replay
from cnnbench.space import SpaceError
from cnnbench.benchmarking.tabular import Table, require_finite
from conftest import ROOT

SHIPPED = ROOT / "benchmarks" / "tables" / "small-108" / "table.csv"


@pytest.fixture(scope="module")
def table():
    return Table.load(SHIPPED)


def test_the_shipped_table_has_every_configuration_and_its_curve(table):
    assert len(table.curves) == table.space.size() >= 100
    for curve in table.curves.values():
        epochs = table.space.complete({k: curve.iloc[0][f"param_{k}"] for k in table.space.searched()})["epochs"]
        assert list(curve["epoch"]) == list(range(1, epochs + 1)) and (curve["seconds"] > 0).all()
    assert 0.3 < table.best < 1.0


def test_a_replay_spends_the_tables_time_and_never_beats_the_optimum(table):
    trace = replay(table, next(s for s in STRATEGIES if s.name == "tpe+hyperband"), seed=0, trials=12)
    assert len(trace) == 12 and (trace["regret"].dropna() >= 0).all()
    assert trace["minutes"].is_monotonic_increasing
    pruned = trace[trace["state"] == "pruned"]
    assert len(pruned) > 0  # hyperband stops some early, and they cost less than a full run


def test_compare_writes_traces_summary_and_plot(tmp_path, table):
    out = compare_table(SHIPPED, seeds=3, trials=10, out=tmp_path, names=["random", "tpe", "kt-random"])
    traces = pd.read_csv(out["traces"])
    assert set(traces["strategy"]) == {"random", "tpe", "kt-random"} and set(traces["seed"]) == {0, 1, 2}
    summary = pd.read_csv(out["summary"])
    at = next(c for c in summary.columns if c.startswith("regret_at_") and c.endswith("_min_mean"))
    assert list(summary["rank"]) == [1, 2, 3] and summary[at].is_monotonic_increasing  # at equal simulated time
    assert {"p_vs_random", "p_vs_random_holm", "final_regret_mean"} <= set(summary.columns)
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    # the same seed replays the same trace: the figures can be recomputed
    again = replay(table, STRATEGIES[0], seed=1, trials=10)
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  traces[(traces["strategy"] == "random") & (traces["seed"] == 1)]
                                  .reset_index(drop=True)[again.columns], check_dtype=False)


def test_a_table_needs_a_finite_grid_without_pruning():
    from cnnbench.space import parse_space

    with pytest.raises(SpaceError, match="a table needs a finite space"):
        require_finite(parse_space({"search": {"sampler": "random", "pruner": "none"},
                                    "params": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}}}))
    with pytest.raises(SpaceError, match="set search.sampler: grid and search.pruner: none"):
        require_finite(parse_space({"params": {"dropout": {"type": "choice", "choices": [0.0, 0.5]}}}))


def test_tabulate_trains_every_configuration_once_and_resumes(tmp_path, jpeg_root, monkeypatch):
    """A 4-configuration space through `tabulate` with the stand-in trainer in real child
    processes: one table row per configuration and epoch, and a second run trains nothing."""
    import yaml

    from cnnbench.benchmarking.tabular import tabulate
    from cnnbench.trials import StudyPaths, read_records
    from conftest import SPACES

    doc = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    doc["search"] = {"sampler": "grid", "pruner": "none"}
    doc["budget"] = {"trials": 4}
    doc["params"] = {"learning_rate": {"type": "choice", "choices": [0.001, 0.003]},
                     "base_filters": {"type": "choice", "choices": [8, 16]},
                     "stages": {"type": "fixed", "value": 1}, "epochs": {"type": "fixed", "value": 2}}
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(doc))
    gate = stand_in_env(tmp_path, jpeg_root, monkeypatch)
    results, out = tmp_path / "results", tmp_path / "table"
    path = tabulate(str(space), "tiny", str(results), out=out)
    table = Table.load(path)
    assert len(table.curves) == 4
    for curve in table.curves.values():
        assert list(curve["epoch"]) == [1, 2] and (curve["seconds"] >= 0).all()
    trained = len(list(gate.glob("training-*")))
    tabulate(str(space), "tiny", str(results), out=out)  # resumes: everything is there already
    assert len(list(gate.glob("training-*"))) == trained
    assert len(read_records(StudyPaths(results / "tiny"))) == 4


def stand_in_env(tmp_path, jpeg_root, monkeypatch):
    """Real sweeps in this process, trials in real child processes, trained by the stand-in."""
    import os

    gate = tmp_path / "gate"
    gate.mkdir(exist_ok=True)
    (gate / "go").touch()  # the gated stand-in trains at once
    import importlib

    monkeypatch.setattr(importlib.import_module("cnnbench.sweep"), "DEFAULT_TRAINER", "stand_in:gated_train")
    monkeypatch.setenv("CNNBENCH_STAND_IN_DIR", str(gate))
    for name, value in __import__("stand_in").stand_in_model_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CNNBENCH_CIFAR10", str(jpeg_root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    return gate


@pytest.mark.slow
def test_compare_live_runs_each_strategy_and_seed_as_a_real_sweep(tmp_path, jpeg_root, monkeypatch):
    from cnnbench.benchmarking.live import compare_live
    from conftest import SPACES

    stand_in_env(tmp_path, jpeg_root, monkeypatch)
    out = compare_live(str(SPACES / "smoke.yaml"), seeds=2, minutes=3, out=tmp_path / "live",
                       names=["random", "kt-random"], results=tmp_path / "results")
    traces = pd.read_csv(out["traces"])
    assert {(s, seed) for s, seed in zip(traces["strategy"], traces["seed"])} == {
        (s, seed) for s in ("random", "kt-random") for seed in (0, 1)}
    assert (traces.groupby(["strategy", "seed"])["best"].last() > 0).all()
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir()) == [
        "kt-random-0", "kt-random-1", "random-0", "random-1"]
    assert "best_val_accuracy_mean" in out["markdown"].read_text()
    from cnnbench.deadline import DEADLINE_ENV

    assert DEADLINE_ENV not in __import__("os").environ  # no sweep's deadline outlives it in this process


def test_a_warm_start_from_a_related_study_changes_the_search_and_counts_no_trial(table):
    from cnnbench.benchmarking.compare import related_study, summary

    warm = next(s for s in STRATEGIES if s.name == "tpe+warm20")
    cold = next(s for s in STRATEGIES if s.name == "tpe")
    pairs = related_study(table, 20, seed=0)
    assert len(pairs) == 20 and len({json_key(r.values) for _, r in pairs}) == 20
    assert all(r.val_accuracy <= table.curves[json_key(r.values)]["val_accuracy"].max() for _, r in pairs)
    warmed = [replay(table, warm, seed, trials=10) for seed in range(3)]
    colds = [replay(table, cold, seed, trials=10) for seed in range(3)]
    assert all(len(t) == 10 for t in warmed)  # the added trials are not counted as trials run here
    assert any(list(w["best"]) != list(c["best"]) for w, c in zip(warmed, colds))  # TPE starts informed
    stats = summary(pd.concat(warmed + colds, ignore_index=True), table)
    assert {"regret_after_10_mean", "regret_after_30_mean"} <= set(stats.columns)


def json_key(values):
    from cnnbench.trials import config_key

    return config_key(values)
