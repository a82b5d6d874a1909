"""Resume instead of restart: a trial stopped mid-way (a signal, its trial process killed)
runs again with its first attempt's seed and goes on from its last epoch's checkpoint,
under both engines; its record says so and its learning curve is whole."""
from __future__ import annotations

import signal

import pytest
import stand_in
from stand_in import make_job, resumable_train

from cnnbench import engines
from cnnbench.engines.base import Interrupted
from cnnbench.space import parse_space
from cnnbench.trials import StudyPaths, read_records

SPACE = {"seed": 11, "budget": {"trials": 2}, "search": {"sampler": "random", "pruner": "none"},
         "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                    "epochs": {"type": "fixed", "value": 4}}}


def stopped_after(epoch_to_stop: int):
    """resumable_train, but SIGTERM arrives right after epoch ``epoch_to_stop`` of its first call."""
    calls = []

    def trainer(config, data, on_epoch, seed, checkpoint=None):
        calls.append(seed)

        def hear(epoch, logs):
            on_epoch(epoch, logs)
            if len(calls) == 1 and epoch == epoch_to_stop:
                raise Interrupted(signal.SIGTERM)
        return resumable_train(config, data, hear, seed, checkpoint)
    return trainer


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_an_interrupted_trial_goes_on_from_its_last_epoch_when_the_study_runs_again(tmp_path, engine):
    space = parse_space(SPACE)
    stand_in.TRAINED_EPOCHS.clear()
    first = make_job(space, tmp_path, "s", engine=engine, trainer=stopped_after(2))
    with pytest.raises(KeyboardInterrupt):
        engines.get(engine).run(first)
    [cut] = read_records(first.paths)
    assert cut.state == "interrupted" and cut.epochs_run == 2
    assert len(list(first.paths.root.glob("checkpoints/*"))) == 1  # kept for the next run

    again = make_job(space, tmp_path, "s", engine=engine, trainer=resumable_train)
    engines.get(engine).run(again)
    records = read_records(again.paths)
    resumed = next(r for r in records if r.values == cut.values and r.state == "complete")
    assert resumed.seed == cut.seed and resumed.attempt == 2
    assert resumed.resumed_from_epoch == [2] and "resumed from epoch 2" in resumed.note
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]  # the curve is whole
    assert resumed.lost_seconds is not None and resumed.lost_seconds >= 0
    # no epoch of that training was trained twice
    assert [e for s, e in stand_in.TRAINED_EPOCHS if s == cut.seed] == [1, 2, 3, 4]
    # the same figures as an uninterrupted training of that configuration and seed
    fresh = make_job(space, tmp_path, "fresh", engine=engine, trainer=resumable_train)
    engines.get(engine).run(fresh)
    twin = next(r for r in read_records(fresh.paths) if r.seed == cut.seed)
    assert [h["val_accuracy"] for h in twin.history] == [h["val_accuracy"] for h in resumed.history]
    assert not list(again.paths.root.glob("checkpoints/*"))  # deleted once the trial ended
    counted = [r for r in records if r.state == "complete"]
    assert len(counted) == 2  # the budget counts the resumed training once


def test_a_trial_whose_process_is_killed_is_tried_again_from_its_checkpoint(tmp_path, monkeypatch):
    """The trial's child process dies (SIGKILL: the out-of-memory killer) after epoch 2: the
    sweep goes on, and the retry, in a new child, starts at epoch 3."""
    from cnnbench.training.isolation import TrialRunner

    monkeypatch.setenv("CNNBENCH_STAND_IN_DIR", str(tmp_path))
    monkeypatch.setenv("CNNBENCH_STAND_IN_DIE_AT", "2")
    (tmp_path / "die").touch()
    space = parse_space({**SPACE, "budget": {"trials": 1}})
    job = make_job(space, tmp_path, "s", trainer=resumable_train)
    job.runner = TrialRunner(None, "stand_in:resumable_train")
    try:
        engines.get("optuna").run(job)
    finally:
        job.runner.close()
    died, retried = sorted(read_records(job.paths), key=lambda r: r.trial)
    assert died.state == "failed" and "SIGKILL" in died.reason and died.reason.startswith("worker lost")
    assert retried.state == "complete" and retried.attempt == 2 and retried.seed == died.seed
    assert retried.resumed_from_epoch == [2] and [h["epoch"] for h in retried.history] == [1, 2, 3, 4]
    assert not list(job.paths.root.glob("checkpoints/*"))


@pytest.mark.slow
@pytest.mark.parametrize("engine, stop", [("optuna", "SIGKILL"), ("optuna", "SIGTERM"), ("kerastuner", "SIGKILL"),
                                          ("kerastuner", "SIGTERM")])
