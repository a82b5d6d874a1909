"""Classify new images with an exported model: any size, grayscale/RGBA converted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.data import CIFAR10_CLASSES, read_image
from cnnbench.export import load_card


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None   # (class, probability), most likely first
    error: str = ""


def load(model_path: str | Path):
    """The exported model and its class names (from the model card beside it, else CIFAR-10's)."""
    import keras

    model = keras.models.load_model(model_path, compile=False)  # safe mode: built-in layers only
    names = load_card(Path(model_path)).get("classes") or list(CIFAR10_CLASSES)
    return model, names


def classify(model, class_names: list[str], paths: list[str], top: int = 1) -> list[Prediction]:
    """One Prediction per path, in order; an unreadable file gets an error, the rest still run."""
    out = []
    for path in paths:
        try:
            image = read_image(path)  # the model resizes; we only convert to RGB
        except Exception as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            out.append(Prediction(path, error=f"cannot read image: {reason}"))
            continue
        probs = model.predict(image[np.newaxis], verbose=0)[0]
        order = np.argsort(-probs)[:top]
        out.append(Prediction(path, top=[(class_names[i], float(probs[i])) for i in order]))
    return out
