"""search.final_min_epochs: on a slow CPU the search's share of the hour would leave the
final training too few epochs, so the search ends sooner (or never starts) and the final
keeps at least that many.

Why: on the Zen 3 VM the default hour's final training gets the hour's last 55% at about
7 minutes an epoch of 96-256-256, 4 epochs; the recipe alone gets about 10. Everything here
is arithmetic at a stated throughput (a ThroughputLog with one sample) or a stand-in
trainer; no test waits on a clock, and each deadline leaves minutes of slack.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import stand_in
from cnnbench.deadline import Deadline, NotStarted
from cnnbench.forecast import FINAL_SAFETY, FLOOR_SLACK
from cnnbench.engines.base import stop_rule_reason
from cnnbench.model import architecture_stats
from cnnbench.plan import plan
from cnnbench.space import SpaceError, parse_space
from cnnbench.space.variants import recipe_alone
from cnnbench.throughput import ThroughputLog

RUNGS = [{"train_images": 100, "epochs": 1}, {"train_images": 200, "epochs": 2}]


def _space(floor=10, share=0.45, **search):
    return parse_space({"seed": 3, "budget": {"trials": 6},
                        "search": {"sampler": "random", "pruner": "none", "rungs": RUNGS, "time_share": share,
                                   "final_min_epochs": floor, **search},
                        "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                                   "base_filters": {"type": "choice", "choices": [32, 40]},
                                   "epochs": {"type": "fixed", "value": 5},
                                   "precision": {"type": "fixed", "value": "float32"}},
                        "start_with": [{"learning_rate": 0.01, "base_filters": 32}]})


def _recipe(space) -> dict:
    return space.recipe_config()


def _log(tmp_path, config, epoch_seconds: float) -> ThroughputLog:
    """A machine on which an epoch of 50,000 images of ``config`` takes ``epoch_seconds``."""
    flops = architecture_stats(config).flops
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add("float32", flops * 3 * 50_000 / epoch_seconds, flops)
    return log


def _deadline(space, log, minutes=60.0) -> Deadline:
    now = time.time()
    return Deadline(now + minutes * 60, log, final_images=50_000, search_end=now + space.search.time_share * minutes * 60,
                    final_floor=space.search.final_min_epochs or 0, floor_config=_recipe(space),
                    test_images=10_000)


def _floor_seconds(deadline: Deadline, config: dict) -> float:
    floor = {**config, "epochs": deadline.final_floor, "train_images": 0}
    return deadline.final_seconds(floor, FINAL_SAFETY) + deadline.export_reserve(floor, 10_000) + FLOOR_SLACK


def test_a_floor_is_a_whole_number_of_epochs_and_needs_a_search_share():
    assert _space(12).search.final_min_epochs == 12 and _space(None).search.final_min_epochs is None
    for bad in (0, -3, 2.5, "ten"):
        with pytest.raises(SpaceError, match=r"^x\.yaml: search\.final_min_epochs"):
            parse_space({"search": {"time_share": 0.5, "final_min_epochs": bad},
                         "params": {"epochs": {"type": "fixed", "value": 2}}}, "x.yaml")
    with pytest.raises(SpaceError, match=r"^x\.yaml: search\.final_min_epochs: .* needs search\.time_share"):
        parse_space({"search": {"final_min_epochs": 10}, "params": {"epochs": {"type": "fixed", "value": 2}}},
                    "x.yaml")


def test_where_the_share_leaves_the_final_enough_the_floor_changes_nothing(tmp_path):
    space = _space()
    deadline = _deadline(space, _log(tmp_path, _recipe(space), 60.0))  # a minute an epoch
    assert deadline.search_ends_at() == deadline.search_end and not deadline.floor_binds()


def test_on_a_slower_machine_the_search_ends_when_the_final_needs_the_rest(tmp_path):
    space = _space()
    deadline = _deadline(space, _log(tmp_path, _recipe(space), 240.0))  # 4 min an epoch: 10 need 42+
    ends = deadline.search_ends_at()
    assert ends < deadline.search_end and deadline.floor_binds()
    assert ends == pytest.approx(deadline.end - _floor_seconds(deadline, _recipe(space)), abs=1.0)
    assert time.time() < ends  # some search still fits: 60 - 42 - export minutes
    wider = space.complete({"learning_rate": 0.01, "base_filters": 40})  # the best so far costs 1.5x: sooner still
    deadline.note_complete(wider, 0.5, rung=0)
    assert deadline.search_ends_at() == pytest.approx(deadline.end - _floor_seconds(deadline, wider), abs=1.0)
    assert deadline.search_ends_at() < ends


def test_a_trial_that_would_end_after_the_floors_start_is_not_started_and_says_why(tmp_path):
    space = _space()
    config = _recipe(space)
    deadline = _deadline(space, _log(tmp_path, config, 240.0))
    rung = {**config, **RUNGS[0]}
    assert deadline.admit(rung, 45_000, 5_000, 10_000, "float32", [], final_config=config)[0] == rung
    deadline.end -= (deadline.search_ends_at() - time.time()) - 1  # now the floor starts in a second
    with pytest.raises(NotStarted, match=r"before the final training's time for its search\.final_min_epochs"):
        deadline.admit(rung, 45_000, 5_000, 10_000, "float32", [], final_config=config)


def test_a_costlier_run_is_not_started_where_its_own_final_would_miss_the_floor(tmp_path):
    """It may become the best: then its final, not the best's so far, is the one trained."""
    space = _space()
    config = _recipe(space)
    wider = space.complete({"learning_rate": 0.01, "base_filters": 40})
    deadline = _deadline(space, _log(tmp_path, config, 150.0))  # the recipe's floor leaves the share alone
    rung = {**wider, **RUNGS[0]}
    room = deadline.floor_start(wider) - time.time()  # the wider final's floor starts first
    assert 0 < room < deadline.search_ends_at() - time.time()
    deadline.end -= room - 1  # now it starts in a second; the recipe's floor a few minutes later
    assert deadline.search_ends_at() - time.time() > 60 and not deadline.search_over()
    with pytest.raises(NotStarted, match=r"before the final training's time for its search\.final_min_epochs"):
        deadline.admit(rung, 45_000, 5_000, 10_000, "float32", [], final_config=wider)
    recipe_rung = {**config, **RUNGS[0]}
    assert deadline.admit(recipe_rung, 45_000, 5_000, 10_000, "float32", [], final_config=config)[0] == recipe_rung


