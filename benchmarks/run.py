#!/usr/bin/env python3
"""Training throughput of cnnbench's trainer path vs the PyTorch peer, side by side.

The network is ../shared/bench/torch_peer.py's "ref-net" (3 stages x 2 convs 3x3 + BN +
ReLU, max pool, global average pool, dense 10), which is cnnbench's default knob values:
``default_config()``. Both sides train on the same random uint8 images, batch 128, one
warm-up pass first; rounds alternate Keras and PyTorch so machine noise hits both alike,
and the medians over rounds are reported with their ratio.

    make bench                        # Keras fp32 and bf16 (+ PyTorch if .venv-peer exists)
    make bench BENCH_ARGS="--rounds 5 --images 4096"
    python3 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.13.0 numpy   # the peer, once
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "bench" / "torch_peer.py"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


def keras_images_per_s(precision: str, images: int, batch: int) -> float:
    """Train the ref-net for one pass over ``images`` random images; return images/s."""
    import keras
    import numpy as np

    from cnnbench.knobs import default_config
    from cnnbench.model import build_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, 10, images), 10)
    model = build_model({**default_config(), "precision": precision})
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    model.fit(x[: batch * 8], y[: batch * 8], batch_size=batch, verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, verbose=0)
    return images / (time.perf_counter() - start)


def peer_images_per_s(precision: str, images: int, batch: int) -> float | None:
    if not PEER_PYTHON.exists():
        return None
    out = subprocess.run([str(PEER_PYTHON), str(PEER), "--precision", precision, "--images", str(images),
                          "--batch", str(batch)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args()
    runs: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        for precision, policy in (("fp32", "float32"), ("bf16", "mixed_bfloat16")):
            # each Keras measurement in a fresh process: no graph or allocator state carried over
            code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import run; "
                    f"print(run.keras_images_per_s({policy!r}, {a.images}, {a.batch}))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            runs.setdefault(f"keras-{precision}", []).append(float(out.strip().splitlines()[-1]))
            peer = peer_images_per_s(precision, a.images, a.batch)
            if peer is not None:
                runs.setdefault(f"torch-{precision}", []).append(peer)
    medians = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    for name, values in runs.items():
        print(json.dumps({"run": name, "images_per_s_median": medians[name], "rounds": [round(v, 1) for v in values],
                          "images": a.images, "batch": a.batch, "net": "ref-net-w32"}))
    base = medians["keras-fp32"]
    print("ratios to keras-fp32 (median images/s): "
          + ", ".join(f"{k} {v / base:.2f}x" for k, v in medians.items()))
    if PEER_PYTHON.exists() is False:
        print("(PyTorch peer not installed: python3 -m venv .venv-peer && "
              ".venv-peer/bin/pip install torch==2.13.0 numpy)")


if __name__ == "__main__":
    main()
