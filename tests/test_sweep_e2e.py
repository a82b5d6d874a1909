"""End to end, as a user runs it: smoke sweep, leaderboard rows, resume, export, reuse."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cnnbench.cli import main
from conftest import SPACES, quick_sweep, run_cli, smoke_study


def cli(capsys, *args: str):
    """``cnnbench ARGS`` in this process: (exit code, stdout, stderr). For commands that
    install no signal handler (everything but a sweep that gets past its validation)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def swept(tmp_path_factory, jpeg_root):
    """The smoke space through Optuna and the real trainer, as a user runs it: 3 trials."""
    s = smoke_study("optuna", tmp_path_factory, jpeg_root)
    return s.results, s.first, s.before, s.env


def test_leaderboard_rows_and_columns(swept):
    results, first, board, _ = swept
    assert len(board) == 3 and set(board["trial"]) == {0, 1, 2}
    assert set(board["state"]) <= {"complete", "pruned", "failed"}
    for column in ["trial", "state", "engine", "stages", "base_filters", "optimizer", "momentum", "learning_rate",
                   "val_accuracy", "val_loss", "epochs_run", "train_seconds", "images_per_s", "parameter_count", "flops"]:
        assert column in board.columns, column
    done = board[board["state"] == "complete"]
    assert list(done["val_accuracy"]) == sorted(done["val_accuracy"], reverse=True)  # best first
    assert (done["parameter_count"] > 0).all() and (done["images_per_s"] > 0).all() and (done["epochs_run"] == 2).all()
    # momentum is conditional: empty exactly where the optimizer is not sgd
    assert (board["momentum"].isna() == (board["optimizer"] != "sgd")).all()
    assert "exported model:" in first.stdout and "test accuracy" in first.stdout
    md = (results / "smoke" / "leaderboard.md").read_text()
    assert "| trial | state | engine |" in md
    assert "smoke" in (results / "leaderboard.md").read_text()


def test_model_card_describes_itself(swept):
    results = swept[0]
    card = json.loads((results / "smoke" / "best" / "model_card.json").read_text())
    for key in ("hyperparameters", "config", "validation", "test", "parameter_count", "flops_per_image", "training",
                "data", "space_hash", "seed", "versions", "git_revision"):
        assert key in card, key
    test = card["test"]
    assert test["images"] == 500 and 0.0 <= test["accuracy"] <= 1.0
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 500
    assert test["accuracy"] == pytest.approx(confusion.trace() / 500)
    assert set(test["per_class_accuracy"]) == set(card["classes"])
    board = pd.read_csv(results / "smoke" / "leaderboard.csv")
    assert card["trial"] == int(board.iloc[0]["trial"])  # the best row is the exported one
    assert (results / "smoke" / "best" / "model_card.md").read_text().startswith("# Model card")
    # the sweep's own export wrote the deployment files and checked them without TensorFlow
    for runtime, name in (("onnx", "model.onnx"), ("litert", "model.tflite")):
        row = card["runtimes"][runtime]
        assert row["status"] == "ok" and row["agreement"] >= 0.999 and (results / "smoke" / "best" / name).exists()
    assert "model.onnx: ok, top-1 agreement" in swept[1].stderr


