"""--recipe-only: no search, the space's recipe trained on all images for as long as the hour holds.

The yardstick of issue 15: what a user gets from the hour without searching at all. The
plan arithmetic is tested against a stated throughput (a ThroughputLog with one sample),
never a clock: each deadline here leaves half an epoch's forecast of slack.
"""
from __future__ import annotations

import re
import time

import pytest

import stand_in
from cnnbench.deadline import Deadline
from cnnbench.forecast import EXPORT_SECONDS, stretch_limit
from cnnbench.throughput import ThroughputLog
from cnnbench.final import run_final
from cnnbench.model import architecture_stats
from cnnbench.request import SweepRequest, prepare
from cnnbench.space.variants import recipe_alone
from cnnbench.space import SpaceError, load_space, parse_space
from cnnbench.trials import State, TrialRecord, read_record, write_record
from cnnbench.training.data import synthetic_bundle
from conftest import SPACES

RATE = 1e9  # training FLOPs/s stated for these tests: slow, so a few epochs fill a few minutes


def _deadline(tmp_path, config, final_images: int, rate: float = RATE) -> Deadline:
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add(config["precision"], rate, architecture_stats(config).flops)
    return Deadline(None, log, final_images=final_images)


def _slack_for(deadline: Deadline, config: dict, epochs: int, n_test: int) -> float:
    """Seconds from now at which ``epochs`` fit and ``epochs + 1`` do not, half an epoch clear of both."""
    export = max(2 * EXPORT_SECONDS, deadline.export_seconds(config, n_test, config["precision"]))
    at = deadline.final_seconds({**config, "epochs": epochs})
    after = deadline.final_seconds({**config, "epochs": epochs + 1})
    return export + (at + after) / 2


def test_the_default_space_reduced_to_its_recipe_has_one_configuration_and_no_rungs():
    space = load_space(SPACES / "default.yaml")
    alone = recipe_alone(space)
    assert alone.size() == 1 and not alone.searched() and not alone.search.rungs and not alone.start_with
    config = alone.complete({})
    for name, value in space.start_with[0].items():  # airbench94's hyperparameters, fixed
        assert config[name] == space.complete(space.start_with[0])[name], name
    assert config["widths"] == "64-256-256" and config["learning_rate"] == pytest.approx(11.5)
    assert config["epochs"] == 8  # the space's own, grown by the deadline at the final training
    assert "--recipe-only: its first start_with recipe" in alone.source


def test_without_a_recipe_the_centre_is_trained_and_conditions_that_fail_are_dropped():
    space = parse_space({"params": {
        "optimizer": {"type": "choice", "choices": ["adam", "sgd", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}},
        "weight_decay": {"type": "float", "low": 0.01, "high": 0.1, "condition": {"optimizer": "adamw"}},
        "epochs": {"type": "int", "low": 4, "high": 12, "step": 4}}})
    config = recipe_alone(space).complete({})
    assert config["optimizer"] == "sgd" and config["momentum"] == pytest.approx(0.85) and config["epochs"] == 8
    assert "weight_decay" not in recipe_alone(space).params  # adamw's, not the centre's
    assert recipe_alone(space).size() == 1


def test_recipe_only_with_no_final_is_one_clear_error_before_anything_is_written(tmp_path):
    with pytest.raises(SpaceError, match="--recipe-only .* cannot go with --no-final"):
        prepare(SweepRequest(space_file=str(SPACES / "default.yaml"), results=str(tmp_path / "r"), final=False,
                             recipe_only=True))
    assert not (tmp_path / "r").exists()
    sweep = prepare(SweepRequest(space_file=str(SPACES / "default.yaml"), results=str(tmp_path / "r"),
                                 recipe_only=True))
    assert sweep.study == "default-recipe-only" and not sweep.search_needed
    assert "--recipe-only" in SweepRequest(space_file="x.yaml", recipe_only=True).worker_command()


