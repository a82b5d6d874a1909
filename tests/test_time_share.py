"""search.time_share: a timed sweep's search gets its share of the timeout, then the final
training of its best configuration gets as many epochs as the rest holds.

Issue 15's lesson: the recipe alone for an hour beat an hour that searched for 49 minutes
and trained its winner 8 epochs. Everything here is arithmetic at a stated throughput (a
ThroughputLog with one sample) or a stand-in trainer; each deadline leaves wide slack, and
no test waits on a clock.
"""
from __future__ import annotations

import time

import pytest

import stand_in
from cnnbench.deadline import DEADLINE_ENV, SEARCH_END_ENV, Deadline, NotStarted
from cnnbench.forecast import FINAL_SAFETY, SAFETY, forward_images, trial_seconds
from cnnbench.throughput import ThroughputLog
from cnnbench.engines.base import stop_rule_reason
from cnnbench.final import run_final
from cnnbench.model import architecture_stats
from cnnbench.plan import plan
from cnnbench.space import SpaceError, parse_space
from cnnbench.trials import State, TrialRecord, write_record
from cnnbench.training.data import synthetic_bundle

RUNGS = [{"train_images": 100, "epochs": 1}, {"train_images": 200, "epochs": 2}]



def _space(share=0.4, rungs=RUNGS, **search):
    return parse_space({"seed": 3, "budget": {"trials": 6},
                        "search": {"sampler": "random", "pruner": "none", "rungs": rungs, "time_share": share,
                                   **search},
                        "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                                   "epochs": {"type": "fixed", "value": 5},
                                   "warmup": {"type": "fixed", "value": 0.5},  # a final's epoch 2 in it: re-sizable
                                   "precision": {"type": "fixed", "value": "float32"}}})


def _rate(config, images: int, seconds: float) -> float:
    """The training FLOPs/s stated for a test: an epoch of ``images`` takes about ``seconds``."""
    return architecture_stats(config).flops * 3 * images / seconds


def _log(tmp_path, config, rate: float) -> ThroughputLog:
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add("float32", rate, architecture_stats(config).flops)
    return log


def test_time_share_is_a_share_and_a_bad_one_is_one_line_naming_it():
    assert _space(0.45).search.time_share == 0.45 and _space(None).search.time_share is None
    for bad in (0, 1, 1.5, -0.2, "half"):
        with pytest.raises(SpaceError, match=r"^x\.yaml: search\.time_share"):
            parse_space({"search": {"time_share": bad}, "params": {"epochs": {"type": "fixed", "value": 2}}},
                        "x.yaml")


def test_a_trial_must_finish_within_the_search_share_and_keeps_no_time_for_the_final(tmp_path):
    config = _space().complete({"learning_rate": 0.01})
    rate = _rate(config, 45_000, 60.0)
    seconds = trial_seconds(config, 45_000, 5_000, rate)
    deadline = Deadline(time.time() + 100 * seconds, _log(tmp_path, config, rate), final_images=50_000)
    deadline.best_final_seconds = 99.5 * seconds  # without a search share this leaves no room
    with pytest.raises(NotStarted):
        deadline.admit(config, 45_000, 5_000, 10_000, "float32", [])
    deadline.search_end = time.time() + 1.5 * seconds  # the final's time is what follows the search's end
    assert deadline.admit(config, 45_000, 5_000, 10_000, "float32", []) == (config, "")
    deadline.search_end = time.time() + 0.5 * seconds
    with pytest.raises(NotStarted, match=r"before the search's share of the time ends \(search.time_share\)"):
        deadline.admit(config, 45_000, 5_000, 10_000, "float32", [])


def test_an_epoch_that_would_end_after_the_search_share_stops_a_search_trial_not_the_final(tmp_path):
    deadline = Deadline(time.time() + 3600, ThroughputLog(tmp_path / "t.json"), search_end=time.time() + 600)
    assert not deadline.epoch_would_overrun(60.0)
    assert deadline.epoch_would_overrun(1200.0)  # a search trial's next epoch would end past the share
    assert not deadline.epoch_would_overrun(1200.0, keep_final=False)  # the final runs to the deadline
    assert not deadline.search_over()
    assert Deadline(time.time() + 3600, search_end=time.time() - 1).search_over()
    assert not Deadline(time.time() + 3600).search_over()


