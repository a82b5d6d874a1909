"""``model.keras`` as ONNX and LiteRT files (TensorFlow side).

Both converters need a graph of ops they know. ``model.keras`` resizes any input to its
training size with an antialiased ``Resizing`` layer, which TensorFlow runs as its
``ScaleAndTranslate`` op: neither tf2onnx nor the LiteRT converter has it (a file that
"converts" with it fails to load). So the files are made from a **twin at the training
size**: the same layers and weights, its input fixed at ``image_size x image_size``, and the
resize (an identity at that size) replaced by a cast to float32, the standardization by the
same scale and offset held as constants (Keras' tensors become extra ONNX inputs). Images of another size are
resized before they reach the file, by ``cnnbench.training.images.resize``: the NumPy copy of
the same antialiased resize, the one training and ``cnnbench predict`` use. The preprocessing
(scaling, standardizing) and the test-time augmentation stay inside, as in ``model.keras``.
Every layer of the twin computes in float32 (a bf16 policy is a training speed-up).

ONNX comes from Keras' own ``model.export(format="onnx")``: tf2onnx's ``from_keras`` does not
work with Keras 3 (tf2onnx#2348), and the Keras route is the one Keras' CI tests with current
TensorFlow and onnxruntime. LiteRT comes from a SavedModel of the twin through
``TFLiteConverter.from_saved_model`` with built-in ops only, so the plain ``ai-edge-litert``
interpreter runs it (no Flex delegate).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.files import temporary_name

# Quantized LiteRT files: ``dynamic`` stores weights as int8 (computes in float); ``int8``
# also quantizes activations, calibrated on training images (never test images).
QUANTIZATIONS = ("dynamic", "int8")
CALIBRATION_IMAGES = 256
EXTRA_HINT = "pip install -e '.[export]'"
# CNNBENCH_DEPLOY_FILES=0: no deployment files (the test suite's sweeps, which check them once on their own)
SWITCH_ENV = "CNNBENCH_DEPLOY_FILES"


@dataclass
class Written:
    """One deployment file: where it went, or why it was not written."""
    runtime: str            # onnx | litert | litert-dynamic | litert-int8
    path: Path | None
    skipped: str = ""


def file_name(runtime: str) -> str:
    """model.onnx, model.tflite, model.dynamic.tflite, model.int8.tflite (and model.keras, the reference)."""
    named = {"keras": "model.keras", "onnx": "model.onnx", "litert": "model.tflite"}
    return named.get(runtime) or f"model.{runtime.partition('-')[2]}.tflite"


def switched_off() -> bool:
    return os.environ.get(SWITCH_ENV, "1") == "0"


def missing_packages(runtime: str) -> list[str]:
    """What this environment lacks to write and check a file for ``runtime``."""
    needed = ["tf2onnx", "onnx", "onnxruntime"] if runtime == "onnx" else ["ai_edge_litert"]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def deployment_twin(model, image_size: int):
    """``model`` (a loaded model.keras) rebuilt for the converters: float32, its input
    ``(batch, image_size, image_size, 3)`` uint8, its in-graph resize a cast."""
    import keras

    config = _for_deployment(model.get_config(), image_size)
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def _for_deployment(node, image_size: int):
    """The functional config ``node`` with fixed-size inputs, no Resizing and float32
    policies, at every depth (the test-time augmentation nests the network as a layer)."""
    if isinstance(node, list):
        return [_for_deployment(item, image_size) for item in node]
    if isinstance(node, str):
        return "float32" if node in ("mixed_bfloat16", "mixed_float16") else node
    if not isinstance(node, dict):
        return node
    out = {key: _for_deployment(value, image_size) for key, value in node.items()}
    kind, config = out.get("class_name"), out.get("config")
    if kind == "InputLayer" and isinstance(config, dict) and config.get("batch_shape"):
        config["batch_shape"] = [None, image_size, image_size, *config["batch_shape"][3:]]
    if kind == "Resizing" and isinstance(config, dict):  # the identity at the training size
        out["class_name"], out["module"] = "Rescaling", "keras.layers"
        out["config"] = {"name": config["name"], "scale": 1.0, "offset": 0.0, "dtype": "float32",
                         "trainable": False}
        out.pop("build_config", None)
    if kind == "Normalization" and isinstance(config, dict) and not config.get("invert"):
        # Keras keeps the statistics as tensors a traced function captures, which tf2onnx
        # turns into two extra graph inputs; as a Rescaling's scale and offset they are
        # constants: (x - mean) / sd = x * (1 / sd) - mean / sd
        sd = np.maximum(np.sqrt(np.asarray(config["variance"], np.float64)), 1e-7)
        scale = 1.0 / sd
        out["class_name"], out["module"] = "Rescaling", "keras.layers"
        out["config"] = {"name": config["name"], "scale": scale.ravel().tolist(),
                         "offset": (-np.asarray(config["mean"], np.float64) * scale).ravel().tolist(),
                         "dtype": "float32", "trainable": False}
        out.pop("build_config", None)
    return out


def write_deployment_files(model, folder: Path, image_size: int, quantize: tuple[str, ...] = (),
                           calibration: np.ndarray | None = None, skip: set[str] | frozenset = frozenset()
                           ) -> list[Written]:
    """model.onnx, model.tflite and the quantized LiteRT files asked for, in ``folder``; a
    file whose packages are missing or whose conversion fails is skipped with the reason
    (``model.keras`` is the export whatever happens here). Runtimes in ``skip`` are left
    alone (their files are kept as they are)."""
    twin = None
    written = []
    for runtime in ("onnx", "litert", *(f"litert-{q}" for q in quantize)):
        if runtime in skip:
            continue
        target = folder / file_name(runtime)
        target.unlink(missing_ok=True)  # an older export's file must not pass for this one
        missing = missing_packages(runtime)
        if switched_off():
            written.append(Written(runtime, None, f"turned off ({SWITCH_ENV}=0)"))
            continue
        if missing:
            written.append(Written(runtime, None, f"not installed: {', '.join(missing)} ({EXTRA_HINT})"))
            continue
        try:
            twin = twin or deployment_twin(model, image_size)
            if runtime == "onnx":
                _write_onnx(twin, target, image_size)
            else:
                _write_litert(twin, target, image_size, runtime.partition("-")[2], calibration)
            written.append(Written(runtime, target))
        except Exception as error:  # a converter's failure is this file's, not the export's
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            written.append(Written(runtime, None, f"conversion failed: {type(error).__name__}: {reason}"))
    return written


def _input_spec(image_size: int):
    import tensorflow as tf

    return tf.TensorSpec((None, image_size, image_size, 3), tf.uint8, name="image")


def _write_onnx(twin, target: Path, image_size: int) -> None:
    _teach_tf2onnx_erfc()
    tmp = temporary_name(target, keep_suffix=True)
    try:
        twin.export(str(tmp), format="onnx", input_signature=[_input_spec(image_size)], verbose=False)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


_ERFC_TAUGHT = False


def _teach_tf2onnx_erfc() -> None:
    """tf2onnx 1.17 has no handler for TensorFlow's Erfc, which exact GELU (the recipe's
    activation) is made of: ``gelu(x) = x/2 * erfc(-x/sqrt(2))``; the file it wrote was
    refused by onnxruntime (INVALID_GRAPH, measured on the default hour's model). Registered
    here as ``1 - Erf(x)`` with ONNX's own Erf (opset 9+); in float32 that differs from
    TensorFlow's erfc by well under 1e-6 where it matters (a test holds the file to 1e-4)."""
    global _ERFC_TAUGHT
    if _ERFC_TAUGHT:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 (registered by the decorator)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    _ERFC_TAUGHT = True


def _write_litert(twin, target: Path, image_size: int, quantize: str, calibration: np.ndarray | None) -> None:
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="cnnbench-litert-") as scratch:
        saved = Path(scratch) / "saved_model"
        archive = keras.export.ExportArchive()
        archive.track(twin)
        archive.add_endpoint(name="serve", fn=lambda images: twin(images, training=False),
                             input_signature=[_input_spec(image_size)])
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "int8":
            if calibration is None or not len(calibration):
                raise ValueError("int8 quantization needs training images to calibrate on")
            images = calibration[:CALIBRATION_IMAGES]
            converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        flatbuffer = converter.convert()
    tmp = temporary_name(target, keep_suffix=True)
    try:
        tmp.write_bytes(flatbuffer)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(folder: Path, quantize: tuple[str, ...]) -> None:
    """Files of an earlier export that this one will not write: quantized files not asked
    for, and files an earlier check set aside as failed."""
    for q in QUANTIZATIONS:
        if q not in quantize:
            (folder / file_name(f"litert-{q}")).unlink(missing_ok=True)
    for failed in folder.glob("model*.failed"):
        failed.unlink()
