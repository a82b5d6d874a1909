#!/usr/bin/env python3
"""An exported model's test accuracy at each test-time augmentation level: no TTA, the
mirror pair, airbench's six views. The views are what differs: the weights are the same.

    .venv/bin/python benchmarks/tta_levels.py results/airbench94-seed0
Prints one JSON line: accuracy per level and the images it was measured on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import cnnbench  # noqa: E402

cnnbench.prepare()  # oneDNN and a quiet start, before TensorFlow loads


def main() -> None:
    import keras
    import numpy as np

    from cnnbench.training.data import load_data
    from cnnbench.model import with_tta
    from cnnbench.reports.results import read_json
    from cnnbench.space import parse_space

    study = Path(sys.argv[1])
    run = read_json(study / "run.json")
    space = parse_space(run["space"], str(study / "run.json"))
    data = load_data(space.data, space.seed, Path(run["space_file"]).resolve().parent)
    exported = keras.models.load_model(study / "best" / "model.keras", compile=False)
    inner = exported.get_layer("cnnbench") if any(x.name == "cnnbench" for x in exported.layers) else exported
    out = {"study": str(study), "images": int(len(data.y_test))}
    for level in ("off", "mirror", "mirror_translate"):
        predicted = with_tta(inner, level).predict(data.x_test, batch_size=500, verbose=0).argmax(1)
        out[f"test_accuracy_{level}"] = round(float(np.mean(predicted == data.y_test)), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