def test_a_real_training_stopped_mid_way_resumes_and_ends_like_an_uninterrupted_one(tmp_path, jpeg_root, engine,
                                                                                      stop):
    """kill -9 of a sweep (its trial child dies with it), or SIGTERM (a scheduler's stop),
    while the real trainer trains, in deterministic mode, under either engine: the next run
    of the same command goes on from the checkpoint and its figures are those of a study
    that was never interrupted."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, SPACES, run_cli
    from cnnbench.space import load_space

    smoke = load_space(SPACES / "smoke.yaml")
    space = tmp_path / "tiny.yaml"  # the smoke data, one searched value, four epochs, bit for bit
    space.write_text(json.dumps({
        "seed": 3, "deterministic": True, "budget": {"trials": 1, "timeout_minutes": 30},
        "search": {"sampler": "random", "pruner": "none"},
        "data": {"dataset": "cifar10", "validation_fraction": 0.2, "train_subset": smoke.data.train_subset,
                 "test_subset": 200},
        "params": {"stages": {"type": "fixed", "value": 1}, "base_filters": {"type": "fixed", "value": 8},
                   "optimizer": {"type": "fixed", "value": "adam"}, "batch_size": {"type": "fixed", "value": 64},
                   "learning_rate": {"type": "float", "low": 2e-3, "high": 4e-3},
                   "precision": {"type": "fixed", "value": "float32"}, "epochs": {"type": "fixed", "value": 4}}}))
    env = {"CNNBENCH_CIFAR10": str(jpeg_root)}
    args = ["sweep", "--space", str(space), "--results", str(tmp_path / "results"), "--no-final", "--engine", engine]
    proc = subprocess.Popen([sys.executable, "-m", "cnnbench.cli", *args, "--study", "cut"], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "results" / "cut" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*.npz")):  # an epoch is done and kept: now the kill
        assert proc.poll() is None and time.monotonic() < deadline, "the trial never wrote a checkpoint"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, stop))
    assert proc.wait(timeout=120) == (143 if stop == "SIGTERM" else -signal.SIGKILL)
    again = run_cli(*args, "--study", "cut", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    whole = run_cli(*args, "--study", "whole", "--no-cache", env=env)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    cut = sorted(read_records(StudyPaths(tmp_path / "results" / "cut")), key=lambda r: r.trial)
    [reference] = read_records(StudyPaths(tmp_path / "results" / "whole"))
    [resumed] = [r for r in cut if r.state == "complete"]
    assert resumed.seed == reference.seed and resumed.values == reference.values
    if stop == "SIGKILL":  # the lost attempt's record stays, failed
        [lost] = [r for r in cut if r is not resumed]
        assert lost.state == "failed" and lost.reason.startswith("worker lost") and lost.seed == resumed.seed
    else:  # stopped cleanly: an interrupted record (Optuna; KerasTuner reruns the trial under its own id)
        assert all(r.state == "interrupted" for r in cut if r is not resumed)
    assert len(resumed.resumed_from_epoch) == 1 and 1 <= resumed.resumed_from_epoch[0] <= 4
    figures = [[(h["epoch"], h["loss"], h["val_accuracy"]) for h in r.history] for r in (resumed, reference)]
    assert figures[0] == figures[1] and len(figures[0]) == 4


def test_a_state_is_written_as_its_plain_string_and_read_back_equal_to_its_member(tmp_path):
    import json as json_module

    from cnnbench.trials import State, TrialRecord, read_record, write_record

    paths = StudyPaths(tmp_path / "s")
    paths.trials.mkdir(parents=True)
    write_record(paths, TrialRecord(trial=0, engine="optuna", values={}, state=State.INTERRUPTED))
    raw = json_module.loads(paths.trial_record(0).read_text())
    assert raw["state"] == "interrupted" and type(raw["state"]) is str  # records stay plain JSON
    back = read_record(paths.trial_record(0))
    assert back.state == State.INTERRUPTED and State(back.state) is State.INTERRUPTED


@pytest.mark.parametrize("attempt, kept", [(1, True), (2, False)])
def test_a_lost_trial_keeps_its_checkpoint_only_while_it_will_be_retried(tmp_path, attempt, kept):
    import socket
    import subprocess
    import sys
    import time

    from cnnbench import trials
    from cnnbench.engines.recovery import fail_lost

    space = parse_space({**SPACE, "search": {**SPACE["search"], "retries": 1}})
    job = make_job(space, tmp_path, "s")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that has ended: its trial is lost
    record = trials.TrialRecord(trial=0, engine="optuna", values={"learning_rate": 0.002}, config={"epochs": 4},
                                attempt=attempt, seed=11, data_fingerprint="d", trainer_version="v",
                                host=socket.gethostname(), pid=gone.pid, started_at=time.time())
    trials.write_record(job.paths, record)
    saved = job.paths.checkpoint(trials.checkpoint_key(record.config, 11, "d", "v"))
    saved.write_bytes(b"a checkpoint")
    [marked] = fail_lost(job, [record])
    assert marked.state == "failed" and saved.exists() == kept


def test_an_interruption_does_not_use_up_a_retry_but_each_loss_does():
    from cnnbench.engines.recovery import LOST, losses_before, wants_retry
    from cnnbench.trials import TrialRecord

    def attempt(n: int, state: str, reason: str, losses: int | None) -> TrialRecord:
        return TrialRecord(trial=n, engine="optuna", values={}, state=state, reason=reason, attempt=n, losses=losses)

    stopped = attempt(1, "interrupted", "interrupted by SIGINT", 0)
    then_lost = attempt(2, "failed", f"{LOST}: no heartbeat for 200 s", losses_before(stopped))
    assert then_lost.losses == 0 and wants_retry(then_lost, retries=1)  # one loss of one allowed
    lost_again = attempt(3, "failed", f"{LOST}: its process 7 is gone", losses_before(then_lost))
    assert lost_again.losses == 1 and not wants_retry(lost_again, retries=1)
    assert wants_retry(attempt(1, "interrupted", "interrupted by SIGTERM", 5), retries=0)  # a stop, always
    assert not wants_retry(attempt(1, "failed", "diverged", 0), retries=3)  # the configuration's own fault
    # a record from before the field: its attempts before it count as losses, as they used to
    assert wants_retry(attempt(1, "failed", f"{LOST}: x", None), 1)
    assert not wants_retry(attempt(2, "failed", f"{LOST}: x", None), 1)
