"""Multi-fidelity tables: every configuration at every rung's fidelity, how far a cheap
ranking holds at the largest, and successive halving replayed over them against plain
searches at equal simulated time. A small table is made here with known scores, so each
figure can be checked by hand; the tabulate test trains one with the stand-in."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cnnbench.benchmarking.compare import STRATEGIES, choose, compare_table, holm, replay, summary
from cnnbench.benchmarking.tabular import ABOUT, TABLE, Table, TableTrainer, fidelity_agreement
from cnnbench.space import SpaceError, parse_space
from cnnbench.trials import config_key

RUNGS = [{"train_images": 1000, "epochs": 2, "batch_size": 64, "tta": "off"},
         {"train_images": 3000, "epochs": 3, "batch_size": 64, "tta": "off"},
         {"epochs": 4}]
LRS, SMOOTHING = [0.01, 0.02, 0.05, 0.1], [0.0, 0.1, 0.2]
SPACE = {"seed": 0, "budget": {"trials": 12}, "search": {"sampler": "grid", "pruner": "none", "rungs": RUNGS},
         "params": {"learning_rate": {"type": "choice", "choices": LRS},
                    "label_smoothing": {"type": "choice", "choices": SMOOTHING},
                    "epochs": {"type": "fixed", "value": 4}, "precision": {"type": "fixed", "value": "float32"}}}
SECONDS = [1.0, 3.0, 10.0]  # per epoch at each fidelity


def truth(i: int) -> float:
    """The largest fidelity's score of configuration i; the cheap ones see it with a twist."""
    return 0.5 + 0.03 * i


def score(level: int, i: int) -> float:
    swapped = {0: [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10], 1: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 10]}
    return truth(swapped[level][i]) - 0.2 + 0.1 * level if level in swapped else truth(i)


def configurations():
    return [{"label_smoothing": s, "learning_rate": lr} for lr in LRS for s in SMOOTHING]


@pytest.fixture
def table_path(tmp_path):
    rows = []
    for level, rung in enumerate(RUNGS):
        for i, values in enumerate(configurations()):
            for epoch in range(1, rung["epochs"] + 1):  # the best epoch is the last
                rows.append({"config": config_key(values), "fidelity": level,
                             **{f"param_{k}": v for k, v in values.items()}, "epoch": epoch,
                             "val_accuracy": score(level, i) - 0.01 * (rung["epochs"] - epoch), "val_loss": 1.0,
                             "seconds": SECONDS[level], "parameter_count": 1000, "flops": 10_000})
    pd.DataFrame(rows).to_csv(tmp_path / TABLE, index=False)
    (tmp_path / ABOUT).write_text(json.dumps({"space": SPACE, "fidelities": RUNGS}))
    return tmp_path / TABLE


def test_a_multi_fidelity_table_loads_by_fidelity_and_answers_at_the_right_one(table_path):
    table = Table.load(table_path)
    assert sorted(table.levels) == [0, 1, 2] and table.fidelities == RUNGS
    assert table.best == pytest.approx(truth(11))  # measured at the largest fidelity
    space = parse_space(SPACE)
    cheap = {**space.complete(configurations()[3]), **RUNGS[0]}
    assert table.fidelity_of(cheap) == 0 and table.fidelity_of(space.complete(configurations()[3])) == 2
    # Hyperband's shortened bracket at the largest fidelity: the first epochs of its curve
    assert table.fidelity_of({**space.complete(configurations()[3]), "epochs": 2}) == 2
    seen = []
    result = TableTrainer(table)(cheap, None, lambda epoch, logs: seen.append(logs["val_accuracy"]))
    assert result.epochs_run == 2 and result.val_accuracy == pytest.approx(score(0, 3))
    assert result.train_seconds == pytest.approx(2 * SECONDS[0])
    with pytest.raises(SpaceError, match="none of the table's fidelities"):
        table.fidelity_of({**space.complete(configurations()[3]), "epochs": 5})  # longer than any


def test_each_fidelity_is_scored_by_its_rank_agreement_with_the_largest(table_path):
    agreement = fidelity_agreement(Table.load(table_path)).set_index("fidelity")
    largest = [truth(i) for i in range(12)]
    for level in (0, 1):
        expected = spearmanr([score(level, i) for i in range(12)], largest)[0]
        assert agreement.loc[level, "spearman_with_largest"] == pytest.approx(expected)
    assert agreement.loc[2, "spearman_with_largest"] == pytest.approx(1.0)
    # fidelity 0 swaps neighbours: of the true top 3 (11, 10, 9) its own top 3 (10, 11, 8) holds two
    assert agreement.loc[0, "top3_overlap"] == pytest.approx(2 / 3) and agreement.loc[2, "top3_overlap"] == 1.0
    assert agreement.loc[1, "top3_overlap"] == 1.0
    assert agreement.loc[0, "minutes_per_configuration"] == pytest.approx(2 * SECONDS[0] / 60)
    assert agreement.loc[0, "setting"] == "rung 0 (1,000 images, 2 epochs)"


def test_successive_halving_replays_over_the_fidelities_and_scores_only_the_largest(table_path):
    table = Table.load(table_path)
    sh = next(s for s in STRATEGIES if s.name == "tpe+sh")
    trace = replay(table, sh, seed=0, trials=20)
    assert trace["minutes"].is_monotonic_increasing and (trace["regret"].dropna() >= 0).all()
    assert trace["minutes"].iloc[0] == pytest.approx(2 * SECONDS[0] / 60)  # the first run is a cheap one
    assert trace["best"].isna().iloc[0]  # a cheap score is never counted as a result
    assert trace["best"].notna().any()  # promotions reached the largest fidelity
    plain = replay(table, next(s for s in STRATEGIES if s.name == "tpe"), seed=0, trials=3)
    assert list(plain["minutes"]) == pytest.approx([4 * SECONDS[2] / 60 * n for n in (1, 2, 3)])
    first_last = replay(table, next(s for s in STRATEGIES if s.name == "tpe+sh-first-last"), seed=0, trials=12)
    step = first_last["minutes"].diff().fillna(first_last["minutes"].iloc[0]).round(6)
    assert set(step) <= {round(2 * SECONDS[0] / 60, 6), round(4 * SECONDS[2] / 60, 6)}  # never fidelity 1


