"""The shipped multi-fidelity table (benchmarks/tables/fidelity-30, issue 15): complete, the
one search_spaces/fidelity.yaml describes, its agreement file the one its rows give, and the
strategy comparison replayed on it in seconds."""
from __future__ import annotations

import pandas as pd
import pytest

from cnnbench.benchmarking.compare import compare_table
from cnnbench.benchmarking.tabular import Table, fidelity_agreement
from cnnbench.space import load_space
from conftest import ROOT, SPACES

SHIPPED = ROOT / "benchmarks" / "tables" / "fidelity-30" / "table.csv"


@pytest.fixture(scope="module")
def table():
    return Table.load(SHIPPED)


def test_every_configuration_has_its_whole_curve_at_every_fidelity(table):
    assert sorted(table.levels) == [0, 1, 2] and table.space.size() >= 30
    for level, rung in enumerate(table.fidelities):
        epochs = int(rung.get("epochs", table.space.complete({})["epochs"]))
        assert len(table.levels[level]) == table.space.size()
        for curve in table.levels[level].values():
            assert list(curve["epoch"]) == list(range(1, epochs + 1)) and (curve["seconds"] > 0).all()
            assert 0.1 < curve["val_accuracy"].max() < 1.0
    # what fidelity.yaml says is what was trained; the provenance names the machine and code
    assert table.about["space_hash"] == load_space(str(SPACES / "fidelity.yaml")).fingerprint()
    assert table.about["machine"] and table.about["git_revision"] and table.about["versions"]


def test_the_default_hours_rungs_are_fidelities_the_table_measured(table):
    default = load_space(str(SPACES / "default.yaml"))
    measured = [dict(r) for r in table.fidelities]
    fidelities = [{k: v for k, v in r.items() if k != "validate"} for r in default.search.rungs]
    assert fidelities and all(f in measured for f in fidelities)
    # The default rungs validate their last epoch only (a run is scored there); the table
    # validated every epoch, and a rung's score is the same only while the last epoch is
    # every run's best, as it is in all of the table's runs.
    assert all(curve["val_accuracy"].iloc[-1] == curve["val_accuracy"].max()
               for curves in table.levels.values() for curve in curves.values())


def test_the_shipped_agreement_is_what_the_rows_give(table):
    shipped = pd.read_csv(SHIPPED.with_name("fidelities.csv"))
    pd.testing.assert_frame_equal(fidelity_agreement(table), shipped, check_dtype=False)
    assert shipped["spearman_with_largest"].iloc[-1] == pytest.approx(1.0)
    # a cheap fidelity costs less per configuration than the largest
    assert shipped["minutes_per_configuration"].is_monotonic_increasing


def test_compare_replays_successive_halving_against_plain_searches_in_seconds(tmp_path):
    out = compare_table(SHIPPED, seeds=3, trials=12, out=tmp_path, names=["random", "tpe", "tpe+sh"])
    stats = pd.read_csv(out["summary"])
    at = next(c for c in stats.columns if c.startswith("regret_at_") and c.endswith("_min_mean"))
    assert sorted(stats["strategy"]) == ["random", "tpe", "tpe+sh"] and stats[at].is_monotonic_increasing
    assert (stats[at] >= 0).all() and {"p_vs_random_holm", "final_regret_mean"} <= set(stats.columns)
    assert "spearman_with_largest" in out["markdown"].read_text()
