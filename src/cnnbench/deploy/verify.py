"""The export's deployment files, written and checked against ``model.keras`` (TensorFlow side).

``deploy_and_check`` writes model.onnx and model.tflite (``convert``), computes
``model.keras``'s own probabilities for the first ``CHECK_IMAGES`` test images, and hands
both to ``python -m cnnbench.deploy.check`` in a fresh process that refuses TensorFlow. What
comes back becomes the model card's ``runtimes`` block: per file its status (ok, failed,
skipped, with the reason), top-1 agreement with model.keras, the largest probability
difference, accuracy on those images, size and latency. A float32 file must agree on top-1
for at least 99.9% of the images and stay within 1e-4 of every probability; a quantized file
computes with int8 weights, so only its agreement is held (at least 95%) and its accuracy is
recorded. A file that fails is renamed ``*.failed`` (nobody deploys it by mistake) and the
export stays ``model.keras``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cnnbench.deploy.check import LATENCY_BATCHES
from cnnbench.deploy.convert import (Written, file_name, missing_packages, remove_stale, switched_off,
                                     write_deployment_files)
from cnnbench.deploy.runtimes import latency_ms, threads

CHECK_IMAGES = 1000
GOALS = {"agreement": 0.999, "max_prob_diff": 1e-4}  # a float32 file against model.keras
QUANTIZED_AGREEMENT = 0.95
CHECK_TIMEOUT = 900  # seconds: loading both runtimes and 1,000 images twice takes well under a minute


def deploy_and_check(model, folder: Path, x_test: np.ndarray, y_test: np.ndarray, calibration: np.ndarray,
                     quantize: tuple[str, ...] = (), keep_existing: bool = False) -> dict:
    """The ``runtimes`` block of the model card, after writing (``keep_existing``: only the
    missing) deployment files of ``model`` in ``folder`` and checking each of them; empty
    when they are turned off (CNNBENCH_DEPLOY_FILES=0)."""
    if switched_off():
        return {}
    size = int(x_test.shape[1])
    if keep_existing:
        present = [Written(r, folder / file_name(r)) for r in _runtimes(quantize) if (folder / file_name(r)).exists()]
        kept = {w.runtime for w in present}
        written = present + write_deployment_files(model, folder, size, quantize, calibration, skip=kept)
    else:
        remove_stale(folder, quantize)
        written = write_deployment_files(model, folder, size, quantize, calibration)
    files = [w.path for w in written if w.path is not None]
    block: dict = {}
    results: dict[str, dict] = {}
    trouble = ""
    if files:  # model.keras's own figures on the check images: what each file is held to
        x, y = x_test[:CHECK_IMAGES], y_test[:CHECK_IMAGES]
        reference = model.predict(x, batch_size=256, verbose=0)
        block = {"images": int(len(x)), "checked_on": f"the first {len(x)} test images", "goals": GOALS,
                 "keras": _keras_row(model, folder / "model.keras", x, y, reference)}
        results, trouble = _check_in_fresh_process(x, y, reference, files)
    for w in sorted(written, key=lambda w: _runtimes(quantize).index(w.runtime)):
        if w.path is None:
            block[w.runtime] = {"status": "skipped", "reason": w.skipped}
            continue
        row = results.get(w.path.name, {"file": w.path.name, "error": trouble or "no result from the check"})
        status, reason = judge(w.runtime, row)
        if status == "failed":
            failed = w.path.with_name(w.path.name + ".failed")
            w.path.replace(failed)
            row = {**row, "file": failed.name}
        block[w.runtime] = {"status": status, **({"reason": reason} if reason else {}), **row}
    return block


def deploying() -> bool:
    """Whether an export here writes any deployment file (the ``export`` extra is installed)."""
    return not switched_off() and not (missing_packages("onnx") and missing_packages("litert"))


def _runtimes(quantize: tuple[str, ...]) -> list[str]:
    return ["onnx", "litert", *(f"litert-{q}" for q in quantize)]


def judge(runtime: str, row: dict) -> tuple[str, str]:
    """("ok" | "failed", why) for one file's check result."""
    if "error" in row:
        return "failed", row["error"]
    if "-" in runtime:  # quantized: int8 arithmetic is not float32's; its accuracy is what it is
        if row["agreement"] < QUANTIZED_AGREEMENT:
            return "failed", f"top-1 agreement {row['agreement']:.4f} is below {QUANTIZED_AGREEMENT}"
        return "ok", ""
    problems = []
    if row["agreement"] < GOALS["agreement"]:
        problems.append(f"top-1 agreement {row['agreement']:.4f} is below {GOALS['agreement']}")
    if row["max_prob_diff"] > GOALS["max_prob_diff"]:
        problems.append(f"a probability differs by {row['max_prob_diff']:.2e} (over {GOALS['max_prob_diff']:.0e})")
    return ("failed", "; ".join(problems)) if problems else ("ok", "")