def test_predict_real_and_broken_images(swept, jpeg_root, tmp_path, capsys):
    from PIL import Image

    results = swept[0]
    model = str(results / "smoke" / "best" / "model.keras")
    real = str(next((jpeg_root / "test" / "ship").iterdir()))
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((70, 90), 128, np.uint8), "L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 20, 4), np.uint8), "RGBA").save(rgba)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    missing = tmp_path / "missing.png"

    code, out, err = cli(capsys, "predict", model, real, str(gray), str(rgba), "--top", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(real + ": ") and lines[0].count(",") == 2

    code, text, _ = cli(capsys, "predict", model, str(broken), real, str(missing), "--json")
    assert code == 1
    out = json.loads(text)
    assert [o["image"] for o in out] == [str(broken), real, str(missing)]
    assert out[0]["error"] == "not an image PIL can read" and out[2]["error"] == "no such file"
    assert out[1]["error"] is None and len(out[1]["predictions"]) == 1
    assert out[1]["predictions"][0]["class"] in json.loads(
        (results / "smoke" / "best" / "model_card.json").read_text())["classes"]


def test_leaderboard_command(swept, capsys):
    results = swept[0]
    code, out, _ = cli(capsys, "leaderboard", "smoke", "--results", str(results))
    assert code == 0 and "smoke: 3 trials" in out
    code, out, _ = cli(capsys, "leaderboard", "--results", str(results))
    assert code == 0 and "smoke" in out
    code, _, err = cli(capsys, "leaderboard", "nope", "--results", str(results))
    assert code == 2 and "no leaderboard for study 'nope'" in err


def test_changed_space_refuses_to_resume(swept, tmp_path, capsys):
    results = swept[0]
    changed = tmp_path / "smoke.yaml"
    changed.write_text((SPACES / "smoke.yaml").read_text().replace("seed: 7", "seed: 8"))
    code, _, err = cli(capsys, "sweep", "--space", str(changed), "--study", "smoke", "--results", str(results))
    assert code == 2 and "was run with a different space" in err  # refused before any signal handler


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_exports(tmp_path, jpeg_root):
    """SIGINT mid-sweep: exit 130, finished trials ranked, best exported; the rerun continues."""
    import os
    import signal
    import time

    results = tmp_path / "results"
    args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", str(SPACES / "smoke.yaml"),
            "--study", "interrupted", "--results", str(results), "--trials", "30"]
    env = {**os.environ, "CNNBENCH_CIFAR10": str(jpeg_root)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    board = results / "interrupted" / "leaderboard.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not board.exists() or len(pd.read_csv(board)) < 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, out + err
    rows = pd.read_csv(board)
    assert (rows["state"] == "complete").sum() >= 1 and len(rows) < 30
    assert (results / "interrupted" / "best" / "model.keras").exists()
    assert "run the same command again to continue" in out


@pytest.mark.slow
def test_two_optuna_worker_processes_share_one_study(tmp_path, jpeg_root):
    results = tmp_path / "results"
    proc = run_cli("sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "shared", "--results", str(results),
                   "--trials", "4", "--workers", "2", env={"CNNBENCH_CIFAR10": str(jpeg_root)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = pd.read_csv(results / "shared" / "leaderboard.csv")
    assert sorted(board["trial"]) == list(range(len(board))) and 4 <= len(board) <= 5  # a racing worker may add one
    assert (board["state"] == "complete").sum() >= 4
    assert "shared worker 1" in proc.stdout and "shared worker 2" in proc.stdout
    assert (results / "shared" / "best" / "model.keras").exists()


def test_predict_on_odd_formats_gives_the_class_of_the_plain_picture(swept, jpeg_root, tmp_path, capsys):
    from PIL import Image

    from test_images import odd_files

    results = swept[0]
    model = str(results / "smoke" / "best" / "model.keras")
    source = next((jpeg_root / "test" / "horse").iterdir())
    picture = np.asarray(Image.open(source).convert("RGB").resize((64, 64), Image.BICUBIC))
    folder = tmp_path / "odd"
    folder.mkdir()
    odd_files(folder, picture)
    code, out, err = cli(capsys, "predict", model, str(folder), "--json", "--top", "10")
    assert code == 0, err
    probs = {Path(o["image"]).name: {p["class"]: p["probability"] for p in o["predictions"]}
             for o in json.loads(out)}
    assert set(probs) == {"rgb48.png", "gray16.png", "rotated.jpg", "rgba.png", "palette.png", "cmyk.jpg",
                          "lossless.webp", "progressive.jpg", "animated.gif", "plain.png"}
    plain = probs.pop("plain.png")
    ranked = sorted(plain, key=plain.get, reverse=True)
    decisive = plain[ranked[0]] - plain[ranked[1]] > 0.05
    for name, p in probs.items():
        if name == "gray16.png":
            continue  # a grayscale picture is another picture
        assert sum(abs(p[c] - plain[c]) for c in plain) < 0.2, name
        if decisive:
            assert max(p, key=p.get) == ranked[0], name


def test_predict_agrees_with_the_model_cards_test_evaluation_on_bigger_images(tmp_path, jpeg_root, monkeypatch,
                                                                             capsys):
    """Images that are not 32x32 are resized the same way for training, test and predict:
    the confusion matrix rebuilt from `cnnbench predict` equals the model card's (the real
    trainer, in this process, on 240 images)."""
    from PIL import Image

    data = tmp_path / "big"
    for split, per_class in (("train", 24), ("test", 8)):
        for folder in sorted((jpeg_root / split).iterdir()):
            (data / split / folder.name).mkdir(parents=True)
            for source in sorted(folder.iterdir())[:per_class]:
                image = Image.open(source).convert("RGB").resize((48, 48), Image.BICUBIC)
                image.save(data / split / folder.name / f"{source.stem}.png")
    space = tmp_path / "big.yaml"
    space.write_text((SPACES / "smoke.yaml").read_text().replace("  train_subset: 1200", "  train_subset: null")
                     .replace("  test_subset: 500", "  test_subset: null"))
    study = quick_sweep(space, tmp_path / "results", monkeypatch, data, trainer=None, study="big", trials=1)
    card = study.card
    code, out, err = cli(capsys, "predict", str(study.path / "best" / "model.keras"), str(data / "test"), "--json")
    assert code == 0, err
    names = card.classes
    confusion = np.zeros((len(names), len(names)), int)
    for o in json.loads(out):
        confusion[names.index(Path(o["image"]).parent.name), names.index(o["predictions"][0]["class"])] += 1
    assert confusion.sum() == 80
    assert confusion.tolist() == card.test["confusion_matrix"]
    code, out, _ = cli(capsys, "evaluate", str(study.path / "best" / "model.keras"), str(data / "test"), "--json")
    assert code == 0 and json.loads(out)["confusion_matrix"] == confusion.tolist()


def test_two_objective_sweep_marks_its_front_and_exports_a_chosen_trial(tmp_path, jpeg_root, monkeypatch, capsys):
    space = tmp_path / "two.yaml"
    space.write_text((SPACES / "smoke.yaml").read_text().replace("objective: val_accuracy",
                                                                   "objective: val_accuracy\nminimize: [latency_ms]"))
    results = tmp_path / "results"
    study = quick_sweep(space, results, monkeypatch, jpeg_root, study="two", trials=4)
    board = study.leaderboard()
    front = board[board["pareto"]]
    assert len(front) >= 1 and front["latency_ms"].notna().all()
    assert (results / "two" / "plots" / "accuracy_vs_cost.png").exists() and (results / "two" / "report.html").exists()
    chosen = int(front.sort_values("latency_ms").iloc[0]["trial"])
    code, _, err = cli(capsys, "export", "two", "--results", str(results), "--trial", str(chosen))
    assert code == 0, err
    card = json.loads((results / "two" / "best" / "model_card.json").read_text())
    assert card["trial"] == chosen and card["chosen"].startswith("by hand")
    code, _, err = cli(capsys, "export", "two", "--results", str(results), "--trial", "99")
    assert code == 2 and "no trial 99" in err
    code, _, err = cli(capsys, "sweep", "--space", str(space), "--study", "two-kt", "--results", str(results),
                       "--engine", "kerastuner")
    assert code == 2 and "KerasTuner can only add objectives" in err


@pytest.mark.slow
def test_tensorboard_logs_one_run_per_trial_that_trained(tmp_path, jpeg_root):
    results = tmp_path / "results"
    proc = run_cli("sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "tb", "--results", str(results),
                   "--trials", "2", "--no-final", "--tensorboard", env={"CNNBENCH_CIFAR10": str(jpeg_root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = results / "tb" / "tensorboard"
    runs = sorted(p.name for p in logs.iterdir())  # one TensorBoard run folder per trial that trained
    assert runs and runs == [f"trial-{n:04d}" for n in range(len(runs))]
    assert all(list((logs / r).rglob("events.out.tfevents.*")) for r in runs)


def test_optunas_own_api_reads_the_study(swept):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    results = swept[0]
    study = optuna.load_study(study_name="smoke",
                              storage=JournalStorage(JournalFileBackend(str(results / "smoke" / "optuna.journal"))))
    board = pd.read_csv(results / "smoke" / "leaderboard.csv")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == int((board["state"] == "complete").sum())
