"""Special files, oversized names and paths that lead out of the results folder: one line,
before anything is written (in-process: no TensorFlow, no sweep)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnbench.space import SpaceError, load_space
from cnnbench.request import MAX_STUDY_NAME, SweepRequest, prepare
from conftest import SPACES


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo"])
def test_a_device_or_fifo_as_space_file_is_refused_without_reading_it(tmp_path, special):
    if special == "fifo":  # no writer: a blocking read would hang for ever
        special = str(tmp_path / "space.yaml")
        os.mkfifo(special)
    with pytest.raises(SpaceError, match="not a regular file") as e:
        load_space(special)
    assert str(e.value).startswith(special) and "\n" not in str(e.value)


def test_an_oversized_space_file_is_refused_after_reading_no_more_than_its_limit(tmp_path):
    from cnnbench.space.safe_yaml import MAX_BYTES

    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES * 3))
    with pytest.raises(SpaceError, match=f"over {MAX_BYTES:,} bytes"):
        load_space(big)


@pytest.mark.parametrize("case", ["device", "fifo", "long name", "results is a file", "symlink out"])
def test_the_command_line_answers_each_hostile_input_with_one_line_and_exit_2(tmp_path, case, capsys):
    """What a user sees: `cnnbench sweep` itself (in this process), not the exception."""
    from cnnbench.cli import main

    results, space, study = tmp_path / "results", str(SPACES / "smoke.yaml"), "smoke"
    if case == "device":
        space = "/dev/zero"
    elif case == "fifo":
        space = str(tmp_path / "space.yaml")
        os.mkfifo(space)
    elif case == "long name":
        study = "a" * 300
    elif case == "results is a file":
        results.write_text("not a folder")
    else:
        (results / "smoke").mkdir(parents=True)
        (results / "smoke" / "trials").symlink_to(tmp_path)
    def tree():  # os.walk does not follow the symbolic link back up
        return sorted(os.path.join(top, name) for top, dirs, files in os.walk(tmp_path) for name in dirs + files)

    before = tree()
    code = main(["sweep", "--space", space, "--study", study, "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cnnbench: ") and "\n" not in err and "Traceback" not in err, err
    assert tree() == before  # nothing written


def _prepare(tmp_path, results, **kw):
    return prepare(SweepRequest(space_file=str(SPACES / "smoke.yaml"), results=str(results), **kw))


def test_a_study_name_too_long_for_file_names_is_one_line(tmp_path):
    with pytest.raises(SpaceError, match=f"^--study: 300 characters; a study name is at most {MAX_STUDY_NAME}$"):
        _prepare(tmp_path, tmp_path / "results", study="a" * 300)
    assert not (tmp_path / "results").exists()


def test_results_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(SpaceError, match="--results: .* is a file, not a folder"):
        _prepare(tmp_path, tmp_path / "results")


def test_a_symlink_leading_out_of_the_results_folder_is_refused_and_nothing_lands_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    study = tmp_path / "results" / "smoke"
    study.mkdir(parents=True)
    (study / "trials").symlink_to(outside)
    with pytest.raises(SpaceError, match="a symbolic link to .*outside the results folder"):
        _prepare(tmp_path, tmp_path / "results")
    assert list(outside.iterdir()) == []
    inside = tmp_path / "results" / "kept"
    inside.mkdir()
    (study / "trials").unlink()
    (study / "trials").symlink_to(inside)  # a link that stays inside the results folder is fine
    assert _prepare(tmp_path, tmp_path / "results").study == "smoke"


@pytest.mark.parametrize("entry", ["optuna.journal", "checkpoints", "kerastuner", "plots", "tensorboard"])
def test_any_entry_of_the_study_folder_linking_out_of_the_results_folder_is_refused(tmp_path, entry):
    """Before, only the study, trials/, best/ and final/ were checked: Optuna appended to a
    linked journal wherever it led."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    study = tmp_path / "results" / "smoke"
    study.mkdir(parents=True)
    (study / entry).symlink_to(outside / entry)
    with pytest.raises(SpaceError, match=f"{entry}: a symbolic link to .*outside the results folder"):
        _prepare(tmp_path, tmp_path / "results")
    assert list(outside.iterdir()) == []


def test_a_shared_storage_refuses_an_edited_space_from_another_results_folder(tmp_path):
    import stand_in
    from cnnbench.space import parse_space

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    text = (SPACES / "smoke.yaml").read_text()
    first = parse_space(__import__("yaml").safe_load(text), "smoke.yaml")
    stand_in.run(first, tmp_path / "machine-a", study="shared", trials=1, storage=url)
    edited = tmp_path / "smoke.yaml"
    edited.write_text(text.replace("seed: ", "seed: 1", 1) if "seed: " in text else "seed: 7\n" + text)
    request = dict(space_file=str(edited), results=str(tmp_path / "machine-b"), study="shared", storage=url)
    with pytest.raises(SpaceError, match="study 'shared' in the storage was made with a different space"):
        prepare(SweepRequest(**request))
    assert not (tmp_path / "machine-b").exists()
    unchanged = tmp_path / "same.yaml"
    unchanged.write_text(text)
    assert prepare(SweepRequest(**{**request, "space_file": str(unchanged)})).study == "shared"


