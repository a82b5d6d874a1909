#!/usr/bin/env python3
"""Two checkouts' trial paths timed side by side: did a change make training slower?

Each round runs, in a fresh process per checkout (its own ``.venv/bin/python`` on its own
``src/``), the default space's first configuration (its full fidelity, the precision
``auto`` gives here) for 3 epochs on 8,192 synthetic images, and reads the trainer's own
images/s (tracing epoch excluded). Rounds interleave the checkouts so machine drift hits
both alike; medians are printed.

    .venv/bin/python benchmarks/checkout_ab.py ../old-clone . --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

CODE = """
import sys, json
sys.path.insert(0, {src!r})
import cnnbench; cnnbench.prepare()
from cnnbench.space import load_space
from cnnbench.training.data import synthetic_bundle
from cnnbench.training.train import train_and_evaluate
space = load_space({space!r})
config = {{**space.complete(space.start_with[0]), 'train_images': 0, 'epochs': 3}}
r = train_and_evaluate(config, synthetic_bundle(8192, n_val=0))
print(json.dumps({{'images_per_s': r.images_per_s, 'precision': r.precision}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkouts", nargs=2, help="two checkout folders, each with its .venv")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    roots = [Path(c).resolve() for c in a.checkouts]
    runs: dict[str, list[float]] = {str(r): [] for r in roots}
    for _ in range(a.rounds):
        for root in roots:
            code = CODE.format(src=str(root / "src"), space=str(root / "search_spaces" / "default.yaml"))
            out = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c", code], capture_output=True,
                                 text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            runs[str(root)].append(got["images_per_s"])
            print(root, got, flush=True)
    print(json.dumps({"rounds": runs, "median": {k: statistics.median(v) for k, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
