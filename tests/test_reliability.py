"""Signals, kills and dead workers, sent to real processes: nothing finished is lost,
nothing is trained twice by accident, the leaderboard always matches the records.

The sweeps here train with a stand-in (``stand_in.gated_train``) in real child processes;
a test waits for files the stand-in writes, never for a number of seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cnnbench.engines.recovery import process_gone
from conftest import ROOT, SPACES
from stand_in import stand_in_model_env

TESTS = Path(__file__).resolve().parent
WAIT = 240  # generous bound for a file to appear; the tests never wait a fixed time


def sweep(tmp_path, study, *extra, ignore_sigint=False, env=None, gate_name="gate", new_session=False):
    """Start `cnnbench sweep` on the smoke space with the gated stand-in trainer (its gate
    folder ``tmp_path / gate_name``); ``new_session``: in a process group of its own, which
    a test can stop and continue whole (the sweep and its trial child)."""
    gate = tmp_path / gate_name
    gate.mkdir(exist_ok=True)
    full_env = {**os.environ, "CNNBENCH_STAND_IN_DIR": str(gate), **stand_in_model_env(),
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "CNNBENCH_CIFAR10": str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"), **(env or {})}
    args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", str(SPACES / "smoke.yaml"), "--study", study,
            "--results", str(tmp_path / "results"), "--trainer", "stand_in:gated_train", *extra]
    # A process started from a script or in the background gets SIGINT ignored: cnnbench
    # must install its own handler all the same.
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pre, start_new_session=new_session), gate


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def records(tmp_path, study):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / study / "trials").glob("trial-*.json"))]


def running_trial_started(gate: Path, n: int = 1):
    return lambda: len(list(gate.glob("training-*"))) >= n


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_stops_the_sweep_gracefully(tmp_path, signum, code):
    proc, gate = sweep(tmp_path, "stopped", "--trials", "4", ignore_sigint=signum == signal.SIGINT)
    wait_for(running_trial_started(gate), "the first trial to start")
    (gate / "go-7").touch()  # let trial 0 (smoke.yaml's seed + 0) finish ...
    wait_for(lambda: sum(r["state"] == "complete" for r in records(tmp_path, "stopped")) >= 1, "a finished trial")
    wait_for(lambda: (gate / "training-8").exists(), "the next trial to start")  # ... and hold the next one
    wait_for(lambda: any(r["state"] == "running" for r in records(tmp_path, "stopped")), "a running trial")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == code, out + err
    assert "Traceback" not in err
    states = {r["trial"]: r["state"] for r in records(tmp_path, "stopped")}
    assert "interrupted" in states.values() and "running" not in states.values()
    board = pd.read_csv(tmp_path / "results" / "stopped" / "leaderboard.csv")
    assert dict(zip(board["trial"], board["state"])) == states  # the board matches the records
    assert (tmp_path / "results" / "stopped" / "best" / "model.keras").exists()
    assert f"stopped by {signal.Signals(signum).name}" in out
    if signum != signal.SIGTERM:
        return  # what follows a stop is the same for every signal: checked once

    (gate / "go").touch()  # the same command again continues: the interrupted trial did not count
    again, _ = sweep(tmp_path, "stopped", "--trials", "4")
    out, err = again.communicate(timeout=WAIT)
    assert again.returncode == 0, out + err
    final = records(tmp_path, "stopped")
    assert sum(r["state"] == "complete" for r in final) == 4
    assert sum(r["state"] == "interrupted" for r in final) == 1


KILL_AT_FIRST_RECORD = """
import os, signal, sys
from cnnbench import trials
real = trials.write_record
def write_record(paths, record):  # the engine has asked (Optuna) or created (KerasTuner) trial 1
    if record.trial == 1 and record.state == "running":
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before cnnbench's first record
    return real(paths, record)