def test_the_final_training_is_given_as_many_epochs_as_the_time_left_holds(tmp_path):
    config = recipe_alone(load_space(SPACES / "default.yaml")).complete({})
    config = {**config, "precision": "float32", "train_images": 0}
    deadline = _deadline(tmp_path, config, final_images=50_000)
    deadline.end = time.time() + _slack_for(deadline, config, 23, 10_000)
    filled, note = deadline.fill_final(config, 10_000)
    assert filled["epochs"] == 23 and "23 epochs, as many as the" in note
    deadline.end = time.time() + _slack_for(deadline, config, 3, 10_000)  # shorter than its own 8
    assert deadline.fill_final(config, 10_000)[0]["epochs"] == 3
    assert Deadline(None, deadline.log, final_images=50_000).fill_final(config) == (config, "")  # no deadline
    unknown = Deadline(time.time() + 3600, ThroughputLog(tmp_path / "empty.json"), final_images=50_000)
    assert unknown.fill_final(config) == (config, "")  # speed unknown: the sweep measures it first


def _recipe_job(tmp_path, deadline, warmup: float = 0.5, **kw):
    """A --recipe-only job; its warm-up holds a filled final's epoch 2, so it is re-sized."""
    space = recipe_alone(parse_space({"seed": 3, "params": {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "warmup": {"type": "fixed", "value": warmup},
        "epochs": {"type": "fixed", "value": 2}, "precision": {"type": "fixed", "value": "float32"}},
        "start_with": [{"learning_rate": 0.01}]}))
    job = stand_in.make_job(space, tmp_path, data=synthetic_bundle(300, n_val=60), deadline=deadline,
                            data_sizes=(300, 60, 60), fill_final=True, recipe_only=True, **kw)
    return job, space.complete({})


def test_a_recipe_only_final_fills_the_deadline_and_its_record_says_so(tmp_path, monkeypatch):
    config = {**_recipe_job(tmp_path, Deadline(None))[1], "train_images": 0}
    deadline = _deadline(tmp_path, config, final_images=360)
    deadline.end = time.time() + _slack_for(deadline, config, 6, 60)
    stand_in.final_epochs_take(monkeypatch, deadline, config, 4)  # as forecast: 4 more after its second
    job, _ = _recipe_job(tmp_path, deadline)
    outcome = run_final(job, None, 360)
    assert outcome.complete and outcome.record.config["epochs"] == 6 and outcome.record.epochs_run == 6
    assert outcome.source.startswith("the recipe alone (--recipe-only; 6 epochs")
    assert outcome.record.config["learning_rate"] == pytest.approx(0.01)  # the recipe's, not the centre's


@pytest.mark.parametrize("left, epochs", [(6, 8), (2, 4), (40, 9)])
def test_a_filling_final_is_re_sized_to_what_its_second_epoch_measured(tmp_path, monkeypatch, left, epochs):
    """Sized at 6 epochs from the log's speed, it times its second epoch (the first one's
    includes tracing): faster, it grows to what the time left holds, at most 1.5 times (9);
    slower, it shrinks rather than be cut short; its record keeps the new schedule."""
    config = {**_recipe_job(tmp_path, Deadline(None))[1], "train_images": 0}
    deadline = _deadline(tmp_path, config, final_images=360)
    deadline.end = time.time() + _slack_for(deadline, config, 6, 60)
    stand_in.final_epochs_take(monkeypatch, deadline, config, left)
    job, _ = _recipe_job(tmp_path, deadline)
    outcome = run_final(job, None, 360)
    record = read_record(job.paths.final_record)
    assert outcome.complete and record.config["epochs"] == epochs == record.epochs_run
    assert f"re-sized from 6 to {epochs} epochs after epoch 2" in record.note
    assert outcome.source.endswith(f", re-sized to {epochs} epochs after epoch 2")  # the model card's words


def _six_epoch_final(tmp_path, warmup: float = 0.5):
    """A --recipe-only final the deadline sizes at 6 epochs, and its job."""
    config = {**_recipe_job(tmp_path, Deadline(None), warmup)[1], "train_images": 0}
    deadline = _deadline(tmp_path, config, final_images=360)
    deadline.end = time.time() + _slack_for(deadline, config, 6, 60)
    return config, deadline, _recipe_job(tmp_path, deadline, warmup)[0]


