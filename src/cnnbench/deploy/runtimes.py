"""ONNX and LiteRT files run without TensorFlow: onnxruntime and the ai-edge-litert interpreter.

Nothing here imports TensorFlow or Keras (a test runs it with both refused), so a machine
with only ``numpy``, ``pillow`` and one runtime classifies images with the exported files.
A runner looks like a Keras model to ``cnnbench.reports.predict``: ``predict(x, batch_size,
verbose)`` on uint8 images of the training size, class probabilities out.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SUFFIXES = {".onnx": "onnx", ".tflite": "litert"}
# seconds of repeated calls per latency figure; the test suite shortens it (it checks the
# figures exist, not their size)
LATENCY_SECONDS = float(os.environ.get("CNNBENCH_LATENCY_SECONDS", "1.0"))


class RuntimeMissing(ImportError):
    """The runtime a file needs is not installed; the message says what to install."""


def runtime_of(path: str | Path) -> str | None:
    """``onnx`` or ``litert`` for a deployment file, None for anything else (model.keras)."""
    return SUFFIXES.get(Path(path).suffix.lower())


def threads() -> int:
    """The cores this process may use: both runtimes default to every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxRunner:
    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing(f"{path}: needs onnxruntime (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (first,) = self.session.get_inputs()
        self.input_name = first.name
        self.image_size = int(first.shape[1])
        self.outputs = int(self.session.get_outputs()[0].shape[-1])

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]

    def predict(self, images: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        return _in_batches(self.run, images, batch_size)


class LiteRTRunner:
    def __init__(self, path: Path):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise RuntimeMissing(f"{path}: needs ai-edge-litert (pip install ai-edge-litert)") from None
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads())
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.outputs = int(self.output["shape"][-1])
        self.batch = -1  # the batch size the interpreter's tensors are allocated for

    def run(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:  # the file's batch is dynamic: size the tensors to this batch
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape), strict=False)
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], images.astype(self.input["dtype"], copy=False))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()

    def predict(self, images: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        return _in_batches(self.run, images, batch_size)


def _in_batches(run, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def open_runner(path: str | Path) -> OnnxRunner | LiteRTRunner:
    path = Path(path)
    return OnnxRunner(path) if runtime_of(path) == "onnx" else LiteRTRunner(path)


def latency_ms(runner, images: np.ndarray, batch: int, seconds: float | None = None, least: int = 5) -> float:
    """Median milliseconds per image at ``batch`` images per call, after one warm-up call;
    calls repeat for about ``seconds`` (at least ``least``)."""
    seconds = LATENCY_SECONDS if seconds is None else seconds
    x = np.resize(images, (batch, *images.shape[1:]))  # repeats images when there are fewer
    runner.run(x)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < least or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)) / batch, 4)
