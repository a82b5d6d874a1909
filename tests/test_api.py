"""The Python API as the README shows it, with the stand-in trainer in real child processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SPACES
from test_reliability import TESTS


def _gated_stand_in(tmp_path, monkeypatch, jpeg_root, *gates: str) -> None:
    """Trials' child processes may load stand_in:gated_train (tests/ on their path), its gate
    ``go`` (and ``gates``) open, the prebuilt stand-in model and the test images in place."""
    gate = tmp_path / "gate"
    gate.mkdir()
    for name in ("go", *gates):
        (gate / name).touch()
    monkeypatch.setenv("CNNBENCH_STAND_IN_DIR", str(gate))
    for name, value in __import__("stand_in").stand_in_model_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CNNBENCH_CIFAR10", str(jpeg_root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, jpeg_root):
    import importlib

    import cnnbench

    _gated_stand_in(tmp_path, monkeypatch, jpeg_root, "go-final")
    # the example as written; only the trainer its trials' child processes load is the stand-in
    monkeypatch.setattr(importlib.import_module("cnnbench.sweep"), "DEFAULT_TRAINER", "stand_in:gated_train")
    # the README's block itself, run where its relative paths hold (search_spaces/, results/)
    readme = (SPACES.parent / "README.md").read_text()
    block = readme.split("### From Python (a notebook)", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search_spaces").symlink_to(SPACES)
    example: dict = {}
    exec(compile(block, "README.md (From Python)", "exec"), example)
    space, study, model = example["space"], example["study"], example["model"]
    assert "learning_rate" in space.searched()
    assert study.path == Path("results/nb")  # load_study's, the block's last word on it
    board = study.leaderboard()
    assert len(board) == 3 and list(board["val_accuracy"]) == sorted(board["val_accuracy"], reverse=True)
    assert study.best_trial.val_accuracy == board["val_accuracy"].max()
    assert study.card.final_train_images == 1200 and study.final.state == "complete"
    assert model.count_params() == study.card.parameter_count
    assert study.card.to_dict() == json.loads((study.path / "best" / "model_card.json").read_text())
    assert study.write_report().exists() and len(study.progress()) == 3
    assert cnnbench.studies("results")["study"].tolist() == ["nb"]
    assert "in-process sweep" in study.run.command and study.run.to_dict()["command"] == study.run.command


def test_a_space_object_sweeps_as_its_file_would_with_its_changes(tmp_path, monkeypatch, jpeg_root):
    """cnnbench.sweep(space_or_path): a Space from load_space, changed in the notebook."""
    import cnnbench
    from cnnbench.space import SpaceError

    _gated_stand_in(tmp_path, monkeypatch, jpeg_root)
    space = cnnbench.load_space(SPACES / "smoke.yaml")
    changed = space.model_copy(update={"seed": 4321})
    study = cnnbench.sweep(changed, trials=1, results=tmp_path / "results", progress=False, final=False,
                           trainer="stand_in:gated_train")
    assert study.path.name == "smoke"  # named after the file it came from
    assert study.run.seed == 4321 and study.run.space_file == str(SPACES / "smoke.yaml")
    assert [r.seed for r in study.records] == [4321]  # trial 0 trains with the changed seed
    with pytest.raises(SpaceError, match="give cnnbench.sweep the file's path rather than a Space object"):
        from cnnbench.request import SweepRequest, prepare

        prepare(SweepRequest(space_file="smoke.yaml", space=changed, workers=2, results=str(tmp_path / "r")))


def test_reading_a_study_does_not_import_tensorflow(tmp_path):
    folder = tmp_path / "s"
    (folder / "trials").mkdir(parents=True)
    (folder / "run.json").write_text('{"space": {"params": {}}, "first_started_unix": 0}')
    code = ("import sys, cnnbench\n"
            f"study = cnnbench.load_study({str(folder)!r})\n"
            "print(len(study.records), len(study.leaderboard()), study.card, 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["0", "0", "None", "False"], proc.stdout + proc.stderr


def test_load_study_refuses_a_folder_that_is_not_one(tmp_path):
    import cnnbench
    from cnnbench.space import SpaceError

    with pytest.raises(SpaceError, match="no study here"):
        cnnbench.load_study(tmp_path)


def test_cnnbench_sweep_stays_the_api_function_after_the_sweep_module_is_imported(monkeypatch):
    import cnnbench
    import cnnbench.sweep  # noqa: F401 (binds the name cnnbench.sweep to the module)
    from cnnbench import api

    seen = []
    monkeypatch.setattr(api, "sweep", lambda *a, **k: seen.append((a, k)) or "study")
    assert cnnbench.sweep("space.yaml", study="s") == "study" and seen == [(("space.yaml",), {"study": "s"})]


def test_a_sweep_whose_rungs_validate_their_last_epoch_only_ends_with_its_pictures(tmp_path, monkeypatch, jpeg_root):
    """The NO_START_WITH hour of 2026-12-07 (905a008) exported its model, then stopped with a
    KeyError drawing progress.png from rung runs without a score before their last epoch."""
    import cnnbench

    _gated_stand_in(tmp_path, monkeypatch, jpeg_root)
    space = cnnbench.load_space(SPACES / "smoke.yaml")
    rungs = [{"train_images": 300, "epochs": 2, "validate": "last_epoch"},
             {"train_images": 900, "epochs": 2, "validate": "last_epoch"}]
    space = space.model_copy(update={"search": space.search.model_copy(update={"rungs": rungs})})
    study = cnnbench.sweep(space, trials=4, results=tmp_path / "results", progress=False,
                           trainer="stand_in:gated_train")
    assert {r.rung for r in study.records} == {0, 1} and study.final.state == "complete"
    assert all([("val_accuracy" in h) for h in r.history] == [False, True] for r in study.records)
    assert (study.path / "progress.png").exists() and (study.path / "report.html").exists()
