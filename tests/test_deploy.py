"""The exported model as ONNX and LiteRT files: converted from a real model, run in fresh
processes that refuse TensorFlow, compared with model.keras, and used by predict."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnbench.deploy import convert, verify
from cnnbench.training.images import resize

pytestmark = pytest.mark.skipif(bool(convert.missing_packages("onnx") + convert.missing_packages("litert")),
                                reason="the export extra is not installed (pip install -e '.[export]')")

@pytest.fixture(scope="module", autouse=True)
def deployment_files_on():
    """conftest turns the files off for every other test's exports."""
    before = os.environ.get(convert.SWITCH_ENV)
    os.environ[convert.SWITCH_ENV] = "1"
    yield
    os.environ[convert.SWITCH_ENV] = before if before is not None else "0"


HEAVY = ["tensorflow", "keras", "pandas", "rich", "pydantic", "yaml", "optuna", "keras_tuner", "matplotlib"]


def without(modules: list[str], code: str) -> list[str]:
    """A fresh Python running ``code`` in which importing any of ``modules`` fails."""
    refuse = "import sys\nfor m in %r: sys.modules[m] = None\n" % (modules,)
    return [sys.executable, "-c", refuse + code]


@pytest.mark.parametrize("shape", [(64, 48), (17, 33), (20, 20), (100, 7), (32, 32)])
def test_the_numpy_resize_is_tensorflows_antialiased_resize(shape):
    import tensorflow as tf

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resize(pixels, 32).astype(int)
    theirs = np.clip(np.rint(tf.image.resize(pixels, (32, 32), method="bilinear", antialias=True).numpy()), 0, 255)
    assert ours.shape == (32, 32, 3)
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() >= 0.99  # float rounding at .5 only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small real network with six-view TTA, saved as the export saves model.keras, and
    images of its size with labels."""
    import keras

    from cnnbench.knobs import default_config
    from cnnbench.model import build_model, with_tta
    from cnnbench.training.train import save_model

    folder = tmp_path_factory.mktemp("deploy")
    config = {**default_config(), "stages": 1, "base_filters": 8, "batch_norm": True, "activation": "gelu"}  # exact GELU: Erfc
    keras.utils.set_random_seed(3)
    save_model(with_tta(build_model(config, 10, 32, dtype_policy="float32"), "mirror_translate"),
               folder / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 120)
    return folder, keras.models.load_model(folder / "model.keras", compile=False), x, y


def test_the_twin_computes_what_model_keras_does_without_a_resize_op_or_bf16(tiny):
    from cnnbench.knobs import default_config
    from cnnbench.model import build_model, with_tta

    _, model, x, _ = tiny
    twin = convert.deployment_twin(model, 32)
    assert tuple(twin.inputs[0].shape) == (None, 32, 32, 3)
    assert np.abs(twin.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 1e-6
    mixed = with_tta(build_model({**default_config(), "stages": 1, "base_filters": 8}, 10, 32,
                                 dtype_policy="mixed_bfloat16"), "mirror")
    layers = _all_layers(convert.deployment_twin(mixed, 32))
    assert {layer.dtype_policy.name for layer in layers} <= {"float32"}
    assert not [layer for layer in layers if type(layer).__name__ == "Resizing"]


def _all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out += [layer, *(_all_layers(layer) if hasattr(layer, "layers") else [])]
    return out


@pytest.fixture(scope="module")
def checked(tiny):
    folder, model, x, y = tiny
    return verify.deploy_and_check(model, folder, x, y, calibration=x, quantize=("dynamic", "int8"))


def test_float32_files_agree_with_model_keras_in_a_process_without_tensorflow(checked, tiny):
    folder = tiny[0]
    for runtime, name in (("onnx", "model.onnx"), ("litert", "model.tflite")):
        row = checked[runtime]
        assert row["status"] == "ok", row
        assert row["file"] == name and (folder / name).stat().st_size == row["size_bytes"] > 10_000
        assert row["agreement"] >= verify.GOALS["agreement"] and row["max_prob_diff"] <= verify.GOALS["max_prob_diff"]
        assert row["images"] == 120 and row["accuracy"] == checked["keras"]["accuracy"]
        assert row["latency_ms"]["batch_1"] > 0 and row["latency_ms"]["batch_64"] > 0
    assert checked["keras"]["status"] == "reference" and checked["checked_on"] == "the first 120 test images"


def test_quantized_litert_files_record_their_own_accuracy(checked, tiny):
    for q in ("dynamic", "int8"):
        row = checked[f"litert-{q}"]
        assert row["file"].startswith(f"model.{q}.tflite") and 0.0 <= row["accuracy"] <= 1.0, row
        assert row["status"] in ("ok", "failed") and "agreement" in row
    # (sizes: a network this small is mostly graph, so int8 saves nothing here; the README has the real one's)


def test_the_check_process_cannot_import_tensorflow():
    code = "from cnnbench.deploy.check import refuse_tensorflow\nrefuse_tensorflow()\nimport tensorflow\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "ModuleNotFoundError: import of tensorflow halted" in done.stderr


def test_predict_with_each_file_gives_model_keras_classes_with_only_numpy_pillow_and_the_runtime(
        checked, tiny, tmp_path):
    from PIL import Image

    from cnnbench.reports.predict import classify, load

    folder, _, x, _ = tiny
    images = []
    for i in range(6):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(images[-1])
    Image.fromarray(np.kron(x[6], np.ones((2, 3, 1), np.uint8))).save(tmp_path / "big.png")  # resized first
    images.append(tmp_path / "big.png")
    keras_classes = [p.top[0][0] for p in classify(load(folder / "model.keras"), [str(p) for p in images])]
    for name in ("model.onnx", "model.tflite"):
        done = subprocess.run(without(HEAVY, "from cnnbench.reports.predict import main\nraise SystemExit(main())")
                              + [str(folder / name), *map(str, images), "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert [r["predictions"][0]["class"] for r in json.loads(done.stdout)] == keras_classes, name


def test_cnnbench_predict_and_evaluate_run_a_deployment_file_without_tensorflow(checked, tiny, tmp_path):
    from PIL import Image

    folder, _, x, y = tiny
    for i in range(4):  # a labelled folder: <class>/<images>
        (tmp_path / "c" / f"c{y[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "c" / f"c{y[i]}" / f"{i}.png")
    (folder / "model_card.json").write_text(json.dumps({"classes": [f"c{k}" for k in range(10)]}))
    code = ("from cnnbench.cli import main\nimport sys\n"
            "codes = [main(sys.argv[1:4]), main(['evaluate', sys.argv[2], sys.argv[4], '--json'])]\n"
            "raise SystemExit(max(codes))")
    for name in ("model.onnx", "model.tflite"):
        done = subprocess.run(without(["tensorflow", "keras"], code)
                              + ["predict", str(folder / name), str(tmp_path / "c"), str(tmp_path / "c")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if ".png: " in line]
        assert len(lines) == 4 and all(line.split(": ")[1].startswith("c") for line in lines), done.stdout
        assert '"accuracy"' in done.stdout and '"images": 4' in done.stdout
    (folder / "model_card.json").unlink()


def test_a_file_that_fails_its_check_is_named_and_set_aside(tiny, monkeypatch):
    folder, model, x, y = tiny
    monkeypatch.setitem(verify.GOALS, "agreement", 1.01)  # no file can meet it
    block = verify.deploy_and_check(model, folder, x, y, calibration=x, keep_existing=True)  # the files as written
    assert block["onnx"]["status"] == "failed" and "top-1 agreement" in block["onnx"]["reason"]
    assert block["onnx"]["file"] == "model.onnx.failed" and (folder / "model.onnx.failed").exists()
    assert not (folder / "model.onnx").exists() and (folder / "model.keras").exists()
    assert any("model.onnx.failed: FAILED its check" in line for line in verify.summary_lines(block))
    convert.remove_stale(folder, quantize=("dynamic",))  # what a new export not asking for int8 does first
    assert not (folder / "model.int8.tflite").exists() and (folder / "model.dynamic.tflite").exists()
    assert not (folder / "model.onnx.failed").exists()


def test_missing_packages_skip_the_file_and_say_how_to_install(tiny, monkeypatch, tmp_path):
    _, model, x, y = tiny
    monkeypatch.setattr(convert, "missing_packages", lambda runtime: ["onnxruntime"] if runtime == "onnx" else [])
    written = convert.write_deployment_files(model, tmp_path, 32)
    assert written[0].path is None and "onnxruntime" in written[0].skipped and ".[export]" in written[0].skipped
    assert written[1].path == tmp_path / "model.tflite" and written[1].path.exists()


def test_a_sweep_exports_checked_files_and_verify_export_adds_a_quantized_one(tmp_path, monkeypatch, jpeg_root):
    from conftest import SPACES, quick_sweep
    from cnnbench.cli import main

    quick_sweep(SPACES / "smoke.yaml", tmp_path, monkeypatch, jpeg_root, study="s", trials=2)
    best = tmp_path / "s" / "best"
    card = json.loads((best / "model_card.json").read_text())
    assert card["runtimes"]["onnx"]["status"] == "ok" and card["runtimes"]["litert"]["status"] == "ok"
    assert "## Runtimes" in (best / "model_card.md").read_text()
    assert main(["verify-export", "s", "--results", str(tmp_path), "--quantize", "dynamic"]) == 0
    card = json.loads((best / "model_card.json").read_text())
    assert card["runtimes"]["litert-dynamic"]["file"] == "model.dynamic.tflite"
    assert (best / "model.dynamic.tflite").exists() and card["test"]["accuracy"] > 0
