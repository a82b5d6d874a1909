#!/usr/bin/env python3
"""cnnbench's trial path on airbench94's network (search_spaces/airbench94.yaml, batch 1024),
with glibc's allocator and with tcmalloc (LD_PRELOAD), rounds interleaved.

PyTorch's CPU guide advises tcmalloc or jemalloc: with glibc every large activation is a fresh
mmap whose pages the kernel must fault in and zero. This measures whether TensorFlow's
training step here gains the same. Each arm trains in a fresh process on random images;
images/s exclude the first (tracing) epoch.

    .venv/bin/python benchmarks/allocator.py [--rounds 2] [--images 4096]
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
TCMALLOC = next(iter(sorted(Path("/usr/lib").glob("*/libtcmalloc_minimal.so.4"))), None)

ARM = """
import json, sys, resource
sys.path.insert(0, {src!r})
import cnnbench
cnnbench.prepare()
from cnnbench.training.data import synthetic_bundle
from cnnbench.space import load_space
from cnnbench.training.train import train_and_evaluate
space = load_space({space!r})
config = {{**space.complete({{}}), "epochs": 3, "tta": "off"}}
result = train_and_evaluate(config, synthetic_bundle({images}, n_val=256))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"images_per_s": result.images_per_s, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}}))
"""


def arm(images: int, preload: str | None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    code = ARM.format(src=str(ROOT / "src"), space=str(ROOT / "search_spaces" / "airbench94.yaml"), images=images)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=4096)
    a = p.parse_args()
    if TCMALLOC is None:
        sys.exit("allocator.py: tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
    arms = {"glibc": None, "tcmalloc": str(TCMALLOC)}
    runs: dict[str, list] = {name: [] for name in arms}
    for _ in range(a.rounds):
        for name, preload in arms.items():
            runs[name].append(arm(a.images, preload))
            print(name, runs[name][-1], flush=True)
    for name, rows in runs.items():
        print(f"{name}: {statistics.median(r['images_per_s'] for r in rows):.1f} images/s (median of "
              f"{len(rows)}), sys {statistics.median(r['sys_s'] for r in rows):.1f} s")


if __name__ == "__main__":
    main()