def test_workers_are_handed_the_deadline_and_the_search_end_in_their_own_environment():
    assert Deadline(None).worker_environment() == {}
    assert Deadline(2e9).worker_environment() == {DEADLINE_ENV: "2000000000.0"}
    assert Deadline(2e9, search_end=1.9e9).worker_environment() == {DEADLINE_ENV: "2000000000.0",
                                                                   SEARCH_END_ENV: "1900000000.0"}


def test_workers_inherit_the_search_end_with_the_deadline(monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, "2000000000.0")
    monkeypatch.setenv(SEARCH_END_ENV, "1999999000.5")
    inherited = Deadline.from_minutes(None)
    assert inherited.end == 2_000_000_000.0 and inherited.search_end == 1_999_999_000.5
    monkeypatch.delenv(SEARCH_END_ENV)
    assert Deadline.from_minutes(None).search_end is None


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_the_search_ends_when_its_share_is_over_and_says_why(tmp_path, engine):
    # no rungs (KerasTuner refuses them): time_share applies to any timed search
    space = _space(0.5, rungs=[])
    over = Deadline(time.time() + 3600, ThroughputLog(tmp_path / "empty.json"), search_end=time.time() - 1)
    job = stand_in.make_job(space, tmp_path / "over", engine=engine, deadline=over)
    stand_in.engines.get(engine).run(job)
    assert stand_in.read_records(job.paths) == [] and job.ended_by.startswith("search.time_share: the search's 0.5")
    open_share = Deadline(time.time() + 3600, ThroughputLog(tmp_path / "empty.json"), search_end=time.time() + 3000)
    job = stand_in.make_job(space, tmp_path / "open", engine=engine, deadline=open_share, trials=3)
    stand_in.engines.get(engine).run(job)
    assert len(stand_in.read_records(job.paths)) == 3 and stop_rule_reason(job) is None


def _rung_record(trial, lr, acc):
    return TrialRecord(trial=trial, engine="optuna", values={"learning_rate": lr}, state=State.COMPLETE,
                       val_accuracy=acc, rung=1, train_images=200)


def _final_job(tmp_path, epochs_that_fit: int, monkeypatch=None):
    """A job whose deadline holds ``epochs_that_fit`` epochs of the final training (at
    FINAL_SAFETY's margin), half an epoch clear either way; with ``monkeypatch``, its epochs
    take what was forecast (its re-size after its second epoch keeps that many)."""
    space = _space()
    config = {**space.complete({"learning_rate": 0.01}), "train_images": 0}
    deadline = Deadline(None, _log(tmp_path, config, _rate(config, 360, 30.0)), final_images=360)
    export = max(90.0, deadline.export_seconds(config, 60, "float32"))

    def at(epochs):
        return deadline.final_seconds({**config, "epochs": epochs}) * FINAL_SAFETY / SAFETY

    deadline.end = time.time() + export + (at(epochs_that_fit) + at(epochs_that_fit + 1)) / 2
    if monkeypatch is not None:
        stand_in.final_epochs_take(monkeypatch, deadline, config, epochs_that_fit - 2)
    job = stand_in.make_job(space, tmp_path, data=synthetic_bundle(300, n_val=60), deadline=deadline,
                            data_sizes=(300, 60, 60), fill_final=True)
    return job, config


def test_the_winner_of_the_rungs_is_trained_for_as_many_epochs_as_the_rest_holds(tmp_path, monkeypatch):
    job, config = _final_job(tmp_path, 9, monkeypatch)  # the space's own 5 epochs would leave time unused
    outcome = run_final(job, _rung_record(4, 0.01, 0.7), 360)
    assert outcome.complete and outcome.record.config["epochs"] == 9 and outcome.record.epochs_run == 9
    assert outcome.record.trial == 4 and outcome.record.config["train_images"] == 0
    assert outcome.source.startswith("trial 4; 9 epochs, as many as the")