def test_after_its_workers_the_sweep_prices_the_floor_on_their_best(tmp_path):
    from cnnbench.engines.base import workers_finished
    from cnnbench.trials import State, TrialRecord, write_record

    space = _space()
    deadline = _deadline(space, _log(tmp_path, _recipe(space), 240.0))
    job = stand_in.make_job(space, tmp_path / "s", deadline=deadline)
    for trial, filters, acc in ((0, 32, 0.5), (1, 40, 0.7)):  # the workers' records: the wider one won
        write_record(job.paths, TrialRecord(trial=trial, engine="optuna", values={"learning_rate": 0.01,
                                                                                  "base_filters": filters},
                                            state=State.COMPLETE, val_accuracy=acc, rung=0, train_images=100))
    before = deadline.search_ends_at()
    workers_finished(job)
    assert deadline.best_config["base_filters"] == 40 and deadline.search_ends_at() < before


def test_while_this_machines_speed_is_unknown_the_share_decides(tmp_path):
    space = _space()
    deadline = _deadline(space, ThroughputLog(tmp_path / "empty.json"))  # the first runs measure it
    assert deadline.search_ends_at() == deadline.search_end and not deadline.search_over()


def test_the_plan_shortens_the_search_to_what_the_floor_leaves(tmp_path):
    space = _space()
    config = _recipe(space)
    log = _log(tmp_path, config, 240.0)
    hour = plan(space, 60, log)
    floor_start = _deadline(space, log).floor_start() - time.time()
    assert hour.search_until == pytest.approx(floor_start, abs=1.0) and hour.search_until < 0.45 * 3600
    assert hour.filled_epochs >= 10  # the final keeps its floor (priced at the margin it starts with)
    assert 0 < hour.trials < plan(_space(None), 60, log).trials  # fewer configurations than the share held
    text = hour.text()
    assert f"search.final_min_epochs 10: the final training keeps time for 10 epochs, so the search ends by " \
           f"minute {hour.search_until / 60:.1f} (its time_share 0.45 at 27.0)" in text
    total = float(text.split("total: ")[1].split(" min")[0])
    assert 55 <= total <= 60  # still an hour


