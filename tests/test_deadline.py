"""An hour is an hour: forecasts from FLOPs and measured speed, admission before a trial,
shortening when the space searches epochs, and the forecast that `cnnbench check` prints."""
from __future__ import annotations

import time

import pytest

from cnnbench.deadline import Deadline, NotStarted
from cnnbench.forecast import EXPORT_SECONDS, SAFETY, SETUP_SECONDS, trial_seconds
from cnnbench.throughput import ThroughputLog
from cnnbench.knobs import default_config
from cnnbench.model import architecture_stats
from cnnbench.reports.report import forecast_line
from cnnbench.space import parse_space

CONFIG = {**default_config(), "epochs": 10, "precision": "float32"}
FLOPS = architecture_stats(CONFIG).flops


def log_at(tmp_path, rate: float, flops: float = FLOPS) -> ThroughputLog:
    log = ThroughputLog(tmp_path / "throughput.json")
    log.add("float32", rate, flops)
    return log


def test_forecast_counts_training_and_validation_images():
    rate = 1e11
    seconds = trial_seconds(CONFIG, 45_000, 5_000, rate)
    expected = SAFETY * (SETUP_SECONDS + 10 * (45_000 * 3 + 5_000) * FLOPS / rate)
    assert seconds == pytest.approx(expected)
    assert trial_seconds({**CONFIG, "tta": True}, 45_000, 5_000, rate) > seconds  # mirror doubles validation
    last_only = trial_seconds({**CONFIG, "validate": "last_epoch"}, 45_000, 5_000, rate)
    assert last_only == pytest.approx(SAFETY * (SETUP_SECONDS + (10 * 45_000 * 3 + 5_000) * FLOPS / rate))


def test_log_keeps_recent_samples_per_machine_precision_and_size(tmp_path):
    log = ThroughputLog(tmp_path / "t.json")
    assert log.rate("float32", 1e8) is None
    for rate in (1e9, 3e9, 2e9):
        log.add("float32", rate, 1e8)
    log.add("float32", 50e9, 1e9)  # a network ten times larger uses the CPU far better
    log.add("mixed_bfloat16", 9e9, 1e8)
    assert log.rate("float32", 1.5e8) == 2e9 and log.rate("float32", 8e8) == 50e9
    assert log.rate("float32", 4e9) is None  # nothing of a similar size: no forecast
    assert log.rate("mixed_bfloat16", 1e8) == 9e9


def test_admit_passes_what_fits_shortens_what_may_and_refuses_the_rest(tmp_path):
    rate = 1e11
    need = trial_seconds(CONFIG, 45_000, 5_000, rate)
    roomy = Deadline(time.time() + need + EXPORT_SECONDS + 600, log_at(tmp_path, rate))
    assert roomy.admit(CONFIG, 45_000, 5_000, 10_000, "float32", []) == (CONFIG, "")

    tight = Deadline(time.time() + need * 0.6 + EXPORT_SECONDS + 60, log_at(tmp_path, rate))
    shorter, note = tight.admit(CONFIG, 45_000, 5_000, 10_000, "float32", [2, 4, 6, 8, 10])
    assert shorter["epochs"] == 6 and "shortened from 10 to 6 epochs" in note
    with pytest.raises(NotStarted, match="not started: forecast"):
        tight.admit(CONFIG, 45_000, 5_000, 10_000, "float32", [])  # epochs fixed: not started


def test_a_resumed_trial_is_priced_at_the_epochs_left_and_never_shortened(tmp_path):
    rate = 1e11
    need = trial_seconds(CONFIG, 45_000, 5_000, rate)
    tight = Deadline(time.time() + need * 0.6 + EXPORT_SECONDS + 60, log_at(tmp_path, rate))
    # half of it done: the other half fits, at its own 10 epochs (its checkpoint's schedule)
    assert tight.admit(CONFIG, 45_000, 5_000, 10_000, "float32", [2, 4, 6, 8, 10], epochs_done=5) == (CONFIG, "")
    # 2 of 10 done: 8 left do not fit, and a shorter schedule could not go on from the checkpoint
    with pytest.raises(NotStarted, match=f"forecast {need * 0.8 / 60:.1f} min"):
        tight.admit(CONFIG, 45_000, 5_000, 10_000, "float32", [2, 4, 6, 8, 10], epochs_done=2)


def test_no_deadline_or_no_speed_known_admits_everything(tmp_path):
    assert Deadline(None, log_at(tmp_path, 1.0)).admit(CONFIG, 45_000, 5_000, 10_000, "float32", []) == (CONFIG, "")
    unknown = Deadline(time.time() + 1, ThroughputLog(tmp_path / "none.json"))
    assert unknown.admit(CONFIG, 45_000, 5_000, 10_000, "float32", [])[0] is CONFIG


def test_a_running_trial_stops_when_another_epoch_would_overrun():
    soon = Deadline(time.time() + EXPORT_SECONDS + 30)
    assert soon.epoch_would_overrun(60.0) and not soon.epoch_would_overrun(5.0)
    assert not Deadline(None).epoch_would_overrun(1e9)


def test_workers_inherit_the_parents_deadline(monkeypatch):
    monkeypatch.setenv("CNNBENCH_DEADLINE", "12345.5")
    assert Deadline.from_minutes(60).end == 12345.5
    monkeypatch.delenv("CNNBENCH_DEADLINE")
    started = time.time()
    assert Deadline.from_minutes(2, started).end == pytest.approx(started + 120)
    assert Deadline.from_minutes(None).end is None


def test_check_prints_the_forecast_range_once_a_speed_is_known(tmp_path):
    space = parse_space({"data": {"train_subset": 10_000}, "params": {
        "epochs": {"type": "int", "low": 2, "high": 8}, "base_filters": {"type": "choice", "choices": [16, 64]},
        "precision": {"type": "fixed", "value": "float32"}}})
    assert "unknown on this machine" in forecast_line(space, ThroughputLog(tmp_path / "none.json"))
    log = log_at(tmp_path, 1e11, architecture_stats(space.complete({"base_filters": 16})).flops)
    log.add("float32", 1e11, architecture_stats(space.complete({"base_filters": 64})).flops)
    line = forecast_line(space, log)
    low = trial_seconds({**space.complete({"base_filters": 16}), "epochs": 2}, 9_000, 1_000, 1e11) / 60
    high = trial_seconds({**space.complete({"base_filters": 64}), "epochs": 8}, 9_000, 1_000, 1e11) / 60
    assert f"{low:.1f} .. {high:.1f} min" in line and "100-100 GFLOP/s" in line
