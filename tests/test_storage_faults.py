"""Torn journals, trials without records, failed writes and paused workers: each ends in
one line or is reconciled, and the same command continues the study (in-process, the
stand-in trainer, the real Optuna journal)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import stand_in
from cnnbench import trials
from cnnbench.cli import WRITE_FAILED, main
from cnnbench.space import SpaceError, parse_space

SPACE = {"seed": 1, "budget": {"trials": 3}, "search": {"sampler": "random", "pruner": "none"},
         "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                    "epochs": {"type": "fixed", "value": 2}}}


def _journal(root: Path) -> Path:
    return root / "s" / "optuna.journal"


def _complete(root: Path) -> int:
    return sum(r.state == "complete" for r in trials.read_records(trials.StudyPaths(root / "s")))


def test_a_torn_journal_tail_is_cut_before_the_next_write_and_the_study_continues(tmp_path):
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=2)
    with _journal(tmp_path).open("ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "x", "trial_i')  # a write cut short by a full disk
    stand_in.run(space, tmp_path, trials=3)
    assert _complete(tmp_path) == 3
    for line in _journal(tmp_path).read_bytes().splitlines():
        json.loads(line)  # no torn line inside the file


def test_an_unreadable_entry_inside_the_journal_is_one_line_and_repair_keeps_the_rest(tmp_path, capsys):
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=2)
    lines = _journal(tmp_path).read_bytes().splitlines(keepends=True)
    # a write torn by a full disk, and the next write straight after it on the same line
    i = next(n for n, line in enumerate(lines) if line.startswith(b'{"op_code":8'))
    torn = lines[i][:len(lines[i]) // 2] + lines[i + 1]
    _journal(tmp_path).write_bytes(b"".join(lines[:i] + [torn] + lines[i + 2:]))
    with pytest.raises(SpaceError, match=r"an unreadable entry inside the journal; `cnnbench repair s --results"):
        stand_in.run(space, tmp_path, trials=3)
    assert main(["repair", "s", "--results", str(tmp_path)]) == 0
    assert f"removed 1 torn entry; kept {len(lines) - 1} complete entries" in capsys.readouterr().out
    stand_in.run(space, tmp_path, trials=3)
    assert _complete(tmp_path) == 3


def test_repair_keeps_the_trial_numbers_when_a_trials_creation_was_torn(tmp_path, capsys):
    """Before, repair cut the file at a torn CREATE_TRIAL, dropping every later entry: the
    next trials took the numbers of trials whose records were still on disk."""
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=3)
    lines = _journal(tmp_path).read_bytes().splitlines(keepends=True)
    creations = [n for n, line in enumerate(lines) if line.startswith(b'{"op_code":4') or
                 line.startswith(b'{"op_code": 4')]
    i = creations[1]  # trial 1's creation, torn, and the next entry straight after it
    torn = lines[i][:len(lines[i]) // 2] + lines[i + 1]
    _journal(tmp_path).write_bytes(b"".join(lines[:i] + [torn] + lines[i + 2:]))
    assert main(["repair", "s", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "replaced 1 torn trial creation(s) by bare ones" in out and "cut" not in out
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(_journal(tmp_path)))))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.trials[2].state == TrialState.COMPLETE  # the entries after the torn one are kept
    stand_in.run(space, tmp_path, trials=5)
    records = trials.read_records(trials.StudyPaths(tmp_path / "s"))
    assert [r.trial for r in records] == [0, 1, 2, 3, 4]  # no number given twice


@pytest.mark.parametrize("owner", ["dead process", "none"])
def test_a_running_trial_without_a_record_is_failed_and_its_configuration_run_again(tmp_path, monkeypatch, owner):
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=1)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(_journal(tmp_path)))))
    orphan = study.ask()  # its process died before cnnbench wrote a record
    orphan.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
    if owner == "dead process":
        gone = subprocess.Popen(["true"])
        gone.wait()
        orphan.set_user_attr("owner", f"{socket.gethostname()}:{gone.pid}")
    else:  # asked, and killed before even its owner was written: found by its age
        monkeypatch.setattr(trials, "STALE_SECONDS", -1.0)
    stand_in.run(space, tmp_path, trials=3)
    assert _complete(tmp_path) == 3  # the budget holds
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(_journal(tmp_path)))))
    failed = study.trials[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["lost_before_record"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retried) == 1 and retried[0].params == failed.params and retried[0].state == TrialState.COMPLETE
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("ended", ["complete", "pruned"])
def test_a_trial_recorded_as_ended_whose_process_died_before_telling_the_study_is_told_from_its_record(
        tmp_path, ended):
    """Killed between the record's last write and ``study.tell``: the trial stayed RUNNING in
    Optuna for ever (recover_unrecorded skipped every trial with a record)."""
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=1)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(_journal(tmp_path)))))
    untold = study.ask()
    untold.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    untold.set_user_attr("owner", f"{socket.gethostname()}:{gone.pid}")
    paths = trials.StudyPaths(tmp_path / "s")
    record = trials.started(untold.number, "optuna", dict(untold.params), {}, seed=3)
    record.state, record.val_accuracy = ended, 0.625 if ended == "complete" else None
    trials.write_record(paths, record)
    stand_in.run(space, tmp_path, trials=3)
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(_journal(tmp_path)))))
    told = study.trials[untold.number]
    if ended == "complete":
        assert told.state == TrialState.COMPLETE and told.value == 0.625
    else:
        assert told.state == TrialState.PRUNED
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert not [t for t in study.trials if t.user_attrs.get("retry_of") == untold.number]  # it ended: no retry
    assert trials.read_record(paths.trial_record(untold.number)).state == ended  # the record stands
    assert len([r for r in trials.read_records(paths) if r.state in trials.FINISHED]) == 3  # the budget holds


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler sees it."""