def test_a_shared_storage_keeps_the_data_fingerprint_and_refuses_other_data(tmp_path):
    import stand_in
    from cnnbench.engines.optuna import check_study_data
    from cnnbench.space import parse_space
    from cnnbench.training.data import DataError

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = parse_space(__import__("yaml").safe_load((SPACES / "smoke.yaml").read_text()), "smoke.yaml")
    stand_in.run(space, tmp_path / "machine-a", study="shared", trials=1, storage=url, data_fingerprint="abc/123")
    check_study_data("shared", url, "abc/123")  # the same data: nothing to say
    check_study_data("another", url, "def/456")  # a study the storage does not hold yet
    with pytest.raises(DataError, match="study 'shared' in the storage was made with other data "
                                        r"\(fingerprint abc/123, now def/456\)"):
        check_study_data("shared", url, "def/456")


def test_an_export_folder_swapped_in_while_another_sweep_puts_its_own_there(tmp_path, monkeypatch):
    import shutil

    from cnnbench.reports import export

    folder, mine = tmp_path / "saved_model", tmp_path / ".saved_model.1.tmp"
    mine.mkdir()
    (mine / "mine").write_text("1")
    real, raced = shutil.rmtree, []

    def rmtree_then_the_other_sweep_writes(path, *a, **k):
        real(path, *a, **k)
        if Path(path) == folder and not raced:  # the other sweep renames its folder in just now
            raced.append(1)
            folder.mkdir()
            (folder / "theirs").write_text("2")

    monkeypatch.setattr(export.shutil, "rmtree", rmtree_then_the_other_sweep_writes)
    export.swap_in(mine, folder)
    assert [p.name for p in folder.iterdir()] == ["mine"] and not mine.exists() and raced


def test_json_nested_too_deep_to_parse_is_unreadable_not_a_traceback(tmp_path):
    """A record, card, run.json or KerasTuner state file nested 100,000 deep makes Python's
    json raise RecursionError, which is neither OSError nor ValueError: every reader treats
    it as the unreadable file it is."""
    from cnnbench.engines.kerastuner.oracle import check_state_files
    from cnnbench.files import read_json
    from cnnbench.reports.predict import ModelError, _class_names
    from cnnbench.trials import StudyPaths, read_record, read_records

    deep = "[" * 100_000 + "]" * 100_000
    paths = StudyPaths(tmp_path / "study")
    paths.trials.mkdir(parents=True)
    (paths.trials / "trial-0000.json").write_text(deep)
    unreadable: list[str] = []
    assert read_records(paths, unreadable) == [] and unreadable == [f"{paths.trials / 'trial-0000.json'}: RecursionError"]
    assert read_record(paths.trials / "trial-0000.json") is None
    (tmp_path / "run.json").write_text(deep)
    assert read_json(tmp_path / "run.json") == {}
    (tmp_path / "model_card.json").write_text(deep)
    with pytest.raises(ModelError, match=r"model_card.json: not a readable model card \(RecursionError\)"):
        _class_names(tmp_path / "model.keras", 10)
    project = tmp_path / "kt"
    project.mkdir()
    (project / "oracle.json").write_text(deep)
    with pytest.raises(SpaceError, match=r"oracle.json: KerasTuner's state is torn or unreadable \(RecursionError"):
        check_state_files(project)


def test_a_results_folder_that_cannot_be_written_is_one_line_before_any_data_loads(tmp_path, monkeypatch, capsys):
    """Before: a traceback after TensorFlow and the data had loaded, at run.json's write. As
    root (CI) permissions do not stop writes, so the folder's answer is stated: os.access says no,
    as it does for a read-only mount or a folder of another user."""
    import cnnbench.sweep
    from cnnbench.cli import WRITE_FAILED, main

    results = tmp_path / "results"
    results.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: Path(path) != results and real_access(path, mode))

    def no_data(*a, **k):
        raise AssertionError("the data loaded before the folder was checked")

    monkeypatch.setattr(cnnbench.sweep, "load_data", no_data)
    code = main(["sweep", "--space", str(SPACES / "smoke.yaml"), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == WRITE_FAILED and "\n" not in err
    assert err.startswith(f"cnnbench: {results}: not writable, and a sweep writes its study there")
    assert list(results.iterdir()) == []  # nothing written