def test_where_the_floor_needs_the_whole_hour_the_plan_has_no_search(tmp_path):
    space = _space()
    hour = plan(space, 60, _log(tmp_path, _recipe(space), 400.0))  # 10 epochs: 70 min
    assert hour.floor_takes_all and hour.search_until == 0 and hour.trials == 0
    assert 7 <= hour.filled_epochs < 10  # what the whole hour holds, the export beside it
    text = hour.text()
    assert "which needs all 60 min here: no search, the space's recipe (its first start_with, else its centre)" in text
    assert "search:" not in text and "none does" not in text
    assert f"final training on all training images: {hour.filled_epochs} epochs" in text
    fast = plan(space, 60, _log(tmp_path / "fast", _recipe(space), 30.0))
    assert fast.search_until == pytest.approx(0.45 * 3600) and "search.time_share 0.45: the search ends by" in fast.text()


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_a_search_the_floor_leaves_no_time_runs_nothing_and_says_why(tmp_path, engine):
    space = _space(rungs=[])  # no rungs (KerasTuner refuses them): the floor applies to any timed search
    deadline = _deadline(space, _log(tmp_path, _recipe(space), 400.0))
    job = stand_in.make_job(space, tmp_path / "s", engine=engine, deadline=deadline)
    stand_in.engines.get(engine).run(job)
    assert stand_in.read_records(job.paths) == []
    assert job.ended_by.startswith("search.final_min_epochs: the rest of the time is what 10 epochs of the final")
    roomy = _deadline(space, _log(tmp_path / "fast", _recipe(space), 30.0))
    job = stand_in.make_job(space, tmp_path / "roomy", engine=engine, deadline=roomy, trials=3)
    stand_in.engines.get(engine).run(job)
    assert len(stand_in.read_records(job.paths)) == 3 and stop_rule_reason(job) is None


def test_the_sweep_prices_the_floor_on_the_spaces_recipe(tmp_path, monkeypatch):
    import importlib

    from cnnbench.deadline import DEADLINE_ENV, SEARCH_END_ENV

    for name in (DEADLINE_ENV, SEARCH_END_ENV):  # this process is no sweep's worker
        monkeypatch.delenv(name, raising=False)

    sweep_module = importlib.import_module("cnnbench.sweep")  # cnnbench.sweep is the API's function

    space = _space(8)
    data = SimpleNamespace(x_train=SimpleNamespace(shape=(900, 32, 32, 3)), class_names=list("abcdefghij"),
                           y_train=[0] * 900, y_val=[0] * 100, y_test=[0] * 200)
    run = SimpleNamespace(timeout=60, started=time.time(), space=space, final=True,
                          request=SimpleNamespace(worker=None))
    deadline = sweep_module._deadline(run, data, [])
    assert (deadline.final_floor, deadline.test_images, deadline.final_images) == (8, 200, 1000)
    assert deadline.floor_config == space.complete({"learning_rate": 0.01, "base_filters": 32})
    assert deadline.search_end == pytest.approx(run.started + 0.45 * 3600)
    run.request.worker = "1"  # a worker keeps the end its parent handed it (fewer cores, its own trials)
    assert sweep_module._deadline(run, data, []).final_floor == 0
    run.final, run.request.worker = False, None
    assert sweep_module._deadline(run, data, []).final_floor == 0  # no final training, no floor