def test_a_kerastuner_trial_killed_between_its_creation_and_its_first_record_is_run_again(tmp_path, monkeypatch):
    """The oracle has saved the trial as running (its create_trial wrote oracle.json and
    trial.json) and cnnbench has no record of it: the next run trains it under its own id
    and the budget holds, with nothing left running."""
    from cnnbench.engines import kerastuner as engine

    space = parse_space({**SPACE, "budget": {"trials": 2}})
    real = engine.run_trial

    def killed_before_record(job, number, *a, **k):
        if number == 1:
            raise _Killed()
        return real(job, number, *a, **k)

    monkeypatch.setattr(engine, "run_trial", killed_before_record)
    with pytest.raises(_Killed):
        stand_in.run(space, tmp_path, trials=2, engine="kerastuner")
    paths = trials.StudyPaths(tmp_path / "s")
    assert [r.trial for r in trials.read_records(paths)] == [0]  # trial 1 has no record
    def statuses():
        return {int(json.loads(p.read_text())["trial_id"]): json.loads(p.read_text())["status"]
                for p in (tmp_path / "s" / "kerastuner").glob("trial_*/trial.json")}

    assert statuses() == {0: "COMPLETED", 1: "RUNNING"}
    monkeypatch.setattr(engine, "run_trial", real)
    records = stand_in.run(space, tmp_path, trials=2, engine="kerastuner")
    assert sorted((r.trial, r.state) for r in records) == [(0, "complete"), (1, "complete")]
    assert statuses() == {0: "COMPLETED", 1: "COMPLETED"}  # run again under its own id, nothing left running


def test_a_full_disk_at_a_record_write_names_the_file_leaves_no_temporary_and_the_study_continues(tmp_path,
                                                                                                  monkeypatch):
    space = parse_space(SPACE)
    real = Path.write_text

    def full_disk(self, *a, **k):
        if self.name.startswith(".trial-0001.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError) as e:
        stand_in.run(space, tmp_path, trials=3)
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("trial-0001.json")
    assert not list((tmp_path / "s" / "trials").glob(".*.tmp"))
    monkeypatch.setattr(Path, "write_text", real)  # the space is freed
    stand_in.run(space, tmp_path, trials=3)
    assert _complete(tmp_path) == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.ESTALE, errno.EDQUOT, errno.EIO])
def test_a_write_failure_is_one_line_and_its_own_exit_code(tmp_path, monkeypatch, capsys, code):
    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=1)
    with _journal(tmp_path).open("ab") as f:
        f.write(b'{"torn')

    def failing_write(*a, **k):  # a full disk, a file over the size limit, a lost NFS handle, ...
        raise OSError(code, os.strerror(code), str(_journal(tmp_path)))

    monkeypatch.setattr(os, "replace", failing_write)
    assert main(["repair", "s", "--results", str(tmp_path)]) == WRITE_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnnbench: {_journal(tmp_path)}: {os.strerror(code)}; every finished trial is kept")
    assert "\n" not in err