def test_a_final_whose_epoch_2_is_past_its_warm_up_is_not_re_sized(tmp_path, monkeypatch):
    """There a new length would move a decaying learning rate (or undo a step schedule's
    drops): it keeps the size it started with, however fast its epochs run."""
    assert stretch_limit({"warmup": 0.23, "epochs": 26}) == 39  # the default recipe's: epoch 2 of 6 warming up
    assert stretch_limit({"warmup": 0.23, "epochs": 8}) is None  # 1.84 epochs of warm-up
    config, deadline, job = _six_epoch_final(tmp_path, warmup=0.0)
    stand_in.final_epochs_take(monkeypatch, deadline, config, 40)  # fast enough for 9
    outcome = run_final(job, None, 360)
    assert outcome.complete and outcome.record.epochs_run == 6 and "re-sized" not in outcome.record.note


def test_a_final_re_sized_to_more_than_the_time_holds_stops_rather_than_overrun(tmp_path, monkeypatch):
    """Its epoch 2 took longer than all the time left: the re-size keeps one more epoch at
    least, and the deadline's check after the re-size stops it there instead."""
    import itertools

    config, deadline, job = _six_epoch_final(tmp_path)
    ticks = itertools.chain([0.0, 1.0], itertools.repeat(1.0 + 10 * deadline.left()))
    monkeypatch.setattr("cnnbench.final.clock", lambda: next(ticks))
    outcome = run_final(job, None, 360)
    record = read_record(job.paths.final_record)
    assert record.state == State.PRUNED and record.epochs_run == 2 and not outcome.complete
    assert "stopped after epoch 2 of 3" in record.reason


def test_a_trainer_that_does_not_take_stretch_to_keeps_its_epochs_and_its_record_says_so(tmp_path, monkeypatch):
    config, deadline, job = _six_epoch_final(tmp_path)
    stand_in.final_epochs_take(monkeypatch, deadline, config, 6)  # the sweep asks for 8
    job.runner.trainer = lambda config, data, on_epoch, seed: stand_in.fake_train(config, data, on_epoch, seed)
    outcome = run_final(job, None, 360)
    record = read_record(job.paths.final_record)
    assert outcome.complete and record.config["epochs"] == record.epochs_run == 6
    assert record.note.endswith("re-sized from 6 to 8 epochs after epoch 2 (%.0f s an epoch here); the trainer "
                                "kept 6 epochs" % record.history[1]["seconds"])
    assert "re-sized" not in outcome.source


def test_an_unknown_speed_is_measured_before_the_final_is_sized(tmp_path, monkeypatch):
    config = {**_recipe_job(tmp_path, Deadline(None))[1], "train_images": 0}
    deadline = Deadline(None, ThroughputLog(tmp_path / "empty.json"), final_images=360)
    measured = []

    def measure(space, log=None):  # stands in for half a minute of real training
        measured.append(space.complete({}))
        log.add("float32", RATE, architecture_stats(config).flops)
        return RATE

    monkeypatch.setattr("cnnbench.plan.measure", measure)
    deadline.end = time.time() + 3600.0
    job, _ = _recipe_job(tmp_path, deadline)
    outcome = run_final(job, None, 360)
    assert measured and measured[0]["learning_rate"] == pytest.approx(0.01)
    assert outcome.complete and outcome.record.config["epochs"] > 2  # grown beyond the space's own 2


def test_a_stopped_recipe_only_final_goes_on_with_the_schedule_it_started(tmp_path):
    """A new run of the command would size a new schedule (the hour starts again), which the
    checkpoint of the stopped one cannot go on from: the earlier run's epochs are kept."""
    config = {**_recipe_job(tmp_path, Deadline(None))[1], "train_images": 0}
    deadline = _deadline(tmp_path, config, final_images=360)
    deadline.end = time.time() + _slack_for(deadline, config, 9, 60)
    job, _ = _recipe_job(tmp_path, deadline)
    stopped = TrialRecord(trial=-1, engine="optuna", values={"learning_rate": 0.01}, config={**config, "epochs": 5},
                          state=State.INTERRUPTED)
    job.paths.final_record.parent.mkdir(parents=True, exist_ok=True)
    write_record(job.paths, stopped, job.paths.final_record)
    outcome = run_final(job, None, 360)
    assert outcome.complete and outcome.record.config["epochs"] == 5
    assert "5 epochs, as an earlier run of this command sized it" in outcome.source


