"""The final training: the best configuration once more on train + validation, its record,
the deadline's reservation for it, a stop during it, and the model card it leaves."""
from __future__ import annotations

import json
import signal
import time

import pytest

import stand_in
from cnnbench.training.data import synthetic_bundle
from cnnbench.deadline import Deadline, NotStarted
from cnnbench.forecast import EXPORT_SECONDS, trial_seconds
from cnnbench.throughput import ThroughputLog
from cnnbench.engines.base import Interrupted
from cnnbench.final import FINAL_SEED_OFFSET, run_final
from cnnbench.knobs import default_config
from cnnbench.model import architecture_stats
from cnnbench.space import parse_space
from cnnbench.trials import best_trial, read_record, read_records
from test_reliability import WAIT, sweep, wait_for

SPACE = parse_space({"seed": 5, "budget": {"trials": 3}, "search": {"sampler": "random", "pruner": "none"},
                     "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                "epochs": {"type": "fixed", "value": 2}}})


def searched(tmp_path, data):
    stand_in.SEEN.clear()
    job = stand_in.make_job(SPACE, tmp_path, data=data)
    stand_in.engines.get("optuna").run(job)
    return job, read_records(job.paths)


def test_final_trains_the_best_configuration_on_train_and_validation_with_a_fresh_seed(tmp_path):
    data = synthetic_bundle(300, n_val=60)
    job, records = searched(tmp_path, data)
    best = best_trial(records)
    assert best.val_accuracy == max(r.val_accuracy for r in records if r.state == "complete")
    outcome = run_final(job, best, 360)
    assert outcome.complete and outcome.record.trial == best.trial and outcome.record.config == best.config
    seed, sizes = stand_in.SEEN[-1]
    assert seed == SPACE.seed + FINAL_SEED_OFFSET and sizes == (360, 0)  # every training image, none held out
    saved = read_record(job.paths.final_record)
    assert saved.state == "complete" and saved.train_images == 360 and saved.seed == seed
    assert saved.val_accuracy is None and saved.epochs_run == 2  # nothing validated
    assert len(read_records(job.paths)) == len(records)  # not a trial: the budget is untouched


def test_a_finished_final_training_is_not_repeated_unless_the_best_changed(tmp_path):
    data = synthetic_bundle(300, n_val=60)
    job, records = searched(tmp_path, data)
    best = best_trial(records)
    run_final(job, best, 360)
    job.paths.final_model.write_text("a model")  # fake_train saves none; the check wants one
    calls = len(stand_in.SEEN)
    again = run_final(job, best, 360)
    assert again.complete and "already done" in again.message and len(stand_in.SEEN) == calls
    other = next(r for r in records if r.trial != best.trial and r.state == "complete")
    run_final(job, other, 360)
    assert len(stand_in.SEEN) == calls + 1 and read_record(job.paths.final_record).trial == other.trial


def test_a_signal_during_the_final_training_records_it_interrupted(tmp_path):
    def stopped(config, data, on_epoch, seed):
        raise Interrupted(signal.SIGTERM)

    data = synthetic_bundle(300, n_val=60)
    job, records = searched(tmp_path, data)
    job.runner.trainer = stopped
    with pytest.raises(KeyboardInterrupt):
        run_final(job, best_trial(records), 360)
    saved = read_record(job.paths.final_record)
    assert saved.state == "interrupted" and "SIGTERM" in saved.reason


def _log(tmp_path, rate, config):
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add(config["precision"], rate, architecture_stats(config).flops)
    return log


def test_the_deadline_keeps_time_for_the_final_training(tmp_path):
    config = {**default_config(), "epochs": 10, "precision": "float32"}
    rate = 1e11
    log = _log(tmp_path, rate, config)
    trial = trial_seconds(config, 45_000, 5_000, rate)
    final = trial_seconds(config, 50_000, 0, rate)
    export = Deadline(None, log).export_seconds(config, 10_000, "float32")
    enough_for_the_trial = trial + export + 0.5 * final
    no_final = Deadline(time.time() + enough_for_the_trial, log)
    assert no_final.admit(config, 45_000, 5_000, 10_000, "float32", [])[0] == config
    with_final = Deadline(time.time() + enough_for_the_trial, log, final_images=50_000)
    with pytest.raises(NotStarted, match="kept for the final training"):
        with_final.admit(config, 45_000, 5_000, 10_000, "float32", [])
    # a search that may shorten trials fits a shorter one and its own final training
    shorter, note = with_final.admit(config, 45_000, 5_000, 10_000, "float32", [2, 4, 6])
    assert shorter["epochs"] < 10 and "shortened" in note
    # once a best trial is known, its final training is kept even for a cheaper candidate
    with_final.note_complete(config, 0.9)
    assert with_final.best_final_seconds == pytest.approx(final)
    epoch = with_final.left() - EXPORT_SECONDS - final / 2  # fits, but not beside the final training
    assert with_final.epoch_would_overrun(epoch) and not with_final.epoch_would_overrun(epoch, keep_final=False)


@pytest.mark.slow
def test_sweep_trains_the_final_model_exports_it_and_a_stop_during_it_keeps_the_trial(tmp_path):
    """Real processes: the smoke space with the gated stand-in; the final training is held at
    its gate, stopped with SIGTERM (the trial's model is exported and the card says so), and
    the same command then does the final training and exports its model."""
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "hold-final").touch()  # the final training waits at its own gate, go-final
    proc, gate = sweep(tmp_path, "fin", "--trials", "1")
    (gate / "go").touch()  # the search runs through
    final_seed = 7 + FINAL_SEED_OFFSET  # smoke.yaml's seed
    wait_for(lambda: (gate / f"training-{final_seed}").exists(), "the final training to start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 143, out + err
    study = tmp_path / "results" / "fin"
    card = json.loads((study / "best" / "model_card.json").read_text())
    assert card["final"] is None and "interrupted" in card["final_note"] and card["validation"]["accuracy"]
    assert "final training was interrupted" in out
    assert json.loads((study / "final" / "record.json").read_text())["state"] == "interrupted"

    (gate / "go-final").touch()
    again, _ = sweep(tmp_path, "fin", "--trials", "1")
    out, err = again.communicate(timeout=WAIT)
    assert again.returncode == 0, out + err
    card = json.loads((study / "best" / "model_card.json").read_text())
    assert card["final"]["train_images"] == 1200 and card["final"]["from_trial"] == 0
    assert card["final"]["seed"] == final_seed and card["training"]["train_images"] == 1200
    assert card["validation"]["images"] == 240  # the search trial's own figures stay
    assert (gate / f"images-{final_seed}").read_text() == "1200 0"
    assert "## Final training" in (study / "leaderboard.md").read_text()
    assert len(list((study / "trials").glob("trial-*.json"))) == 1  # the final is no extra trial


def test_a_single_configuration_goes_straight_to_the_final_training_and_no_final_keeps_the_search(
        tmp_path, monkeypatch, jpeg_root):
    from conftest import SPACES, quick_sweep

    fixed = tmp_path / "fixed.yaml"  # the smoke space with every parameter fixed
    head = (SPACES / "smoke.yaml").read_text().split("params:")[0]
    fixed.write_text(head + "params:\n  stages: {type: fixed, value: 1}\n  epochs: {type: fixed, value: 1}\n")
    only = quick_sweep(fixed, tmp_path / "results", monkeypatch, jpeg_root, study="only")
    assert only.card.final["from_trial"] is None and only.card.validation is None
    assert only.card.chosen == "the space's only configuration"
    assert not only.records

    nofinal = quick_sweep(fixed, tmp_path / "results", monkeypatch, jpeg_root, study="nofinal", final=False,
                          trials=1)
    card = nofinal.card
    assert card.final is None and card.trial == 0 and card.training["train_images"] == 960


def test_the_plan_counts_trials_beside_the_final_training_at_a_stated_speed(tmp_path):
    from cnnbench.plan import plan

    space = parse_space({"params": {"epochs": {"type": "fixed", "value": 10}, "precision": {"type": "fixed",
                                                                                            "value": "float32"}}})
    config = space.complete({})
    log = _log(tmp_path, 1e11, config)
    trial = trial_seconds(config, 45_000, 5_000, 1e11)
    final = trial_seconds(config, 50_000, 0, 1e11)
    hour = plan(space, 60, log)
    assert hour.trial_seconds == pytest.approx(trial) and hour.final_seconds == pytest.approx(final)
    assert hour.trials == int((3600 - final - hour.export_seconds) // trial)
    assert f"{hour.trials} such trial(s) fit" in hour.text()
    off = parse_space({"final": False, "params": {"epochs": {"type": "fixed", "value": 10},
                                                  "precision": {"type": "fixed", "value": "float32"}}})
    assert plan(off, 60, log).final_seconds == 0 and plan(off, 60, log).trials > hour.trials
    assert plan(space, 60, ThroughputLog(tmp_path / "empty.json")) is None  # speed unknown here


def test_when_no_search_trial_fits_the_recipe_is_trained_on_all_images_in_the_epochs_that_fit(tmp_path):
    space = parse_space({"seed": 1, "budget": {"trials": 4}, "search": {"sampler": "random", "pruner": "none"},
                         "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                    "epochs": {"type": "int", "low": 4, "high": 10, "step": 2},
                                    "precision": {"type": "fixed", "value": "float32"}},
                         "start_with": [{"learning_rate": 1e-2, "epochs": 10}]})
    recipe = space.complete(space.start_with[0])
    log = _log(tmp_path, 1e8, recipe)  # a slow machine: no trial fits beside its own final training
    final_10 = trial_seconds(recipe, 360, 0, 1e8)
    final_4 = trial_seconds({**recipe, "epochs": 4}, 360, 0, 1e8)
    deadline = Deadline(None, log, final_images=360)
    export = max(2 * EXPORT_SECONDS, deadline.export_seconds(recipe, 60, "float32"))  # its 60 test images
    deadline.end = time.time() + final_4 + export + 1
    assert final_10 > deadline.left()  # the recipe's own length does not fit, 4 epochs do
    job = stand_in.make_job(space, tmp_path, data=synthetic_bundle(300, n_val=60), deadline=deadline,
                            data_sizes=(300, 60, 60))
    stand_in.engines.get("optuna").run(job)
    assert not [r for r in read_records(job.paths) if r.state == "complete"]  # no trial fitted beside a final
    outcome = run_final(job, None, 360, recipe=space.start_with[0])
    assert outcome.complete and outcome.record.config["epochs"] == 4 and outcome.record.trial == -1
    assert "start_with recipe" in outcome.source and "shortened from 10 to 4 epochs" in outcome.source


def test_the_centre_of_a_space_names_every_searched_parameter_that_applies():
    space = parse_space({"params": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "warmup": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.05},
        "epochs": {"type": "int", "low": 4, "high": 14, "step": 2},
        "optimizer": {"type": "choice", "choices": ["adam", "sgd", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}}}})
    centre = space.centre()
    assert centre["learning_rate"] == pytest.approx(1e-3) and centre["warmup"] == pytest.approx(0.2)
    assert centre["epochs"] == 8 and centre["optimizer"] == "sgd" and centre["momentum"] == pytest.approx(0.85)
    assert all(space.params[k].admits(v) is None for k, v in centre.items())
    other = parse_space({"params": {**{k: v.model_dump() for k, v in space.params.items()},
                                    "optimizer": {"type": "choice", "choices": ["adam", "adamw", "sgd"]}}})
    assert other.centre()["optimizer"] == "adamw" and "momentum" not in other.centre()  # its condition fails


def test_a_final_training_that_misses_its_margin_by_a_little_keeps_its_epochs(tmp_path):
    """An epoch less is a certain loss: a final whose 15%-margin forecast misses the time left
    by less than 10% keeps its epochs (a 5% margin); one that misses by more is shortened."""
    from cnnbench.forecast import FINAL_SAFETY, SAFETY

    config = {**default_config(), "epochs": 8, "precision": "float32", "tta": "off"}
    deadline = Deadline(None, _log(tmp_path, 1e11, config), final_images=50_000)
    full = deadline.final_seconds(config)
    export = max(2 * EXPORT_SECONDS, deadline.export_seconds(config, 0, "float32"))
    deadline.end = time.time() + export + full * (1 + FINAL_SAFETY / SAFETY) / 2  # between the two margins
    assert deadline.fit_final(config, [], 0) == (config, "")
    deadline.end = time.time() + export + full * FINAL_SAFETY / SAFETY * 0.95  # short of even the small one
    shortened, note = deadline.fit_final(config, [], 0)
    assert shortened["epochs"] == 7 and note == "; shortened from 8 to 7 epochs"
