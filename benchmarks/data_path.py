#!/usr/bin/env python3
"""The data path, measured: cached load of the image folder, and the training input pipeline.

    .venv/bin/python benchmarks/data_path.py [--data ../shared/datasets/cifar10-jpeg]

1. ``load_data`` of every image (train/val/test), three times: the first may decode (if the
   cache is cold), the others read the decode cache. Seconds per load.
2. The trainer's tf.data pipeline alone (shuffle, batch, augmentation, one-hot) over 10,000
   random images: images/s with no augmentation, flip, and flip + translate 4.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import numpy as np

    import cnnbench

    cnnbench.prepare()  # oneDNN and a quiet start, as in every cnnbench process

    from cnnbench.training.data import load_data
    from cnnbench.knobs import default_config
    from cnnbench.space import Data
    from cnnbench.training.pipeline import train_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    a = p.parse_args()
    for i in range(3):
        start = time.perf_counter()
        bundle = load_data(Data(path=a.data), seed=0)
        print(f"load {i + 1}: {time.perf_counter() - start:.2f} s "
              f"({len(bundle.y_train)} train, {len(bundle.y_val)} val, {len(bundle.y_test)} test)")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10000)
    for flip, translate in (("off", 0), ("random", 0), ("random", 4)):
        ds = train_dataset(x, y, {**default_config(), "flip": flip, "translate": translate}, 10, seed=0)
        for _ in ds.take(2):  # warm-up: graph tracing
            pass
        start, n = time.perf_counter(), 0
        for images, _ in ds:
            n += len(images)
        print(f"pipeline flip={flip} translate={translate}: {n / (time.perf_counter() - start):,.0f} images/s")


if __name__ == "__main__":
    main()