trials.write_record = write_record
from cnnbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_a_sweep_killed_between_the_engines_new_trial_and_its_record_keeps_the_budget(tmp_path, engine):
    """kill -9 of a real sweep at that instant (Optuna's ask, KerasTuner's create_trial,
    then death before the record): the next run of the same command finds the trial the
    engine holds as running without a record, and ends with exactly the budget, nothing running."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "go").touch()
    (gate / "go-final").touch()
    env = {**os.environ, "CNNBENCH_STAND_IN_DIR": str(gate), **stand_in_model_env(),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "CNNBENCH_CIFAR10": str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg")}
    argv = ["sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "torn", "--results", str(tmp_path / "results"),
            "--trainer", "stand_in:gated_train", "--trials", "3", "--engine", engine]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_RECORD, *argv], env=env, capture_output=True,
                            text=True, timeout=WAIT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [r["trial"] for r in records(tmp_path, "torn")] == [0]  # trial 1: the engine's, with no record
    again = subprocess.run([sys.executable, "-m", "cnnbench.cli", *argv], env=env, capture_output=True, text=True,
                           timeout=WAIT)
    assert again.returncode == 0, again.stdout + again.stderr
    final = records(tmp_path, "torn")
    assert sum(r["state"] == "complete" for r in final) == 3 and not [r for r in final if r["state"] == "running"]
    if engine == "optuna":
        import optuna

        study = optuna.load_study(study_name="torn", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "torn" / "optuna.journal"))))
        assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.slow
def test_closing_the_sweeps_terminal_stops_it_like_sighup(tmp_path):
    """Not a signal sent by hand: the sweep runs on a pseudo-terminal it owns (its session's
    controlling terminal, as in an ssh session) and the terminal goes away; the kernel hangs
    up its foreground group (the sweep and its trial child), and later writes fail with EIO."""
    import fcntl
    import termios
    import threading

    proc, gate = None, tmp_path / "gate"
    gate.mkdir()
    master, terminal = os.openpty()

    def own_the_terminal():  # in the child, after its stdio became the terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {**os.environ, "CNNBENCH_STAND_IN_DIR": str(gate), **stand_in_model_env(),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "CNNBENCH_CIFAR10": str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg")}
    args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "hung",
            "--results", str(tmp_path / "results"), "--trainer", "stand_in:gated_train", "--trials", "4"]
    proc = subprocess.Popen(args, env=env, stdin=terminal, stdout=terminal, stderr=terminal,
                            preexec_fn=own_the_terminal)
    os.close(terminal)
    seen: list[bytes] = []

    def drain():  # read what the sweep writes, so the terminal's buffer never fills
        try:
            while chunk := os.read(master, 65536):
                seen.append(chunk)
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        wait_for(running_trial_started(gate), "the first trial to start")
        (gate / "go-7").touch()
        wait_for(lambda: sum(r["state"] == "complete" for r in records(tmp_path, "hung")) >= 1, "a finished trial")
        wait_for(lambda: any(r["state"] == "running" for r in records(tmp_path, "hung")), "a running trial")
        os.close(master)  # the terminal is gone: hang-up
        assert proc.wait(timeout=WAIT) == 129, b"".join(seen).decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    states = {r["trial"]: r["state"] for r in records(tmp_path, "hung")}
    assert "interrupted" in states.values() and "running" not in states.values()
    board = pd.read_csv(tmp_path / "results" / "hung" / "leaderboard.csv")
    assert dict(zip(board["trial"], board["state"])) == states
    assert (tmp_path / "results" / "hung" / "best" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_kill_9_mid_trial_is_found_and_retried_by_the_next_run(tmp_path, engine):
    proc, gate = sweep(tmp_path, "killed", "--trials", "2", "--engine", engine)
    wait_for(running_trial_started(gate), "the first trial to start")
    proc.kill()
    proc.communicate(timeout=WAIT)
    lost = records(tmp_path, "killed")
    assert [r["state"] for r in lost] == ["running"]  # nobody could record its end ...
    (gate / "go").touch()
    again, _ = sweep(tmp_path, "killed", "--trials", "2", "--engine", engine)
    out, err = again.communicate(timeout=WAIT)
    assert again.returncode == 0, out + err
    final = records(tmp_path, "killed")
    first = final[0]
    assert first["state"] == "failed" and first["reason"].startswith("worker lost: its process")
    retried = [r for r in final if r["values"] == first["values"] and r["trial"] != first["trial"]]
    assert len(retried) == 1 and retried[0]["attempt"] == 2 and retried[0]["state"] == "complete"
    assert sum(r["state"] == "complete" for r in final) == 2  # ... and the budget holds exactly
    assert "was lost" in out


@pytest.mark.slow
def test_a_crashing_trial_fails_alone_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "go").touch()
    proc, _ = sweep(tmp_path, "crash", "--trials", "6", env={"CNNBENCH_STAND_IN_CRASH": "1"})
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out + err
    final = records(tmp_path, "crash")
    crashed = [r for r in final if r["state"] == "failed"]
    assert crashed and all(r["reason"] == "worker lost: the trial's process was killed by SIGKILL (out of memory, "
                                          "or kill -9)" for r in crashed)
    assert all(r["values"]["learning_rate"] > 0.004 for r in crashed)
    # each crashing configuration was tried once more (search.retries: 1, from its checkpoint
    # when it has one), then given up; the budget counts it once
    first = [r for r in crashed if r["attempt"] == 1]
    assert sorted(r["values"]["learning_rate"] for r in crashed if r["attempt"] == 2) == sorted(
        r["values"]["learning_rate"] for r in first)
    assert len(final) - len(first) == 6 and any(r["state"] == "complete" for r in final)


@pytest.mark.slow
def test_two_workers_one_killed_nothing_lost_nothing_twice(tmp_path):
    proc, gate = sweep(tmp_path, "workers", "--trials", "6", "--workers", "2")
    wait_for(running_trial_started(gate, 2), "both workers to start a trial")
    victim = next(r for r in records(tmp_path, "workers") if r["state"] == "running")
    os.kill(victim["pid"], signal.SIGKILL)
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out + err
    final = records(tmp_path, "workers")
    lost = [r for r in final if r["reason"].startswith("worker lost")]
    assert [r["trial"] for r in lost] == [victim["trial"]]
    done = [r for r in final if r["state"] == "complete"]
    assert len(done) == 6  # the budget, exactly, the lost trial's retry included
    keys = [json.dumps(r["values"], sort_keys=True) for r in done]
    assert len(set(keys)) == len(keys)  # no configuration trained twice (the retry replaced the lost one)
    assert any(r["attempt"] == 2 and r["values"] == victim["values"] for r in done)
    board = pd.read_csv(tmp_path / "results" / "workers" / "leaderboard.csv")
    assert sorted(board["trial"]) == sorted(r["trial"] for r in final)
    assert "was killed by SIGKILL" in out or "was lost" in out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP], ids=["kill-9", "SIGHUP"])
def test_workers_stop_with_their_sweep_even_when_it_is_killed_9(tmp_path, signum):
    proc, gate = sweep(tmp_path, "orphans", "--trials", "6", "--workers", "2")
    wait_for(running_trial_started(gate, 2), "both workers to start a trial")
    wait_for(lambda: sum(r["state"] == "running" for r in records(tmp_path, "orphans")) == 2, "two running records")
    workers = [r["pid"] for r in records(tmp_path, "orphans") if r["state"] == "running"]
    proc.send_signal(signum)  # kill -9: the kernel tells the workers; SIGHUP: the sweep passes it on
    proc.communicate(timeout=WAIT)
    assert proc.returncode == (-9 if signum == signal.SIGKILL else 129)
    wait_for(lambda: all(process_gone(pid) for pid in workers), "the workers to stop with their sweep")
    states = [r["state"] for r in records(tmp_path, "orphans")]
    assert states == ["interrupted", "interrupted"]  # each stopped the graceful way, on SIGTERM


@pytest.mark.slow
def test_kerastuner_workers_one_killed_its_trial_is_retried_in_the_same_run(tmp_path):
    # KerasTuner's oracle has no heartbeat: the chief finds the lost trial from its record
    proc, gate = sweep(tmp_path, "ktw", "--engine", "kerastuner", "--trials", "6", "--workers", "2")
    wait_for(running_trial_started(gate, 2), "both workers to start a trial")
    victim = next(r for r in records(tmp_path, "ktw") if r["state"] == "running")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: process_gone(victim["pid"]), "the killed worker to be gone (or a zombie)")
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out + err
    final = records(tmp_path, "ktw")
    assert [r["trial"] for r in final if r["reason"].startswith("worker lost")] == [victim["trial"]]
    done = [r for r in final if r["state"] == "complete"]
    assert len(done) == 6 and len({json.dumps(r["values"], sort_keys=True) for r in done}) == 6
    assert any(r["attempt"] == 2 and r["values"] == victim["values"] for r in done)
    assert len({r["trial"] for r in final}) == len(final) == 7  # the failed attempt keeps its own record
    board = pd.read_csv(tmp_path / "results" / "ktw" / "leaderboard.csv")
    assert sorted(board["trial"]) == sorted(r["trial"] for r in final)
    assert "was lost" in out and "was killed by SIGKILL" in out


@pytest.mark.slow
def test_postgresql_two_workers_one_killed_and_the_password_never_written(tmp_path, postgres_url):
    # the URL from the environment, as a many-machine setup would pass it (not on every command line)
    proc, gate = sweep(tmp_path, "pg", "--trials", "5", "--workers", "2", env={"CNNBENCH_STORAGE": postgres_url})
    wait_for(running_trial_started(gate, 2), "both workers to start a trial")
    victim = next(r for r in records(tmp_path, "pg") if r["state"] == "running")
    os.kill(victim["pid"], signal.SIGKILL)
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out + err
    final = records(tmp_path, "pg")
    assert [r["trial"] for r in final if r["reason"].startswith("worker lost")] == [victim["trial"]]
    done = [r for r in final if r["state"] == "complete"]
    assert len(done) == 5 and len({json.dumps(r["values"], sort_keys=True) for r in done}) == 5
    # Optuna's own view of the study agrees: read through its API in a fresh process
    code = ("import optuna, sys; s = optuna.load_study(study_name='pg', storage=sys.argv[1].replace("
            "'postgresql://', 'postgresql+psycopg://')); print(sum(t.state.name == 'COMPLETE' for t in s.trials))")
    seen = subprocess.run([sys.executable, "-c", code, postgres_url], capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip() == "5", seen.stderr
    password = postgres_url.split(":")[2].split("@")[0]
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".csv", ".yaml")]
    assert written and not [p for p in written if password in p.read_text(errors="replace")]
    assert password not in out + err
    run = json.loads((tmp_path / "results" / "pg" / "run.json").read_text())
    assert run["storage"].startswith("postgresql+psycopg://postgres:***@127.0.0.1")


def test_an_unreachable_database_is_one_line_before_anything_is_written(tmp_path):
    proc, _ = sweep(tmp_path, "nodb", "--storage", "postgresql://user:hunter2@127.0.0.1:9/nothing")
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot open the database" in lines[0] and "user:***@" in lines[0]
    assert "hunter2" not in out + err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_two_sweeps_of_one_study_started_together_both_end_well(tmp_path):
    """Two `cnnbench sweep` of the same study at the same moment (two terminals, a job
    started twice): both exit 0 without a traceback, the study holds its budget, and the
    export left behind is whole."""
    (tmp_path / "gate").mkdir()
    first, gate = sweep(tmp_path, "twice", "--trials", "3")
    second, _ = sweep(tmp_path, "twice", "--trials", "3")
    wait_for(running_trial_started(gate, 2), "both sweeps to start a trial")
    (gate / "go").touch()
    for proc in (first, second):
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err
    done = [r for r in records(tmp_path, "twice") if r["state"] == "complete"]
    assert 3 <= len(done) <= 4  # each counts the other's trials; one racing trial may add one
    best = tmp_path / "results" / "twice" / "best"
    card = json.loads((best / "model_card.json").read_text())
    assert card["study"] == "twice" and not list(best.glob(".*tmp*"))  # no temporary left behind
    import zipfile

    assert zipfile.ZipFile(best / "model.keras").testzip() is None  # a whole file, not two halves


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted as the results folder (root only: skipped elsewhere)."""
    mount = tmp_path / "results"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip() or made.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the disk is full; returns the filler file."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_ends_the_sweep_in_one_line_and_the_same_command_continues(tmp_path, small_disk):
    (tmp_path / "gate").mkdir()
    for seed in (7, 8):  # smoke.yaml's seed + trial 0 and 1: those two train through ...
        (tmp_path / "gate" / f"go-{seed}").touch()
    proc, gate = sweep(tmp_path, "full", "--trials", "5")
    wait_for(lambda: sum(r["state"] == "complete" for r in records(tmp_path, "full")) >= 2, "two finished trials")
    wait_for(lambda: (gate / "training-9").exists(), "the third trial to start")  # ... and it waits
    wait_for(lambda: any(r["state"] == "running" for r in records(tmp_path, "full")), "a running trial")
    filler = _fill(small_disk)  # ... fill the disk under it, and let it end
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 74, out + err  # WRITE_FAILED
    assert "Traceback" not in err and "Process cnnbench-trial" not in err  # the trial's child went quietly too
    said = [line for line in err.splitlines() if line.startswith("cnnbench: ")]
    assert len(said) == 1 and said[0].startswith(f"cnnbench: {small_disk}") and "No space left on device" in said[0]
    finished = [r for r in records(tmp_path, "full") if r["state"] == "complete"]
    assert len(finished) >= 2  # every finished trial still readable
    filler.unlink()  # the cause fixed: the same command continues the study
    again, _ = sweep(tmp_path, "full", "--trials", "5")
    out, err = again.communicate(timeout=WAIT)
    assert again.returncode == 0, out + err
    assert sum(r["state"] == "complete" for r in records(tmp_path, "full")) == 5
    for entry in (small_disk / "full" / "optuna.journal").read_bytes().splitlines():
        json.loads(entry)  # no torn line left inside the journal
    assert not list(small_disk.rglob("*.tmp")) and (small_disk / "full" / "best" / "model.keras").exists()