def test_the_plan_of_a_recipe_only_hour_is_the_filled_final_training(tmp_path):
    from cnnbench.plan import plan

    alone = recipe_alone(parse_space({"params": {"epochs": {"type": "fixed", "value": 10},
                                                 "precision": {"type": "fixed", "value": "float32"}}}))
    config = alone.complete({})
    deadline = _deadline(tmp_path, config, final_images=50_000, rate=1e11)  # ~2 min an epoch of the default net
    hour = plan(alone, 60, deadline.log, recipe_only=True)
    deadline.end = time.time() + 3600
    assert hour.filled_epochs == deadline.fill_final(config, 10_000)[0]["epochs"] > 10
    budget = 3600 - max(2 * EXPORT_SECONDS, hour.export_seconds)
    assert hour.final_seconds <= budget < deadline.final_seconds({**config, "epochs": hour.filled_epochs + 1}) + 1
    text = hour.text()
    assert "no search (--recipe-only)" in text and f"{hour.filled_epochs} epochs" in text
    short = plan(alone, 2, deadline.log, recipe_only=True)  # 2 minutes: not one epoch beside the export
    assert short.filled_epochs == 0 and "not even one epoch" in short.text()


def test_a_recipe_only_final_keeps_the_small_margin_once_trainings_of_its_size_ran_here(tmp_path):
    """At the full 1.15 margin a measured Zen 4 --recipe-only hour left 10.6 of its 60 minutes
    unused, though its speed came from 30,000-image trainings of its own network: with such
    samples (at least half the final's images) it is sized at FINAL_SAFETY, as after a search;
    from a half-minute --measure (no image count) or small runs, at SAFETY still."""
    from cnnbench.forecast import FINAL_SAFETY, SAFETY
    from cnnbench.plan import plan

    config = {**_recipe_job(tmp_path / "probe", Deadline(None))[1], "train_images": 0}
    flops = architecture_stats(config).flops
    epochs = {}
    for name, images in (("measure", 0), ("small", 100), ("large", 180)):  # the final: 360 images
        log = ThroughputLog(tmp_path / f"{name}.json")
        log.add(config["precision"], RATE, flops, images)
        deadline = Deadline(None, log, final_images=360)
        assert deadline.final_margin(config) == (FINAL_SAFETY if name == "large" else SAFETY)
        at_final_margin = lambda e: deadline.final_seconds({**config, "epochs": e}) * FINAL_SAFETY / SAFETY  # noqa: E731
        export = max(2 * EXPORT_SECONDS, deadline.export_seconds(config, 60, config["precision"]))
        deadline.end = time.time() + export + (at_final_margin(10) + at_final_margin(11)) / 2
        job, _ = _recipe_job(tmp_path / name, deadline)
        outcome = run_final(job, None, 360)
        assert outcome.complete  # the size it started with (its second epoch then re-sizes it)
        epochs[name] = int(re.search(r"; (\d+) epochs, as many as", outcome.source).group(1))
    assert epochs["large"] == 10 and epochs["measure"] == epochs["small"] < 10
    # the plan says what the sweep will do
    alone = recipe_alone(parse_space({"params": {"precision": {"type": "fixed", "value": "float32"}}}))
    hourly = {}
    for images in (0, 40_000):
        log = ThroughputLog(tmp_path / f"plan-{images}.json")
        log.add("float32", 1e11, architecture_stats(alone.complete({})).flops, images)
        hourly[images] = plan(alone, 60, log, recipe_only=True).filled_epochs
    assert hourly[40_000] > hourly[0] > 0
