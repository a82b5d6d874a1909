#!/usr/bin/env python3
"""Where a first-rung run's time goes: the default space's rung 0 (5,000 images, 2 epochs,
batch 256, no test-time views, validation on 5,000 images) timed phase by phase.

In the default hour on the Zen 4 VM (docs/measured/default-hour-zen4-fd3ffcc) a first-rung
run of 96-256-256 took 49-62 s of wall time of which 30-38 s were its two training epochs;
this says what the other 40% is: building the network, the whitening, compiling, the
validation passes, the float32 inference twin, the latency probe and saving the model.

    .venv/bin/python benchmarks/rung_overhead.py [--widths 64-256-256 96-256-256] [--runs 2]

Each width trains ``--runs`` times in one process, as a trial child process trains trial
after trial: the first run of a shape also pays for tracing and compiling kernels of that
shape, later ones do not. Synthetic images by default (the phases' costs do not depend on pixels);
``--real``: the space's data, as a sweep's trial process holds it.
Prints one JSON line per run; time it with nothing else running.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


_active: list[str] = []  # the timed phase running now: a phase inside another counts as the outer one


def _timed(owner, name: str, spent: dict, label: str | None = None) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall seconds to ``spent[label]``
    (unless it runs inside another timed phase: the inference twin builds a network too)."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if _active:
            return real(*args, **kwargs)
        _active.append(name)
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[label or name] += time.perf_counter() - started
            _active.pop()

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", default=["64-256-256", "96-256-256"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="the space's own data (CNNBENCH_CIFAR10) instead of "
                        "synthetic images: its 45,000-image split, subset to the rung's 5,000 as a sweep does")
    args = parser.parse_args()

    import cnnbench

    cnnbench.prepare()
    import keras

    from cnnbench.space import load_space
    from cnnbench.training import train
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.training.runtime import cpu

    space = load_space(ROOT / "search_spaces" / "default.yaml")
    rung = space.search.rungs[0]
    if args.real:
        from cnnbench.training.data import load_data

        data = load_data(space.data, space.seed, space_dir=ROOT / "search_spaces")
    else:
        data = synthetic_bundle(rung["train_images"], n_val=5000)
    spent: dict[str, float] = defaultdict(float)
    for name in ("build_model", "set_whitening", "inference_model", "latency_ms", "save_model"):
        _timed(train, name, spent)
    _timed(keras.Model, "compile", spent)
    _timed(keras.Model, "predict", spent, "validation")  # the only predict in a training: the epoch ends'
    info = cpu().describe()  # model name and the flags that decide speed, as every bench names them
    for widths in args.widths:
        config = {**space.complete({**space.start_with[0], "widths": widths}), **rung}
        for run in range(args.runs):
            spent.clear()
            started = time.perf_counter()
            result = train.train_and_evaluate(config, data, seed=run)
            with tempfile.TemporaryDirectory() as folder:
                train.save_model(result.model, Path(folder) / "m.keras")  # as the trial process does
            wall = time.perf_counter() - started
            phases = {k: round(v, 2) for k, v in spent.items()}
            print(json.dumps({"widths": widths, "run": run + 1, "wall_s": round(wall, 2),
                              "training_epochs_s": result.train_seconds, **phases,
                              "unaccounted_s": round(wall - result.train_seconds - sum(spent.values()), 2),
                              "cpu": info}), flush=True)


if __name__ == "__main__":
    main()