@pytest.mark.slow
def test_a_paused_sweep_whose_trial_was_taken_over_drops_its_result_when_it_continues(tmp_path):
    """A sweep stopped whole (SIGSTOP: a suspended laptop, a frozen VM) past the heartbeat
    limit: another run declares its trial lost and retries it; when the paused one continues
    it notices, writes nothing more, and ends without a traceback. The 90 s of silence are
    written into the record (its heartbeat set 1,000 s back while the process is stopped),
    so no clock is waited on."""
    from cnnbench import trials
    from cnnbench.trials import StudyPaths

    paused, gate = sweep(tmp_path, "pause", "--trials", "2", new_session=True)
    wait_for(running_trial_started(gate), "the first trial to start")
    paths = StudyPaths(tmp_path / "results" / "pause")
    wait_for(lambda: paths.trial_record(0).exists(), "the first trial's record")
    os.killpg(paused.pid, signal.SIGSTOP)  # the sweep and its trial child, heartbeat thread included
    try:
        record = trials.read_record(paths.trial_record(0))
        assert record.state == "running"
        record.heartbeat_at = record.started_at = time.time() - 1000
        trials.write_record(paths, record)
        other, other_gate = sweep(tmp_path, "pause", "--trials", "2", gate_name="other-gate")
        (other_gate / "go").touch()
        (other_gate / "go-final").touch()
        out, err = other.communicate(timeout=WAIT)
        assert other.returncode == 0, out + err
        assert "trial 0 was lost (no heartbeat for" in out + err
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    (gate / "go").touch()
    out, err = paused.communicate(timeout=WAIT)
    assert paused.returncode == 0 and "Traceback" not in err, out + err
    assert "declared lost while this process was paused" in out + err
    lost = trials.read_record(paths.trial_record(0))
    assert lost.state == "failed" and lost.reason.startswith("worker lost: no heartbeat")  # not rewritten
    states = [r["state"] for r in records(tmp_path, "pause")]
    assert states.count("complete") == 2 and "running" not in states


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_resumed_by_another_from_the_checkpoint(tmp_path):
    """kill -9 of one of two workers after its trial's epoch-2 checkpoint: the trial is found
    lost and retried with its first attempt's seed by a process still alive, which goes on
    from epoch 3 of the checkpoint the dead worker left (issue 16, with workers)."""
    proc, gate = sweep(tmp_path, "resume", "--trials", "4", "--workers", "2", "--set", "epochs=4", "--trainer",
                       "stand_in:gated_resumable_train", env={"CNNBENCH_STAND_IN_HOLD_AFTER": "2"})
    wait_for(lambda: len(list(gate.glob("held-*"))) >= 2, "both workers' trials to hold after epoch 2")
    victim = next(r for r in records(tmp_path, "resume") if r["state"] == "running")
    os.kill(victim["pid"], signal.SIGKILL)  # its trial child dies with it (PR_SET_PDEATHSIG: SIGKILL)
    wait_for(lambda: process_gone(victim["pid"]), "the killed worker to be gone")
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out + err
    final = records(tmp_path, "resume")
    lost = next(r for r in final if r["trial"] == victim["trial"])
    assert lost["state"] == "failed" and lost["reason"].startswith("worker lost")
    retry = next(r for r in final if r["attempt"] == 2)
    assert retry["values"] == victim["values"] and retry["seed"] == victim["seed"] and retry["pid"] != victim["pid"]
    assert retry["resumed_from_epoch"] == [2] and [h["epoch"] for h in retry["history"]] == [1, 2, 3, 4]
    assert sum(r["state"] == "complete" for r in final) == 4  # the budget counts the resumed training once
    assert not list((tmp_path / "results" / "resume" / "checkpoints").glob("*"))


