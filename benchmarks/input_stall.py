#!/usr/bin/env python3
"""The input pipeline with and without tf.data's autotuner, through cnnbench's trial path.

    .venv/bin/python benchmarks/input_stall.py [rounds]      # default 2 rounds, ~6 minutes

With the autotuner (the pipeline cnnbench used until 2026-11-25: map with AUTOTUNE
parallelism, AUTOTUNE prefetch, autotune on), about half the epochs began with a ~10 s stall
with both cores idle on a 2-core VM; ``pipeline.train_dataset`` now builds a fixed pipeline.
Each arm trains ref-net (the knob defaults) in float32 for 5 epochs of 8,192 random images
in a fresh process, arms alternating; images/s are over epochs 2-5 (epoch 1 traces).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, IMAGES = 5, 8192


def autotuned_dataset(x, y, config, num_classes, seed, first_epoch=0, epochs=None):
    """The earlier pipeline, for comparison only (its epochs one after the other, as the
    trainer now takes them)."""
    import tensorflow as tf

    from cnnbench.training.pipeline import augment_batch

    def prepare(images, labels):
        if config["flip"] != "off" or config["translate"]:
            images = augment_batch(images, config["flip"], config["translate"])
        return images, tf.one_hot(labels, num_classes)

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(config["batch_size"]).repeat((epochs or config["epochs"]) - first_epoch)
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def arm(pipeline: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import cnnbench

    cnnbench.prepare()  # oneDNN on, as in every cnnbench process
    from cnnbench.training import train
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.knobs import default_config

    if pipeline == "autotuned":
        train.train_dataset = autotuned_dataset
    config = {**default_config(), "precision": "float32", "batch_size": 128, "epochs": EPOCHS}
    result = train.train_and_evaluate(config, synthetic_bundle(IMAGES))
    return {"pipeline": pipeline, "images_per_s": result.images_per_s, "train_seconds": result.train_seconds}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    for _ in range(rounds):
        for pipeline in ("autotuned", "fixed"):
            code = f"import input_stall, json; print(json.dumps(input_stall.arm({pipeline!r})))"
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True,
                                 text=True, check=True)
            print(json.loads(out.stdout.strip().splitlines()[-1]), flush=True)


if __name__ == "__main__":
    main()
