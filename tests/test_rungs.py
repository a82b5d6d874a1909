"""Successive halving over cheap fidelities (search.rungs): the space rules, the promotion
rule, the Optuna engine's runs and records, the leaderboard, the final training and the plan,
all with a stand-in trainer (no TensorFlow) and stated throughputs (no clock)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import stand_in
from cnnbench.training.data import synthetic_bundle
from cnnbench.deadline import Deadline
from cnnbench.forecast import trial_seconds
from cnnbench.throughput import ThroughputLog
from cnnbench.plan import plan
from cnnbench.engines import promotion
from cnnbench.final import run_final
from cnnbench.trials import best_trial
from cnnbench.reports.results import leaderboard_frame
from cnnbench.space import SpaceError, parse_space
from cnnbench.trials import TrialResult
from cnnbench.trials import TrialRecord, config_key, top_fidelity

RUNGS = [{"train_images": 100, "epochs": 1}, {"train_images": 200, "epochs": 2}]


def _space(**search):
    return parse_space({"seed": 3, "budget": {"trials": 12},
                        "search": {"sampler": "random", "pruner": "none", "rungs": RUNGS, **search},
                        "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                                   "epochs": {"type": "fixed", "value": 5},
                                   "precision": {"type": "fixed", "value": "float32"}}})


def data_aware_train(config, data, on_epoch, seed):
    """Accuracy rises with closeness of the learning rate to 1e-2 and with the images seen."""
    quality = 1.0 / (1.0 + abs(np.log10(config["learning_rate"]) + 2))
    images = config["train_images"] or 1000
    acc = quality * (1 - 1 / (1 + images / 100))
    for epoch in range(1, config["epochs"] + 1):
        on_epoch(epoch, {"val_accuracy": acc, "loss": 1.0})
    return TrialResult(val_accuracy=acc, val_loss=1 - acc, best_epoch=config["epochs"], epochs_run=config["epochs"],
                       train_seconds=0.1, images_per_s=1000.0, parameter_count=10, flops=20,
                       train_images=images, history=[], model=None)


@pytest.mark.parametrize("rungs, problem", [
    ([{"learning_rate": 0.1}], "a rung sets only train_images, epochs, batch_size, tta, validate"),
    ([{"train_images": 200}, {"train_images": 100}], "each rung needs more images or more epochs"),
    ([{"train_images": 100, "epochs": 2}, {"train_images": 100, "epochs": 2}], "trains no more than rungs[0]"),
    ([{"train_images": 100, "epochs": 4}, {"train_images": 300, "epochs": 1}], "never fewer images x epochs"),
    ([{"train_images": 100, "epochs": 4}, {"train_images": 100, "epochs": 3}], "trains no more than rungs[0]"),
    ([{"train_images": -5}], "search.rungs[0].train_images"),
    ([{}], "search.rungs[0]: empty"),
])
def test_a_bad_rung_is_one_line_naming_it(rungs, problem):
    with pytest.raises(SpaceError, match=r"^x\.yaml: search\.rungs") as e:
        parse_space({"search": {"rungs": rungs}, "params": {"epochs": {"type": "fixed", "value": 4}}}, "x.yaml")
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_a_rung_may_train_more_images_for_fewer_epochs_when_it_sees_more_in_all():
    # the fidelity table's largest rung: all the data for 2 epochs after 15,000 images for 3
    rungs = [{"train_images": 5000, "epochs": 2}, {"train_images": 15000, "epochs": 3}, {"epochs": 2}]
    space = parse_space({"search": {"rungs": rungs}, "params": {"epochs": {"type": "fixed", "value": 2}}}, "x.yaml")
    assert [r.get("epochs") for r in space.search.rungs] == [2, 3, 2]
    # two rungs on all the data: more epochs is more (the images x epochs rule must not see inf <= inf)
    space = parse_space({"search": {"rungs": [{"epochs": 2}, {"epochs": 4}]}, "params": {}}, "x.yaml")
    assert [r["epochs"] for r in space.search.rungs] == [2, 4]


def test_a_rung_may_not_fix_a_searched_parameter_and_kerastuner_refuses_rungs():
    with pytest.raises(SpaceError, match="epochs is searched in params"):
        parse_space({"search": {"rungs": [{"epochs": 2}]},
                     "params": {"epochs": {"type": "int", "low": 2, "high": 8}}})
    from cnnbench.engines import kerastuner as kerastuner_engine

    with pytest.raises(SpaceError, match="Optuna engine; KerasTuner's Hyperband"):
        kerastuner_engine.validate(_space(), None, None)


def _record(trial, lr, rung, acc, state="complete"):
    return TrialRecord(trial=trial, engine="optuna", values={"learning_rate": lr}, state=state, val_accuracy=acc,
                       rung=rung, train_images=RUNGS[rung]["train_images"])


def test_the_best_third_of_a_rung_is_promoted_once_the_rung_has_enough_runs():
    space = _space()
    two = [_record(0, 0.01, 0, 0.5), _record(1, 0.1, 0, 0.4)]
    assert promotion.next_promotion(space, two) is None  # 2 // 3 = 0: nobody earned it yet
    three = two + [_record(2, 0.02, 0, 0.6)]
    promoted = promotion.next_promotion(space, three)
    assert promoted.source.trial == 2 and promoted.rung == 1 and promoted.values == {"learning_rate": 0.02}
    assert promotion.next_promotion(space, three, claimed={(2, 1)}) is None  # already handed out
    interrupted = three + [TrialRecord(trial=3, engine="optuna", values={"learning_rate": 0.02}, rung=1,
                                       state="interrupted")]
    assert promotion.next_promotion(space, interrupted).source.trial == 2  # an interrupted run is run again
    ran = three + [_record(3, 0.02, 1, 0.7)]
    assert promotion.next_promotion(space, ran) is None
    six = ran + [_record(4, 0.011, 0, 0.55), _record(5, 0.3, 0, 0.1), _record(6, 0.5, 0, 0.05)]
    assert promotion.next_promotion(space, six).source.trial == 4  # 6 // 3 = 2: the second best now goes on


def test_a_rung_never_sends_on_more_than_its_share_in_all():
    """Plain ASHA promotes whoever is in the top third when asked, so a late best goes on
    beside the early ones and the union grows past a third (13 of 23 in a measured hour)."""
    space = _space()
    three = [_record(0, 0.01, 0, 0.5), _record(1, 0.1, 0, 0.4), _record(2, 0.02, 0, 0.6), _record(3, 0.02, 1, 0.7)]
    five = three + [_record(4, 0.011, 0, 0.9), _record(5, 0.3, 0, 0.1)]  # a new best, but 5 // 3 = 1 went on
    assert promotion.next_promotion(space, five) is None
    six = five + [_record(6, 0.5, 0, 0.05)]  # 6 // 3 = 2: the best not yet promoted goes on
    assert promotion.next_promotion(space, six).source.trial == 4
    assert promotion.next_promotion(space, six, claimed={(4, 1)}) is None  # handed out: the share is used


def test_the_optuna_engine_runs_rungs_and_records_fidelity_and_promotion(tmp_path):
    space = _space()
    records = stand_in.run(space, tmp_path, trials=12, trainer=data_aware_train)
    assert len(records) == 12 and all(r.state == "complete" for r in records)
    by_trial = {r.trial: r for r in records}
    first = [r for r in records if r.rung == 0]
    second = [r for r in records if r.rung == 1]
    assert len(first) + len(second) == 12 and len(second) == len(first) // 3
    assert all(r.config["train_images"] == 100 and r.config["epochs"] == 1 and r.promoted_from is None
               for r in first)
    for r in second:
        source = by_trial[r.promoted_from]
        assert source.rung == 0 and source.values == r.values and "promoted from trial" in r.note
        assert r.config["train_images"] == 200 and r.config["epochs"] == 2
        earlier = [f.val_accuracy for f in first if f.finished_at <= r.started_at]
        # ASHA: in the top third of the rung's runs finished when it was promoted
        assert sorted(earlier, reverse=True).index(source.val_accuracy) < len(earlier) // 3
    assert len({config_key(r.values) for r in second}) == len(second)  # never promoted twice


def last_epoch_train(config, data, on_epoch, seed):
    """data_aware_train that, as the trainer does with validate: last_epoch, reports no
    val_accuracy before the last epoch (and a worse one on the way, never seen)."""
    result = data_aware_train({**config, "epochs": 0}, data, on_epoch, seed)
    for epoch in range(1, config["epochs"] + 1):
        last = epoch == config["epochs"] or config["validate"] == "every_epoch"
        on_epoch(epoch, {"loss": 1.0, **({"val_accuracy": result.val_accuracy} if last else {})})
    result.epochs_run = result.best_epoch = config["epochs"]
    return result


def test_rungs_that_validate_their_last_epoch_only_are_scored_and_promoted_by_it(tmp_path):
    rungs = [{**rung, "validate": "last_epoch"} for rung in RUNGS]
    space = _space(rungs=[dict(rungs[0], epochs=2), dict(rungs[1], epochs=3)])
    records = stand_in.run(space, tmp_path, trials=9, trainer=last_epoch_train)
    assert all(r.state == "complete" and r.val_accuracy is not None for r in records)
    assert {r.rung for r in records} == {0, 1} and all(r.config["validate"] == "last_epoch" for r in records)
    assert all([("val_accuracy" in h) for h in r.history] == [False] * (r.epochs_run - 1) + [True] for r in records)
    assert space.complete(records[0].values)["validate"] == "every_epoch"  # the final training's own setting
    with pytest.raises(SpaceError, match=r"params\.validate: a rung's setting"):
        parse_space({"params": {"validate": {"type": "fixed", "value": "last_epoch"}}}, "x.yaml")


def test_the_leaderboard_ranks_the_top_rung_first_and_the_best_comes_from_it():
    space = _space()
    records = [_record(0, 0.01, 0, 0.9), _record(1, 0.1, 0, 0.4), _record(2, 0.02, 0, 0.6),
               _record(3, 0.01, 1, 0.7)]
    frame = leaderboard_frame(records, space)
    assert list(frame["trial"]) == [3, 0, 2, 1]  # rung 1's 0.7 above rung 0's 0.9: never compared
    assert [r.trial for r in top_fidelity(records)] == [3] and best_trial(records).trial == 3


def test_a_configuration_ranked_at_a_rung_gets_the_spaces_own_schedule_on_all_images(tmp_path):
    space = _space()
    job = stand_in.make_job(space, tmp_path, data=synthetic_bundle(300, n_val=60), trainer=data_aware_train)
    outcome = run_final(job, _record(3, 0.01, 1, 0.7), 360)
    assert outcome.complete and outcome.record.config["epochs"] == 5 and outcome.record.config["train_images"] == 0
    assert outcome.record.rung is None and outcome.record.trial == 3


def test_the_deadline_keeps_time_for_the_final_training_not_for_the_rung(tmp_path):
    space = _space()
    config = space.complete({"learning_rate": 0.01})
    log = ThroughputLog(tmp_path / "t.json")
    from cnnbench.throughput import machine_key  # noqa: F401 (the log keys by this machine)
    from cnnbench.model import architecture_stats

    flops = architecture_stats(config).flops
    log.add("float32", 1e9, flops)
    deadline = Deadline(None, log, final_images=50_000)
    deadline.note_complete({**config, **RUNGS[0]}, 0.5, rung=None)
    small = deadline.best_final_seconds
    deadline.note_complete(config, 0.4, rung=1)  # a lower score, but at a higher rung: it is the best now
    assert deadline.best_rung == 1 and deadline.best_final_seconds == pytest.approx(deadline.final_seconds(config))
    assert deadline.best_final_seconds > small


def test_the_plan_halves_the_configurations_rung_by_rung_at_a_stated_speed(tmp_path):
    space = _space()
    config = space.complete({})
    from cnnbench.model import architecture_stats

    log = ThroughputLog(tmp_path / "t.json")
    rate = 3e10  # a stated training speed: FLOPs/s
    log.add("float32", rate, architecture_stats(config).flops)
    hour = plan(space, 60, log)
    costs = [trial_seconds({**config, **rung}, 45_000, 5_000, rate) for rung in RUNGS]
    final = trial_seconds(config, 50_000, 0, rate)
    assert hour.final_seconds == pytest.approx(final) and hour.rate == rate
    n = hour.trials
    assert n >= 3
    assert [runs for _, _, runs in hour.rungs] == [n, n // 3]
    spent = costs[0] * n + costs[1] * (n // 3)
    room = 3600 - final - hour.export_seconds
    assert spent <= room < spent + costs[0] + costs[1]  # one more configuration would not fit
    text = hour.text()
    assert f"search: {n} configuration(s)" in text and "rung 1 (200 images, 2 epochs)" in text and "total:" in text


def test_the_plan_runs_the_search_on_workers_at_the_speed_a_worker_reached_here(tmp_path, monkeypatch):
    import dataclasses

    from cnnbench.model import architecture_stats
    from cnnbench.training import runtime

    space = _space()
    config = space.complete({})
    flops = architecture_stats(config).flops
    real = runtime.cpu()

    def on(cores):  # this process as if it had that many cores (a worker is pinned to one)
        monkeypatch.setattr(runtime, "cpu", lambda: dataclasses.replace(real, cores=cores))

    log = ThroughputLog(tmp_path / "t.json")
    on(2)
    log.add("float32", 3e10, flops)  # the whole machine, one process
    alone = plan(space, 60, log)
    guessed = plan(space, 60, log, workers=2)  # no worker has trained here: half the machine each
    assert guessed.worker_rate_assumed and "assumed: no worker this size has trained here yet" in guessed.text()
    assert guessed.rungs[0][1] == pytest.approx(trial_seconds({**config, **RUNGS[0]}, 45_000, 5_000, 1.5e10))
    on(1)
    log.add("float32", 1.8e10, flops)  # a worker on one core: 0.6 of the machine, two of them 1.2x
    on(2)
    hour = plan(space, 60, log, workers=2)
    costs = [trial_seconds({**config, **rung}, 45_000, 5_000, 1.8e10) for rung in RUNGS]
    n = hour.trials
    assert not hour.worker_rate_assumed and hour.rungs[0][1] == pytest.approx(costs[0])
    assert [runs for _, _, runs in hour.rungs] == [n, n // 3] and n > alone.trials
    room = 3600 - hour.final_seconds - hour.export_seconds  # the final on both cores, at the machine's speed
    assert hour.final_seconds == pytest.approx(alone.final_seconds)
    assert (costs[0] * n + costs[1] * (n // 3)) / 2 <= room < (costs[0] * (n + 1) + costs[1] * ((n + 1) // 3)) / 2
    assert hour.search_seconds <= room
    assert "the search on 2 worker processes of 1 core(s), 2 runs at a time" in hour.text()


def test_a_training_subset_is_stratified_and_the_same_for_every_trial_of_its_size():
    data = synthetic_bundle(1000, n_val=100)
    a, b = data.training_subset(300), data.training_subset(300)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    counts = np.bincount(a.y_train, minlength=10)
    share = np.bincount(data.y_train, minlength=10) / len(data.y_train) * 300
    assert len(a.y_train) == 300 and np.all(np.abs(counts - share) <= 1)


def test_a_compressed_schedule_reaches_its_end_at_the_rungs_last_step():
    from cnnbench.knobs import default_config
    from cnnbench.training.optim import _schedule

    config = {**default_config(), "lr_schedule": "linear", "warmup": 0.2, "lr_end": 0.0, "batch_size": 32,
              "epochs": 2, "learning_rate": 0.01}
    steps = math.ceil(100 / 32) * 2  # a rung of 100 images, 2 epochs: its own whole schedule
    schedule = _schedule(config, steps)
    peak = float(schedule(int(steps * 0.2)))
    assert peak > 0 and float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(steps // 2)) < peak


def test_stagnation_is_judged_at_the_first_rung_not_across_fidelities(tmp_path):
    from cnnbench.engines.base import stop_rule_reason
    from cnnbench.trials import write_record

    space = _space(stop_after_no_improvement=2)
    job = stand_in.make_job(space, tmp_path)
    runs = [_record(0, 0.01, 0, 0.5), _record(1, 0.1, 0, 0.4), _record(2, 0.02, 0, 0.6), _record(3, 0.02, 1, 0.8),
            _record(4, 0.03, 0, 0.62)]
    for i, r in enumerate(runs):
        r.finished_at = 1000.0 + i
        write_record(job.paths, r)
    # rung 1's 0.8 is not a bar the next 5,000-image scores must clear: 0.62 is a new best at rung 0
    assert stop_rule_reason(job) is None
    for i, r in enumerate([_record(5, 0.3, 0, 0.2), _record(6, 0.4, 0, 0.3)]):
        r.finished_at = 2000.0 + i
        write_record(job.paths, r)
    assert "the last 2 finished trials brought no better val_accuracy than 0.6200" in stop_rule_reason(job)


def test_a_grid_is_not_done_while_promotions_are_owed(tmp_path):
    space = parse_space({"seed": 3, "budget": {"trials": 20},
                         "search": {"sampler": "grid", "pruner": "none", "rungs": RUNGS},
                         "params": {"learning_rate": {"type": "choice", "choices": [1e-4, 1e-3, 1e-2]},
                                    "epochs": {"type": "fixed", "value": 5},
                                    "precision": {"type": "fixed", "value": "float32"}}})
    records = stand_in.run(space, tmp_path, trials=20, trainer=data_aware_train)
    assert sorted(r.rung for r in records) == [0, 0, 0, 1]  # 3 grid points, then the best third promoted
    assert next(r for r in records if r.rung == 1).values == {"learning_rate": 1e-2}