def _earlier_final(job, config: dict, epochs: int, state: State) -> None:
    """The final record an earlier run of the command left: trial 4's, of ``epochs`` epochs."""
    earlier = TrialRecord(trial=4, engine="optuna", values={"learning_rate": 0.01},
                          config={**config, "epochs": epochs}, state=state)
    job.paths.final_record.parent.mkdir(parents=True, exist_ok=True)
    write_record(job.paths, earlier, job.paths.final_record)


def test_a_stopped_final_after_a_search_goes_on_with_the_epochs_it_started(tmp_path, monkeypatch):
    job, config = _final_job(tmp_path, 9, monkeypatch)
    _earlier_final(job, config, 7, State.INTERRUPTED)
    outcome = run_final(job, _rung_record(4, 0.01, 0.7), 360)
    assert outcome.complete and outcome.record.config["epochs"] == 7
    assert "7 epochs, as an earlier run of this command sized it" in outcome.source
    other = run_final(job, _rung_record(5, 0.02, 0.8), 360)  # another winner: sized anew
    assert other.record.config["epochs"] == 9


def test_a_final_the_deadline_cut_short_is_sized_anew(tmp_path, monkeypatch):
    """Its checkpoint was deleted when it stopped: keeping its old schedule would only start
    that schedule over, perhaps no longer fitting."""
    job, config = _final_job(tmp_path, 9, monkeypatch)
    _earlier_final(job, config, 12, State.PRUNED)
    outcome = run_final(job, _rung_record(4, 0.01, 0.7), 360)
    assert outcome.complete and outcome.record.config["epochs"] == 9 and "earlier run" not in outcome.source


def test_a_one_configuration_space_with_a_share_is_not_called_the_recipe_alone(tmp_path, monkeypatch):
    job, config = _final_job(tmp_path, 9, monkeypatch)
    outcome = run_final(job, None, 360)  # no search trial: the space's only configuration
    # (its start was sized at the wider margin of a network not yet timed here, then re-sized)
    assert outcome.complete and outcome.source.split(", re-sized")[0] == "the space's only configuration"


