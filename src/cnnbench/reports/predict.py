"""Reuse an exported model: classify images (files, folders, globs) and score labelled folders.

With model.onnx or model.tflite nothing here imports TensorFlow (nor pandas, rich or the
space's parsers): ``python -m cnnbench.reports.predict`` runs it where only NumPy, Pillow and
one runtime are installed:

    pip install --no-deps ./cnnbench numpy pillow onnxruntime     # or ai-edge-litert for .tflite
    python -m cnnbench.reports.predict results/STUDY/best/model.onnx photo.jpg photos/ [--top 3] [--json|--csv]

with the output and exit codes of ``cnnbench predict`` (0; 1 when an image could not be
classified; 2 for a bad model or no images).

Images go through ``images.read_image`` at the model's input size: the same decoding and
resizing its training and test data had, so the model card's test accuracy describes what
this does. Anything that is not a usable cnnbench model is one ``ModelError`` line.
"""
from __future__ import annotations

from typing import Any

import argparse
import glob
import sys
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.training.data import CIFAR10_CLASSES
from cnnbench.training.images import SUFFIXES, ImageError, read_image

BATCH = 256  # images decoded and classified together


class ModelError(ValueError):
    """The file is not a model cnnbench can use; the message says which file and why."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None   # (class, probability), most likely first
    error: str = ""


@dataclass
class LoadedModel:
    model: Any  # a keras.Model (Keras ships no types)
    class_names: list[str]
    image_size: int


def _input_size(model) -> int:
    """The side of the model's own Resizing layer (cnnbench models resize inside)."""
    for layer in model.layers:
        if layer.__class__.__name__ == "Resizing":
            return int(layer.height)
        if hasattr(layer, "layers"):  # the mirror-average wrapper holds the network as a layer
            return _input_size(layer)
    return 32


def load(model_path: str | Path) -> LoadedModel:
    """The exported model (model.keras, or model.onnx / model.tflite run by onnxruntime /
    LiteRT without TensorFlow), its class names (model card beside it, else CIFAR-10's) and
    input size. Raises ModelError for anything that is not a usable cnnbench model."""
    from cnnbench.deploy.runtimes import runtime_of

    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file" if not path.exists() else f"{path}: a folder, not a model file")
    if runtime_of(path):
        return _load_deployment_file(path)
    return _load_keras(path)


def _load_deployment_file(path: Path) -> LoadedModel:
    from cnnbench.deploy.runtimes import RuntimeMissing, open_runner

    try:
        runner = open_runner(path)
    except RuntimeMissing as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # onnxruntime and LiteRT raise their own types for a file they cannot read
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path}: not a usable {path.suffix[1:]} model ({reason})") from None
    return LoadedModel(runner, _class_names(path, runner.outputs), runner.image_size)


def _load_keras(path: Path) -> LoadedModel:
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)  # built-in layers only
    except (ValueError, TypeError, OSError, KeyError, AttributeError, RecursionError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path}: not a usable Keras model ({reason})") from None
    inputs = getattr(model, "inputs", None) or []
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or len(model.outputs) != 1:
        raise ModelError(f"{path}: expects input {shape}, but a cnnbench model takes one batch of RGB images "
                         "(batch, height, width, 3) and gives class probabilities")
    outputs = int(model.outputs[0].shape[-1])
    names = _class_names(path, outputs)
    return LoadedModel(model, names, _input_size(model))