class _KerasRunner:
    def __init__(self, model):
        self.model = model

    def run(self, images):
        return np.asarray(self.model.predict_on_batch(images))


def _keras_row(model, path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray) -> dict:
    """model.keras itself, measured in this (TensorFlow) process: the row the others are read against."""
    runner = _KerasRunner(model)
    return {"file": path.name, "status": "reference", "size_bytes": path.stat().st_size if path.exists() else None,
            "images": int(len(x)), "accuracy": round(float((reference.argmax(axis=1) == y).mean()), 6),
            "latency_ms": {f"batch_{b}": latency_ms(runner, x, b) for b in LATENCY_BATCHES}, "threads": threads()}


def _check_in_fresh_process(x, y, reference, files: list[Path]) -> tuple[dict, str]:
    """{file name: its result} from ``cnnbench.deploy.check``, and what went wrong if it failed."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-check-") as scratch:
        npz = Path(scratch) / "reference.npz"
        np.savez(npz, images=x, labels=y, reference=reference)
        try:
            done = subprocess.run([sys.executable, "-m", "cnnbench.deploy.check", str(npz), *map(str, files)],
                                  capture_output=True, text=True, timeout=CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return {}, f"the check process did not finish in {CHECK_TIMEOUT} s"
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {}, f"the check process failed (exit {done.returncode}): {last}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report.get("tensorflow_imported"):
        return {}, "the check process imported TensorFlow, which a deployment runtime does not have"
    return {row["file"]: row for row in report["results"]}, ""


def summary_lines(block: dict) -> list[str]:
    """One line per deployment file, for the sweep's and verify-export's output."""
    lines = []
    for runtime, row in block.items():
        if not isinstance(row, dict) or row.get("status") in (None, "reference"):
            continue
        if row["status"] == "skipped":
            lines.append(f"{file_name(runtime)}: skipped ({row['reason']})")
        elif row["status"] == "failed":
            lines.append(f"{row.get('file', file_name(runtime))}: FAILED its check ({row['reason']}); "
                         "model.keras is the export")
        else:
            lines.append(f"{row['file']}: ok, top-1 agreement {row['agreement']:.4f}, largest probability "
                         f"difference {row['max_prob_diff']:.1e}, accuracy {row['accuracy']:.4f} on {row['images']} "
                         f"test images, {row['size_bytes'] / 1e6:.1f} MB, {row['latency_ms']['batch_1']:.2f} ms/image "
                         f"at batch 1")
    return lines



RUNTIME_NAMES = {"keras": "Keras (TensorFlow)", "onnx": "onnxruntime", "litert": "LiteRT",
                 "litert-dynamic": "LiteRT, dynamic-range int8", "litert-int8": "LiteRT, int8"}


def runtime_rows(block: dict) -> list[dict]:
    """The ``runtimes`` block as table rows (model card, report page, README): one per file."""
    rows = []
    for runtime, row in block.items():
        if not isinstance(row, dict) or "status" not in row:
            continue
        latency = row.get("latency_ms") or {}
        size = row.get("size_bytes")
        rows.append({"file": row.get("file", file_name(runtime)), "runtime": RUNTIME_NAMES.get(runtime, runtime),
                     "status": row["status"] + (f": {row['reason']}" if row.get("reason") else ""),
                     "size (MB)": f"{size / 1e6:.2f}" if size else "",
                     "top-1 agreement": _figure(row.get("agreement"), "{:.4f}"),
                     "largest prob. difference": _figure(row.get("max_prob_diff"), "{:.1e}"),
                     "accuracy": _figure(row.get("accuracy"), "{:.4f}"),
                     "ms/image, batch 1": _figure(latency.get("batch_1"), "{:.3f}"),
                     "ms/image, batch 64": _figure(latency.get("batch_64"), "{:.3f}")})
    return rows


def _figure(value, form: str) -> str:
    return "" if value is None else form.format(value)


def runtimes_markdown(block: dict | None) -> list[str]:
    """The model card's runtimes section (no lines when the export has no such block)."""
    block = block or {}
    rows = runtime_rows(block)
    if not rows:
        return []
    head = list(rows[0])
    return ["", "## Runtimes", "",
            f"Each file checked against model.keras on {block.get('checked_on', 'test images')}, in a process "
            "without TensorFlow (`cnnbench verify-export`); latency on the machine below, "
            f"{block.get('keras', {}).get('threads', '?')} threads.", "",
            "| " + " | ".join(head) + " |", "|---" * len(head) + "|",
            *["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]]