def test_the_plan_gives_the_search_its_share_and_the_final_the_rest(tmp_path):
    space = _space(0.45)
    config = space.complete({})
    rate = _rate(config, 50_000, 60.0)  # a minute an epoch of the final training
    log = _log(tmp_path, config, rate)
    hour = plan(space, 60, log)
    costs = [trial_seconds({**config, **rung}, 45_000, 5_000, rate) for rung in RUNGS]
    n = hour.trials
    spent = costs[0] * n + costs[1] * (n // 3)
    assert n >= 3 and spent <= 0.45 * 3600 < spent + costs[0] + costs[1]  # one more configuration would not fit
    assert [runs for _, _, runs in hour.rungs] == [n, n // 3]
    final = Deadline(time.time() + 0.55 * 3600, log, final_images=50_000)
    assert hour.filled_epochs == final.fill_final({**config, "train_images": 0}, 10_000, FINAL_SAFETY)[0]["epochs"]
    assert hour.filled_epochs > 5  # more than the space's own epochs: the rest of the hour is long
    assert hour.time_share == 0.45
    text = hour.text()
    assert "search.time_share 0.45: the search ends by minute 27.0" in text
    assert f"final training on all training images: {hour.filled_epochs} epochs" in text
    total = float(text.split("total: ")[1].split(" min")[0])
    assert 55 <= total <= 60  # an hour is an hour
    without = plan(_space(None), 60, log)  # no share: the final keeps the space's own 5 epochs
    assert without.time_share is None and without.filled_epochs == 0 and without.trials > n


def test_after_a_promotion_does_not_fit_new_cheap_configurations_still_run(tmp_path):
    """Near the search's end a second-rung run may not fit where a first-rung one does.
    Before, the engine queued the same promotion again at each of its five tries and the
    search ended with time left; now it samples new configurations after a refusal."""
    import numpy as np
    from test_rungs import data_aware_train

    space = _space(0.5)
    config = space.complete({"learning_rate": 0.01})
    rate = architecture_stats(config).flops * forward_images({**config, **RUNGS[0]}, 1000, 100) / 30.0
    first, second = (trial_seconds({**config, **rung}, 1000, 100, rate) for rung in RUNGS)
    assert second > first + 30  # the stand-in takes no time: between the two, a first-rung run always fits
    deadline = Deadline(time.time() + 3600, _log(tmp_path, config, rate), search_end=time.time() + first + 15)
    job = stand_in.make_job(space, tmp_path, trials=6, deadline=deadline, data_sizes=(1000, 100, 100),
                            trainer=data_aware_train)
    stand_in.engines.get("optuna").run(job)
    records = stand_in.read_records(job.paths)
    assert len(records) == 6 and {r.rung for r in records} == {0}
    assert len({tuple(np.round(list(r.values.values()), 12)) for r in records}) == 6  # six configurations


def test_a_final_training_is_forecast_from_trainings_of_its_size_when_there_are_any(tmp_path):
    """First-rung runs (5,000 images) train slower per image than a 50,000-image final; the
    f80cdb8 hour sized its final from them and left 3 minutes unused."""
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add("float32", 6e11, 3e8, images=5_000)
    log.add("float32", 6.2e11, 3e8, images=15_000)
    assert log.rate("float32", 3e8, images=50_000) == pytest.approx(6.1e11)  # none as large: all of them
    log.add("float32", 8e11, 3e8, images=50_000)
    assert log.rate("float32", 3e8, images=50_000) == pytest.approx(8e11)
    assert log.rate("float32", 3e8) == pytest.approx(6.2e11)  # a trial's forecast: every similar one
    config = {**_space().complete({}), "train_images": 0}
    log = ThroughputLog(tmp_path / "network.json")
    deadline = Deadline(None, log, final_images=50_000)
    flops = architecture_stats(config).flops
    log.add("float32", 1e9, flops, images=5_000)
    log.add("float32", 2e9, flops, images=50_000)
    assert deadline.final_seconds(config) == pytest.approx(trial_seconds(config, 50_000, 0, 2e9))
    old = tmp_path / "old.json"  # samples written before the image count was kept
    old.write_text('{"version": 2, "%s": [[%d, 1000000000]]}' % (__import__("cnnbench.throughput").throughput
                                                                   .machine_key("float32"), flops))
    assert ThroughputLog(old).rate("float32", flops, images=50_000) == 1e9


def test_a_forecast_takes_trainings_of_the_same_network_first(tmp_path):
    """Within the similar-size window a CPU is still more efficient the larger the network:
    the 88c5cc0 Zen 3 hour sized its 164 MFLOP final from the window's median (wider
    finals, 125-130 GFLOP/s) where it trained at 117, and lost an epoch to it."""
    log = ThroughputLog(tmp_path / "throughput.json")
    for flops, rate, images in [(236e6, 125e9, 30_000), (303e6, 133e9, 30_000), (303e6, 130e9, 50_000),
                                (236e6, 131e9, 50_000), (164e6, 116e9, 30_000), (164e6, 105e9, 5_000),
                                (108e6, 100e9, 5_000)]:
        log.add("float32", rate, flops, images=images)
    assert log.rate("float32", 164e6, images=50_000) == pytest.approx(116e9)  # its own rung-1 run
    assert log.rate("float32", 170e6) == pytest.approx(110.5e9)  # a trial's: every one of its size
    assert log.rate("float32", 200e6, images=50_000) == pytest.approx(130e9)  # none of its size: the window's
    assert log.rate("float32", 108e6, images=50_000) == pytest.approx(116e9)  # the image count comes first