def test_without_a_recipe_the_floor_is_priced_on_the_centre_the_sweep_would_train():
    space = _space()
    assert space.recipe() == {"learning_rate": 0.01, "base_filters": 32}
    bare = space.model_copy(update={"start_with": []})
    assert bare.recipe() == bare.centre() and bare.recipe()["base_filters"] in (32, 40)


def test_a_recipe_naming_some_parameters_takes_the_rest_from_the_centre():
    """The fallback final, --recipe-only and the plan all train or price Space.recipe; the
    knob defaults (base_filters 32 here) would be a network the space may not even hold."""
    partial = _space().model_copy(update={"start_with": [{"learning_rate": 0.05}]})
    assert partial.recipe() == {"learning_rate": 0.05, "base_filters": 40}  # choices [32, 40]: the middle
    assert recipe_alone(partial).recipe_config()["base_filters"] == 40 == partial.recipe_config()["base_filters"]


def test_the_plan_prices_the_network_a_sweep_without_a_recipe_trains(tmp_path):
    space = _space()
    bare = space.model_copy(update={"start_with": []})
    centred = space.model_copy(update={"start_with": [bare.centre()]})
    assert bare.recipe_config()["base_filters"] == 40 != bare.complete({})["base_filters"]
    log = _log(tmp_path, _recipe(bare), 240.0)
    hour, same = plan(bare, 60, log), plan(centred, 60, log)
    assert (hour.trial_seconds, hour.filled_epochs, hour.search_until, hour.trials) == \
           (same.trial_seconds, same.filled_epochs, same.search_until, same.trials)
    assert hour.trial_seconds > plan(space, 60, log).trial_seconds  # 40 filters cost more than the recipe's 32


def _left_for(deadline: Deadline, config: dict, epochs: int, spare: float) -> float:
    """Seconds from now that hold ``epochs`` of ``config``'s final at FINAL_SAFETY's margin,
    the export and ``spare`` seconds."""
    final = {**config, "epochs": epochs, "train_images": 0}
    return deadline.final_seconds(final, FINAL_SAFETY) + deadline.export_reserve(final, 10_000) + spare


def test_a_final_filling_the_time_at_the_wider_margin_still_keeps_its_floor(tmp_path):
    """The floor was kept at FINAL_SAFETY's margin; the fallback final (no search trial
    finished) and --recipe-only size at SAFETY's while this network has not trained at the
    final's size here, which would give back an epoch the plan promised."""
    space = _space()
    config = {**_recipe(space), "train_images": 0}
    deadline = _deadline(space, _log(tmp_path, config, 240.0))
    deadline.end = time.time() + _left_for(deadline, config, 10, 60.0)
    assert deadline.final_margin(config) > FINAL_SAFETY  # no training of this size logged here
    filled, note = deadline.fill_final(config, 10_000, deadline.final_margin(config))
    assert filled["epochs"] == 10 and "search.final_min_epochs" in note
    deadline.final_floor = 0  # without a floor, the wider margin holds one epoch fewer
    assert deadline.fill_final(config, 10_000, deadline.final_margin(config))[0]["epochs"] == 9
    deadline.final_floor = 10
    deadline.end = time.time() + _left_for(deadline, config, 8, 60.0)  # the floor does not fit: what does
    assert deadline.fill_final(config, 10_000, deadline.final_margin(config))[0]["epochs"] == 7


def test_the_recipe_only_plan_keeps_the_floor_the_sweep_keeps(tmp_path):
    space = recipe_alone(_space())
    config = {**_recipe(space), "train_images": 0}
    log = _log(tmp_path, config, 240.0)
    probe = _deadline(_space(), log)
    minutes = _left_for(probe, config, 10, 60.0) / 60
    hour = plan(space, minutes, log, recipe_only=True)
    assert hour.filled_epochs == 10
    assert hour.final_seconds == pytest.approx(probe.final_seconds({**config, "epochs": 10}, FINAL_SAFETY))
    bare = recipe_alone(_space().model_copy(update={"search": _space().search.model_copy(
        update={"final_min_epochs": None})}))
    assert plan(bare, minutes, log, recipe_only=True).filled_epochs == 9
