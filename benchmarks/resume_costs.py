#!/usr/bin/env python3
"""What resuming and repeatability cost, on the default space's first configuration
(airbench94's network at its full fidelity, the precision ``auto`` gives on this CPU):

- **checkpoint**: seconds to write one per-epoch checkpoint (training/checkpoint.py: the
  model's and optimizer's variables, the Lookahead average, the best epoch's weights, one
  fsync'd file) and its share of one epoch on the 50,000 training images of a final
  training (an epoch's time measured here on synthetic images, scaled by image count);
- **determinism**: images/s with ``deterministic: true`` (TensorFlow's op determinism)
  against without, each in fresh processes, rounds interleaved, medians.

    .venv/bin/python benchmarks/resume_costs.py [--rounds 3] [--images 4096]

Also a section of ``make bench`` (benchmarks/run.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FULL_EPOCH_IMAGES = 50_000  # a final training's epoch on CIFAR-10


def _default_config() -> dict:
    from cnnbench.space import load_space

    space = load_space(ROOT / "search_spaces" / "default.yaml")
    return {**space.complete(space.start_with[0] if space.start_with else {}), "train_images": 0}


def checkpoint_arm(images: int, epochs: int = 3) -> dict:
    """Train ``epochs`` epochs with a checkpoint, timing every checkpoint write apart."""
    import cnnbench

    cnnbench.prepare()
    from cnnbench.training import checkpoint
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.training.train import train_and_evaluate

    writes: list[float] = []
    real_save = checkpoint.save

    def timed_save(path, saved):
        started = time.perf_counter()
        real_save(path, saved)
        writes.append(time.perf_counter() - started)

    checkpoint.save = timed_save  # Checkpointer.after_epoch calls the module's save
    config = {**_default_config(), "epochs": epochs}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.npz"
        result = train_and_evaluate(config, synthetic_bundle(images, n_val=0), checkpoint=str(path))
        size = path.stat().st_size
    epoch_full = FULL_EPOCH_IMAGES / result.images_per_s
    write = statistics.median(writes)
    return {"checkpoint_seconds": round(write, 3), "writes": [round(w, 3) for w in writes],
            "checkpoint_mb": round(size / 2**20, 1), "images_per_s": result.images_per_s,
            "precision": result.precision, "epoch_seconds_50k": round(epoch_full, 1),
            "share_of_an_epoch": round(write / epoch_full, 4)}


def throughput_arm(images: int, deterministic: bool) -> dict:
    import cnnbench

    cnnbench.prepare()
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.training.train import train_and_evaluate

    config = {**_default_config(), "epochs": 2, "deterministic": deterministic}
    result = train_and_evaluate(config, synthetic_bundle(images, n_val=0))
    return {"images_per_s": result.images_per_s, "precision": result.precision}


def _fresh(function: str, *args) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import json, resume_costs; "
            f"print(json.dumps(resume_costs.{function}(*{args!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{function}{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def resume_costs(rounds: int = 3, images: int = 4096) -> dict:
    """Both measurements, each arm in fresh processes (the determinism arms interleaved)."""
    cost = _fresh("checkpoint_arm", images)
    runs: dict[str, list[float]] = {"default": [], "deterministic": []}
    for _ in range(rounds):
        for name in runs:
            runs[name].append(_fresh("throughput_arm", images, name == "deterministic")["images_per_s"])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {"network": "default.yaml start_with[0]", "images": images, "checkpoint": cost,
            "determinism": {"rounds": runs, "images_per_s": medians,
                            "deterministic_vs_default": round(medians["deterministic"] / medians["default"], 3)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=4096)
    a = p.parse_args()
    from cnnbench.training import runtime

    report = {"cpu": runtime.cpu().describe(), **resume_costs(a.rounds, a.images)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