def _class_names(model_path: Path, outputs: int) -> list[str]:
    card_path = model_path.parent / "model_card.json"
    if not card_path.exists():
        if outputs != len(CIFAR10_CLASSES):
            raise ModelError(f"{model_path}: no model_card.json beside it, and {outputs} outputs are not CIFAR-10's 10")
        return list(CIFAR10_CLASSES)
    try:
        names = json.loads(card_path.read_text()).get("classes")
    except (OSError, ValueError, AttributeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ModelError(f"{card_path}: not a readable model card ({type(e).__name__})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{card_path}: 'classes' must be a list of class names, not {type(names).__name__}")
    if len(names) != outputs:
        raise ModelError(f"{card_path}: names {len(names)} classes, but the model has {outputs} outputs")
    return names


def expand(paths: list[str]) -> list[str]:
    """Files as given; folders searched recursively for images; globs expanded (sorted). A
    file named twice (a folder and an overlapping glob) is kept once, where it first came."""
    out: list[str] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif not p.exists() and any(c in given for c in "*?["):
            out += sorted(glob.glob(given, recursive=True))
        else:
            out.append(given)
    return list(dict.fromkeys(out))


def classify(loaded: LoadedModel, paths: list[str], top: int = 1, on_batch=None) -> list[Prediction]:
    """One Prediction per path, in the order given (a path given twice is answered twice, in
    both places); an unreadable file gets an error, the rest still run."""
    out: list[tuple[int, Prediction]] = []
    for start in range(0, len(paths), BATCH):
        pixels, readable = [], []
        for index in range(start, min(start + BATCH, len(paths))):
            try:
                pixels.append(read_image(paths[index], loaded.image_size))
                readable.append(index)
            except ImageError as e:
                out.append((index, Prediction(paths[index], error=str(e).split(": ", 1)[-1])))
        if pixels:
            probs = loaded.model.predict(np.stack(pixels), batch_size=BATCH, verbose=0)
            for index, p in zip(readable, probs):
                order = np.argsort(-p)[:top]
                out.append((index, Prediction(paths[index], top=[(loaded.class_names[i], float(p[i]))
                                                                   for i in order])))
        if on_batch:
            on_batch(min(BATCH, len(paths) - start))
    return [prediction for _, prediction in sorted(out, key=lambda pair: pair[0])]


def evaluate_folder(loaded: LoadedModel, folder: Path) -> dict:
    """Accuracy, per-class accuracy and confusion matrix on a labelled folder
    (``<class>/<images>``), whose class names must be the model's."""
    from cnnbench.reports.export import evaluate

    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not classes:
        raise ModelError(f"{folder}: needs one subfolder of images per class")
    unknown = [c for c in classes if c not in loaded.class_names]
    if unknown:
        raise ModelError(f"{folder}: class folder(s) {', '.join(unknown)} are not classes of this model "
                         f"({', '.join(loaded.class_names)})")
    files = [(str(f), loaded.class_names.index(c)) for c in classes for f in sorted((folder / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in SUFFIXES]
    pixels, labels, skipped = [], [], []
    for path, label in files:
        try:
            pixels.append(read_image(path, loaded.image_size))
            labels.append(label)
        except ImageError as e:
            skipped.append(str(e))
    if not pixels:
        raise ModelError(f"{folder}: no readable images")
    result = evaluate(loaded.model, np.stack(pixels), np.array(labels), loaded.class_names)
    return {**result, "folder": str(folder), "skipped_unreadable": skipped}


def predictions_text(results) -> tuple[str, str]:
    """(lines for stdout, error lines for stderr)."""
    out = [f"{r.path}: " + ", ".join(f"{c} {p:.3f}" for c, p in r.top) + "\n" for r in results if not r.error]
    err = [f"{r.path}: error: {r.error}\n" for r in results if r.error]
    return "".join(out), "".join(err)


def predictions_json(results) -> str:
    return json.dumps([{"image": r.path, "error": r.error or None,
                        "predictions": [{"class": c, "probability": round(p, 6)} for c, p in r.top or []]}
                       for r in results], indent=2)


def predictions_csv(results) -> str:
    """One row per image and class shown: image, rank, class, probability, error."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "probability", "error"])
    for r in results:
        if r.error:
            writer.writerow([r.path, "", "", "", r.error])
        for rank, (c, p) in enumerate(r.top or [], 1):
            writer.writerow([r.path, rank, c, round(p, 6), ""])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnnbench.reports.predict",
                                description="classify images with model.onnx or model.tflite, without TensorFlow")
    p.add_argument("model", help="model.onnx (onnxruntime) or model.tflite (ai-edge-litert)")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument("--top", type=int, default=1, help="classes to show per image")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    args = p.parse_args(argv)
    if not args.model.lower().endswith((".onnx", ".tflite")):
        print(f"{p.prog}: {args.model}: give a .onnx or .tflite file (model.keras needs `cnnbench predict`)",
              file=sys.stderr)
        return 2
    try:
        loaded = load(args.model)
    except ModelError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 2
    paths = expand(args.images)
    if not paths:
        print(f"{p.prog}: no images found in {' '.join(args.images)}", file=sys.stderr)
        return 2
    return print_predictions(classify(loaded, paths, top=args.top), args.json, args.csv)


def print_predictions(results: list[Prediction], as_json: bool = False, as_csv: bool = False) -> int:
    """Predictions to stdout (errors to stderr, in text); the exit code: 1 if any image failed."""
    if as_json:
        print(predictions_json(results))
    elif as_csv:
        print(predictions_csv(results), end="")
    else:
        text, errors = predictions_text(results)
        print(text, end="")
        print(errors, end="", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