@pytest.mark.parametrize("engine", ["optuna", "kerastuner"])
def test_a_trial_declared_lost_while_paused_does_not_write_again_when_its_process_returns(tmp_path, engine):
    """KerasTuner's path: TrialTaken becomes FailedTrialError for its oracle, so the paused
    worker's result is dropped there too and the search goes on."""
    space = parse_space(SPACE)
    job = stand_in.make_job(space, tmp_path, trials=1, engine=engine)

    def paused_then_back(config, data, on_epoch, seed):
        # while this process was stopped, another declared the trial lost and took it over
        job.paths.lost_marker(0).touch()
        return stand_in.fake_train(config, data, on_epoch, seed)

    job.runner = stand_in.InProcessRunner(None, paused_then_back)
    before = []

    def keep(record):
        before.append(record)

    job.on_record = keep
    stand_in.engines.get(engine).run(job)
    record = trials.read_record(job.paths.trial_record(0))
    assert record.state == "running" and not before  # left as the recovery found it: this run wrote nothing more


def test_a_resume_with_other_data_or_other_knob_defaults_is_refused_before_anything_is_written(tmp_path):
    from cnnbench.training.data import DataError, synthetic_bundle
    from cnnbench.knobs import knob_defaults_hash
    from cnnbench.request import SweepRequest, check_same_data, prepare
    from conftest import SPACES

    request = SweepRequest(space_file=str(SPACES / "smoke.yaml"), results=str(tmp_path), study="r")
    run = dict(prepare(request).run, data={"fingerprint": "made-with-other-data"})
    assert run["knob_defaults_hash"] == knob_defaults_hash()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(run))
    with pytest.raises(DataError, match="study 'r' was made with other data .*CNNBENCH_CIFAR10"):
        check_same_data(trials.StudyPaths(tmp_path / "r"), synthetic_bundle(20, n_val=10))
    prepare(request)  # same space, same defaults: accepted
    (tmp_path / "r" / "run.json").write_text(json.dumps({**run, "knob_defaults_hash": "0123456789abcdef"}))
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    with pytest.raises(SpaceError, match="the knobs' defaults were different"):
        prepare(request)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before


def test_a_torn_trial_record_is_rebuilt_from_the_storage_not_dropped(tmp_path):
    space = parse_space(SPACE)
    before = stand_in.run(space, tmp_path, trials=2)
    path = tmp_path / "s" / "trials" / "trial-0001.json"
    path.write_text(path.read_text()[:40])  # half a record
    after = stand_in.run(space, tmp_path, trials=2)  # nothing left to train: the run only reconciles
    assert [r.trial for r in after] == [0, 1]
    rebuilt = after[1]
    assert rebuilt.state == "complete" and rebuilt.val_accuracy == pytest.approx(before[1].val_accuracy)
    assert rebuilt.values == before[1].values and "rebuilt from the Optuna storage" in rebuilt.note


def test_a_torn_kerastuner_trial_record_is_rebuilt_from_the_oracle_not_dropped(tmp_path):
    space = parse_space(SPACE)
    before = stand_in.run(space, tmp_path, trials=2, engine="kerastuner")
    path = tmp_path / "s" / "trials" / "trial-0001.json"
    path.write_text(path.read_text()[:40])  # half a record
    after = stand_in.run(space, tmp_path, trials=2, engine="kerastuner")  # nothing to train: it reconciles
    assert [r.trial for r in after] == [0, 1]
    rebuilt = after[1]
    assert rebuilt.state == "complete" and rebuilt.val_accuracy == pytest.approx(before[1].val_accuracy)
    assert rebuilt.values == before[1].values and "rebuilt from KerasTuner's state" in rebuilt.note


def _saved_tiny_models(tmp_path):
    """A stand-in study whose completed trials each keep a real (tiny, untrained) model file."""
    from cnnbench.knobs import default_config
    from cnnbench.model import build_model

    space = parse_space(SPACE)
    stand_in.run(space, tmp_path, trials=3)
    paths = trials.StudyPaths(tmp_path / "s")
    records = trials.read_records(paths)
    model = build_model({**default_config(), "stages": 1, "base_filters": 4, "dense_units": 8}, 10, 32)
    for record in records:
        model.save(paths.trial_model(record.trial))
    return paths, sorted(records, key=lambda r: -r.val_accuracy)


