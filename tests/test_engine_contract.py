"""One contract, both engines: the smoke space through Optuna and KerasTuner must give the
same kind of study: rows and states, resume, export, a model that loads in a fresh process.

The studies are swept in this process by the gated stand-in (``conftest.stand_in_study``):
the engines, records, leaderboards and export are real, only the training is not (the
real trainer through the real command is test_sweep_e2e's)."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import stand_in_study

ENGINES = ["optuna", "kerastuner"]


@pytest.fixture(scope="module", params=ENGINES)
def study(request, tmp_path_factory, jpeg_root):
    swept = stand_in_study(request.param, tmp_path_factory, jpeg_root)
    return request.param, swept.folder, swept.before, swept.results


def test_rows_states_and_engine_column(study):
    engine, folder, _, _ = study
    board = pd.read_csv(folder / "leaderboard.csv")
    assert sorted(board["trial"]) == [0, 1, 2, 3]
    assert set(board["engine"]) == {engine}
    assert set(board["state"]) <= {"complete", "pruned", "failed"}
    done = board[board["state"] == "complete"]
    assert len(done) >= 1 and done["val_accuracy"].between(0, 1).all()
    assert (done["epochs_run"] == 2).all() and (done["parameter_count"] > 0).all()
    assert board["batch_norm"].dropna().isin([True, False]).all()  # booleans, not 0/1
    assert (board["momentum"].isna() == (board["optimizer"] != "sgd")).all()


def test_resume_keeps_earlier_trials(study):
    _, folder, before, _ = study
    after = pd.read_csv(folder / "leaderboard.csv").set_index("trial")
    for _, row in before.iterrows():
        assert after.loc[row["trial"], "val_accuracy"] == pytest.approx(row["val_accuracy"])
        assert after.loc[row["trial"], "learning_rate"] == pytest.approx(row["learning_rate"])


def test_export_names_the_engine_and_the_best_trial(study):
    engine, folder, _, _ = study
    card = json.loads((folder / "best" / "model_card.json").read_text())
    assert card["engine"] == engine
    board = pd.read_csv(folder / "leaderboard.csv")
    assert card["trial"] == int(board.iloc[0]["trial"])


def test_both_engines_exports_load_in_one_fresh_process(tmp_path_factory, jpeg_root):
    """model.keras with plain Keras (safe mode, any image size, probabilities), and
    best/saved_model/ with plain TensorFlow giving the same probabilities, for each engine's
    export, in one process that has imported nothing of cnnbench."""
    folders = [stand_in_study(engine, tmp_path_factory, jpeg_root).folder for engine in ENGINES]
    image = next((jpeg_root / "test" / "cat").iterdir())
    code = ("import sys, numpy as np, keras, tensorflow as tf; from PIL import Image\n"
            "x = np.asarray(Image.open(sys.argv[1]).convert('RGB'))[None]\n"
            "batch = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)\n"
            "for best in sys.argv[2:]:\n"
            "    m = keras.models.load_model(best + '/model.keras', safe_mode=True)\n"
            "    p, q = m.predict(x, verbose=0), m.predict(np.zeros((3, 64, 48, 3), np.uint8), verbose=0)\n"
            "    loaded = tf.saved_model.load(best + '/saved_model')  # kept: its variables live as long as it does\n"
            "    served = loaded.serve(tf.constant(batch)).numpy()\n"
            "    print(p.shape, q.shape, round(float(p.sum()), 3), m.count_params(),\n"
            "          float(np.abs(served - m.predict(batch, verbose=0)).max()) < 1e-5)\n"
            "print('cnnbench' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(image), *[str(f / "best") for f in folders]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cards = [json.loads((f / "best" / "model_card.json").read_text()) for f in folders]
    assert proc.stdout.strip().splitlines()[-3:] == [
        *[f"(1, 10) (3, 10) 1.0 {c['parameter_count']} True" for c in cards], "False"]


def test_global_leaderboard_names_the_engine(study):
    engine, folder, _, results = study
    text = (results / "leaderboard.md").read_text()
    assert f"| smoke | {engine} |" in text
