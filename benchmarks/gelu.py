#!/usr/bin/env python3
"""cnnbench's trial path on airbench94's network (search_spaces/airbench94.yaml, batch 1,024)
with the training GELU as Keras' built-in ``Activation("gelu")``, as ``FusedGELU`` (two
XLA-compiled loops, model/fused.py: what cnnbench trains with), and with ReLU (a floor:
the cheapest activation there is), rounds interleaved, each arm in a fresh process on
random images; images/s exclude the first (tracing) epoch. The CPU and precision are printed.

    .venv/bin/python benchmarks/gelu.py [--rounds 3] [--images 4096]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARM = """
import json, sys
sys.path.insert(0, {src!r})
import cnnbench
cnnbench.prepare()
import keras
from cnnbench.model import fused
from cnnbench.training.data import synthetic_bundle
from cnnbench.space import load_space
from cnnbench.training.train import train_and_evaluate
if {arm!r} == "builtin":  # the layer build_model asks for, swapped back to Keras' own
    fused.FusedGELU = lambda dtype, name: keras.layers.Activation("gelu", dtype=dtype, name=name)
space = load_space({space!r})
config = {{**space.complete({{}}), "epochs": 3, "tta": "off"}}
if {arm!r} == "relu":
    config["activation"] = "relu"
result = train_and_evaluate(config, synthetic_bundle({images}, n_val=256))
print(json.dumps({{"images_per_s": result.images_per_s, "precision": result.precision}}))
"""


def arm(name: str, images: int) -> dict:
    code = ARM.format(src=str(ROOT / "src"), space=str(ROOT / "search_spaces" / "airbench94.yaml"), images=images,
                      arm=name)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from cnnbench.training import runtime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=4096)
    a = p.parse_args()
    print("cpu:", json.dumps(runtime.cpu().describe()), flush=True)
    runs: dict[str, list] = {name: [] for name in ("builtin", "fused", "relu")}
    for _ in range(a.rounds):
        for name in runs:
            runs[name].append(arm(name, a.images))
            print(name, runs[name][-1], flush=True)
    for name, rows in runs.items():
        print(f"{name}: {statistics.median(r['images_per_s'] for r in rows):.1f} images/s (median of {len(rows)}, "
              f"{rows[0]['precision']})")


if __name__ == "__main__":
    main()