def test_a_torn_model_file_is_set_aside_and_the_next_best_trial_exported(tmp_path):
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.reports.export import ExportError, export_best
    from cnnbench.final import FinalOutcome

    paths, ranked = _saved_tiny_models(tmp_path)
    data, said = synthetic_bundle(20, n_val=10), []
    best = paths.trial_model(ranked[0].trial)
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])  # a copy cut short
    card = export_best(ranked, paths, data, {"study": "s"}, say=said.append)
    assert card.trial == ranked[1].trial
    assert not best.exists() and best.with_name(best.name + ".damaged").exists()  # kept, renamed
    assert len(said) == 1 and str(best) in said[0] and "set aside" in said[0]
    # a damaged final model: the best trial's own is exported and the final will be trained again
    paths.final_model.parent.mkdir(parents=True, exist_ok=True)
    paths.final_model.write_bytes(b"PK\x03\x04 torn")
    final = FinalOutcome(dataclasses.replace(ranked[1]), "final training complete")
    card = export_best(ranked, paths, data, {"study": "s"}, final=final, say=said.append)
    assert card.final is None and card.trial == ranked[1].trial
    assert "the next run trains the final again" in card.final_note and not paths.final_model.exists()
    # chosen by hand: one line, nothing exported in its place
    torn = paths.trial_model(ranked[2].trial)
    torn.write_bytes(b"")
    with pytest.raises(ExportError, match="cannot be loaded"):
        export_best(ranked, paths, data, {"study": "s"}, trial=ranked[2].trial, say=said.append)


def test_a_full_disk_while_copying_the_exported_model_leaves_no_half_copy_and_names_the_target(tmp_path,
                                                                                               monkeypatch):
    """The export copies the chosen model into best/ (files.atomic_copy): a copy cut by a full
    disk left `.model.<pid>.tmp.keras` behind, and the error named the source."""
    import shutil

    from cnnbench.files import atomic_copy

    source, target = tmp_path / "trial-0003.keras", tmp_path / "best" / "model.keras"
    source.write_bytes(b"x" * 1000)
    target.parent.mkdir()
    target.write_bytes(b"the model exported before")

    def full_disk(src, dst, *a, **k):
        Path(dst).write_bytes(b"x" * 10)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(OSError) as e:
        atomic_copy(source, target)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]  # no temporary left
    assert target.read_bytes() == b"the model exported before"  # the earlier export is whole
    monkeypatch.undo()
    atomic_copy(source, target)
    assert target.read_bytes() == source.read_bytes()


def test_a_heartbeat_that_wrote_after_its_trial_was_declared_lost_puts_the_failure_back(tmp_path, monkeypatch):
    """A worker paused between its heartbeat's look for the lost marker and its write: the
    recovering process marked the trial lost and failed its record meanwhile, and the
    returning heartbeat wrote `running` over it, for ever."""
    import threading

    from cnnbench.engines.trial import _Heartbeat

    job = stand_in.make_job(parse_space(SPACE), tmp_path)
    record = trials.started(0, "optuna", {"learning_rate": 0.01}, {}, seed=3)
    trials.write_record(job.paths, record)
    real = trials.write_record

    def recovered_meanwhile(paths, written, target=None):
        if not job.paths.lost_marker(0).exists():  # the other process's claim and failed record
            job.paths.lost_marker(0).touch()
            real(paths, dataclasses.replace(written, state="failed", reason="worker lost: heartbeat stale"))
        real(paths, written, target)

    monkeypatch.setattr(trials, "write_record", recovered_meanwhile)
    beat = _Heartbeat(job, record, threading.Lock())
    assert beat.beat() is False  # no more beats
    on_disk = trials.read_record(job.paths.trial_record(0))
    assert on_disk.state == "failed" and on_disk.reason.startswith("worker lost")
    assert beat.beat() is False and trials.read_record(job.paths.trial_record(0)).state == "failed"


def test_a_storage_error_in_the_heartbeat_hook_is_retried_at_the_next_beat_not_a_thread_traceback(tmp_path):
    import threading

    from cnnbench.engines.trial import _Heartbeat

    job = stand_in.make_job(parse_space(SPACE), tmp_path)
    record = trials.started(0, "optuna", {"learning_rate": 0.01}, {}, seed=3)
    calls = []

    def lost_connection(number):
        calls.append(number)
        raise ConnectionError("the database went away")

    job.heartbeat_hook = lost_connection
    beat = _Heartbeat(job, record, threading.Lock())
    assert beat.beat() is True and beat.beat() is True and calls == [0, 0]
    assert trials.read_record(job.paths.trial_record(0)).state == "running"