def test_a_trial_child_may_grow_by_a_real_trials_footprint_before_it_is_replaced(monkeypatch):
    """At 150 MB every real trial started a new child (a first-rung run of the default space
    grows one by about 450 MB, later ones by 30-100 MB), 5-9 s each: the limit is 2 GB, or an
    eighth of the machine's memory where that is less."""
    from cnnbench.training import isolation

    def machine(total_gb: float):
        pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": int(total_gb * 2**30 / 4096)}
        monkeypatch.setattr(isolation.os, "sysconf", lambda name: pages[name])

    machine(24)
    assert isolation.recycle_limit_mb() == 2048 == isolation.TrialRunner(None).recycle_mb
    machine(8)
    assert isolation.recycle_limit_mb() == pytest.approx(1024)
    assert isolation.TrialRunner(None, recycle_mb=100).recycle_mb == 100


def test_a_training_in_a_child_is_re_sized_by_what_the_sweeps_on_epoch_returns():
    """The final training re-sizes itself through the pipe (final.py): an epoch count that
    on_epoch returns reaches the trainer, which ends at it (up to ``stretch_to``); without
    ``stretch_to`` it keeps its epochs."""
    from cnnbench.knobs import default_config
    from cnnbench.training.isolation import TrialRunner

    runner = TrialRunner(None, "stand_in:fake_train")
    config = {**default_config(), "optimizer": "adam", "learning_rate": 0.01, "epochs": 3}
    heard: list[int] = []

    def resize_to_five(epoch: int, logs: dict) -> int | None:
        heard.append(epoch)
        return 5 if epoch == 2 else None

    try:
        grown = runner.run(config, 0, None, resize_to_five, stretch_to=8)
        kept = runner.run(config, 0, None, lambda epoch, logs: 5)
    finally:
        runner.close(kill=True)
    assert heard == [1, 2, 3, 4, 5] and grown.state == "complete" and grown.metrics["epochs_run"] == 5
    assert kept.metrics["epochs_run"] == 3


def test_a_trial_child_whose_memory_grew_past_the_limit_is_replaced_by_a_fresh_one():
    """isolation.recycle_limit_mb(): a child that grew (a leak across trials) is stopped after its
    trial, and the next trial starts in a new process; one that did not keeps serving."""
    from cnnbench.training.isolation import TrialRunner

    runner = TrialRunner(None, "stand_in:hoarding_train", recycle_mb=100)
    pids: list[int] = []

    def train(hoard_mb: int) -> None:
        outcome = runner.run({"hoard_mb": hoard_mb}, 0, None, lambda epoch, logs: pids.append(logs["pid"]))
        assert outcome.state == "complete", outcome

    try:
        train(10)
        train(10)  # grew 20 MB: the same child
        train(150)  # grew past 100 MB: stopped once this trial is done
        train(10)
    finally:
        runner.close(kill=True)
    assert pids[0] == pids[1] == pids[2] != pids[3] and runner.children_started == 2
