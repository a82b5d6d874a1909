"""Broken data, broken models and odd results folders: one clear line, exit 2, nothing written."""
from __future__ import annotations

import json
import pickle
import re
import zipfile

import numpy as np
import pytest

from cnnbench.training.data import DataError, load_data
from cnnbench.space import Data
from conftest import SPACES, run_cli


def image_folder(root, classes=("a", "b"), per_class=3, size=16):
    from PIL import Image

    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_unreadable_images_are_skipped_and_named(tmp_path):
    root = image_folder(tmp_path / "data")
    (root / "train" / "a" / "text.jpg").write_text("not an image")
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "b" / "whole.jpg", quality=90)
    whole = (root / "train" / "b" / "whole.jpg").read_bytes()
    (root / "train" / "b" / "cut.jpg").write_bytes(whole[: len(whole) * 6 // 10])  # a download cut short
    bundle = load_data(Data(path=str(root), validation_fraction=0.3, image_size=16), seed=0)
    assert len(bundle.y_train) + len(bundle.y_val) == 7  # 6 + whole.jpg; the two broken files left out
    assert len(bundle.skipped) == 2
    assert any("text.jpg: not an image" in s for s in bundle.skipped)
    assert any("cut.jpg: broken image data" in s for s in bundle.skipped)


@pytest.mark.parametrize("damage,message", [
    (lambda r: [p.unlink() for p in (r / "train" / "b").iterdir()], "train/b: no images"),
    (lambda r: (r / "test" / "c").mkdir(), "train: no folder for class(es) c, which test/ has"),
    (lambda r: [p.unlink() for p in (r / "test" / "a").iterdir()], "test/a: no images"),
    (lambda r: [p.write_text("x") for p in (r / "test" / "a").iterdir()], "no readable image for class(es) a"),
])
def test_folder_problems_are_one_error(tmp_path, damage, message):
    root = image_folder(tmp_path / "data")
    damage(root)
    with pytest.raises(DataError, match=re.escape(message)):
        load_data(Data(path=str(root), image_size=16), seed=0)


def test_a_refused_pickle_in_batches_meta_is_an_error_not_ignored(tmp_path):
    import os

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"labels": [i % 10 for i in range(20)], b"data": np.zeros((20, 3072), np.uint8)}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}))
    with pytest.raises(DataError, match="batches.meta: refusing to unpickle posix.system"):
        load_data(Data(path=str(folder)), seed=0)


def test_data_and_cache_problems_exit_2_and_write_no_study(tmp_path, monkeypatch, capsys):
    """`cnnbench sweep` in this process (its stop handlers saved and put back around it)."""
    import signal

    from cnnbench.cli import main

    results = tmp_path / "results"
    base = ["sweep", "--space", str(SPACES / "smoke.yaml"), "--results", str(results)]
    cases = [({"CNNBENCH_CIFAR10": str(tmp_path / "nowhere")}, "nowhere: not found"),
             ({"CNNBENCH_CIFAR10": str(image_folder(tmp_path / "d", size=32)), "CNNBENCH_CACHE": "/dev/null/cache"},
              "decode cache is not writable")]
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b partial download")
    cases.append(({"CNNBENCH_CIFAR10": str(archive)}, "is not the published"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for env, message in cases:
        capsys.readouterr()
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            try:
                code = main(base)
            finally:
                for s, handler in handlers.items():
                    signal.signal(s, handler)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (env, lines)
        assert not results.exists()


def test_a_results_folder_with_a_foreign_leaderboard_is_refused(tmp_path):
    results = tmp_path / "mine"
    results.mkdir()
    (results / "leaderboard.md").write_text("# my own notes\n")
    proc = run_cli("sweep", "--space", str(SPACES / "smoke.yaml"), "--results", str(results))
    assert proc.returncode == 2 and "was not written by cnnbench" in proc.stderr
    assert (results / "leaderboard.md").read_text() == "# my own notes\n"


def _lambda_model(path):
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs)
    keras.Model(inputs, outputs).save(path)


def _flat_model(path):
    import keras

    inputs = keras.Input((784,))
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(inputs)).save(path)


def test_anything_that_is_not_a_cnnbench_model_is_one_line(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    text = tmp_path / "text.keras"
    text.write_text("hello")
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "not a model")
    folder = tmp_path / "folder.keras"
    folder.mkdir()
    lam = tmp_path / "lambda" / "model.keras"
    lam.parent.mkdir()
    _lambda_model(lam)
    flat = tmp_path / "flat" / "model.keras"
    flat.parent.mkdir()
    _flat_model(flat)
    from cnnbench.reports.predict import ModelError, load

    cases = [(text, "not a usable Keras model"), (empty, "not a usable Keras model"),
             (other_zip, "not a usable Keras model"), (folder, "a folder, not a model file"),
             (tmp_path / "missing.keras", "no such model file"), (lam, "not a usable Keras model"),
             (flat, "expects input (None, 784)")]
    for model, message in cases:
        with pytest.raises(ModelError) as err:
            load(model)
        assert str(err.value).startswith(f"{model}: ") and message in str(err.value) and "\n" not in str(err.value)
    # and as a user sees it: one line, exit 2, from both commands
    from cnnbench.cli import main

    for command in (["predict", str(lam), str(image)], ["evaluate", str(text), str(tmp_path)]):
        capsys.readouterr()
        code = main(command)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "not a usable Keras model" in lines[0], lines


@pytest.mark.parametrize("classes,message", [(["a", "b"], "names 2 classes, but the model has 10 outputs"),
                                             ("abc", "'classes' must be a list of class names, not str")])
def test_a_model_card_that_does_not_fit_the_model_is_refused(tmp_path, classes, message):
    from cnnbench.knobs import default_config
    from cnnbench.model import build_model
    from cnnbench.reports.predict import ModelError, load

    path = tmp_path / "model.keras"
    build_model({**default_config(), "stages": 1, "base_filters": 4}).save(path)
    (tmp_path / "model_card.json").write_text(json.dumps({"classes": classes}))
    with pytest.raises(ModelError, match=message):
        load(path)