def test_compare_on_a_multi_fidelity_table_ranks_at_equal_time_with_holms_correction(tmp_path, table_path):
    out = compare_table(table_path, seeds=3, trials=12, out=tmp_path / "cmp",
                        names=["random", "tpe", "tpe+sh", "tpe+sh-last2"])
    stats = pd.read_csv(out["summary"])
    at = next(c for c in stats.columns if c.startswith("regret_at_") and c.endswith("_min_mean"))
    assert list(stats["rank"]) == [1, 2, 3, 4] and stats[at].is_monotonic_increasing
    raw = stats.set_index("strategy")["p_vs_random"].dropna()
    assert (stats.set_index("strategy")["p_vs_random_holm"].dropna() >= raw - 1e-12).all()
    text = out["markdown"].read_text()
    assert "Holm-corrected" in text and "spearman_with_largest" in text and "rung 0 (1,000 images" in text


def test_holms_correction_steps_down_and_never_decreases():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.5, "b": 0.6}) == pytest.approx({"a": 1.0, "b": 1.0})


def test_successive_halving_strategies_need_a_multi_fidelity_table():
    with pytest.raises(SpaceError, match="tpe\\+sh.*need a multi-fidelity table"):
        choose(["tpe", "tpe+sh"], multi_fidelity=False)
    assert not [s for s in choose(None, multi_fidelity=False) if s.rungs]
    assert {"tpe+sh", "random+sh"} <= {s.name for s in choose(None)}


def test_the_summary_counts_a_seed_without_a_result_yet_as_the_worst_configuration(table_path):
    table = Table.load(table_path)
    traces = pd.DataFrame([
        {"strategy": "random", "seed": 0, "trial": 1, "minutes": 1.0, "best": 0.8, "regret": 0.03, "state": "complete"},
        {"strategy": "late", "seed": 0, "trial": 1, "minutes": 0.5, "best": np.nan, "regret": np.nan,
         "state": "complete"},
        {"strategy": "late", "seed": 0, "trial": 2, "minutes": 2.0, "best": 0.83, "regret": 0.0, "state": "complete"}])
    stats = summary(traces, table, horizon=1.0).set_index("strategy")
    worst = truth(11) - truth(0)
    assert stats.loc["late", "regret_at_1_min_mean"] == pytest.approx(worst)
    assert stats.loc["random", "regret_at_1_min_mean"] == pytest.approx(0.03)


def test_tabulate_trains_every_configuration_at_every_fidelity(tmp_path, jpeg_root, monkeypatch):
    """Through `tabulate` with the stand-in trainer in real child processes: one grid study
    per rung, a table whose rows carry their fidelity, and the agreement file beside it."""
    import yaml

    from cnnbench.benchmarking.tabular import tabulate
    from cnnbench.trials import StudyPaths, read_records
    from conftest import SPACES
    from test_compare import stand_in_env

    doc = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    doc["search"] = {"sampler": "grid", "pruner": "none",
                     "rungs": [{"train_images": 200, "epochs": 1}, {"train_images": 400, "epochs": 2}]}
    doc["budget"] = {"trials": 2}
    doc["params"] = {"learning_rate": {"type": "choice", "choices": [0.001, 0.003]},
                     "stages": {"type": "fixed", "value": 1}, "epochs": {"type": "fixed", "value": 2}}
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(doc))
    gate = stand_in_env(tmp_path, jpeg_root, monkeypatch)
    results = tmp_path / "results"
    table = Table.load(tabulate(str(space), "tiny", str(results)))
    assert sorted(table.levels) == [0, 1] and all(len(curves) == 2 for curves in table.levels.values())
    assert [len(c) for c in table.levels[0].values()] == [1, 1] and [len(c) for c in table.curves.values()] == [2, 2]
    for level, images in ((0, 200), (1, 400)):
        records = read_records(StudyPaths(results / f"tiny-f{level}"))
        assert len(records) == 2 and {r.config["train_images"] for r in records} == {images}
        assert {r.rung for r in records} == {None}  # one fidelity each: no promotion inside
    assert (results / "tiny" / "fidelities.csv").exists()
    assert not (results / "tiny-f0" / "best").exists()  # a table level exports no model
    trained = len(list(gate.glob("training-*")))
    tabulate(str(space), "tiny", str(results))  # resumes: everything is there already
    assert len(list(gate.glob("training-*"))) == trained


def test_a_table_of_rungs_validated_at_their_last_epoch_replays_their_score_there(table_path):
    # tabulate over rungs with validate: last_epoch writes no score for the earlier epochs
    rows = pd.read_csv(table_path)
    rows.loc[(rows["fidelity"] == 0) & (rows["epoch"] == 1), ["val_accuracy", "val_loss"]] = None
    rows.to_csv(table_path, index=False)
    table = Table.load(table_path)
    cheap = {**parse_space(SPACE).complete(configurations()[3]), **RUNGS[0]}
    seen = []
    result = TableTrainer(table)(cheap, None, lambda epoch, logs: seen.append(sorted(logs)))
    assert seen == [["loss"], ["loss", "val_accuracy", "val_loss"]]
    assert result.val_accuracy == pytest.approx(score(0, 3)) and result.best_epoch == 2
