"""The training speed this machine reached, kept between sweeps: the forecasts' input.

Each finished training adds its training FLOPs per second, per CPU, cores and precision,
to a small JSON file in the cache folder (the last SAMPLES_KEPT of each); a forecast
(deadline.py, plan.py) takes the median of trainings of networks of the same size, else of
a similar one.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from cnnbench.files import atomic_write
from cnnbench.training import runtime

SAMPLES_KEPT = 50


def machine_key(precision: str, cores: int | None = None) -> str:
    """This CPU with this process's cores (or ``cores``: a worker pinned to fewer trains at its own speed)."""
    info = runtime.cpu()
    return f"{info.model} | {cores or info.cores} cores | {precision}"


class ThroughputLog:
    """Training FLOPs/s of recent trials on each machine, by network size, so forecasts
    start informed. Small networks use a CPU far less efficiently than large ones (tens
    against hundreds of GFLOP/s here), so a forecast only uses trials of a similar size."""

    SIMILAR = 2.0  # networks within this factor of FLOPs per image count as similar
    # ... and within this one as the same network: a forecast takes those first, as the CPU's
    # efficiency still climbs with size inside SIMILAR's window (Zen 3 VM, float32: about 100
    # GFLOP/s at 108 MFLOP per image, 115 at 164, 125-130 at 236-303). The median of the
    # window sized the 88c5cc0 hour's 164 MFLOP final at 125-130 where it trained at 117: the
    # search ran into the time the final's floor needed, and the final was cut an epoch.
    SAME = 1.1

    def __init__(self, path: Path | None = None):
        from cnnbench.training.data import cache_dir

        self.path = path or cache_dir() / "throughput.json"

    def _read(self) -> dict:
        try:
            table = json.loads(self.path.read_text())
            return table if table.get("version") == 2 else {"version": 2}
        except (OSError, ValueError, AttributeError, RecursionError):
            return {"version": 2}

    def add(self, precision: str, flops_per_s: float, flops_per_image: float, images: int = 0) -> None:
        """Keep one training's speed; ``images``: the training images of its epochs (0: unknown)."""
        if not flops_per_s or flops_per_s <= 0 or not flops_per_image:
            return
        table = self._read()
        samples = table.setdefault(machine_key(precision), [])
        samples.append([round(flops_per_image), round(flops_per_s)] + ([int(images)] if images else []))
        del samples[:-SAMPLES_KEPT]
        atomic_write(self.path, json.dumps(table, indent=1))

    def rate(self, precision: str, flops_per_image: float, images: int = 0, cores: int | None = None) -> float | None:
        """The median training FLOPs/s of recent trials here of a similar size (of the same
        size, where there are any), or None; ``cores``: of processes on that many cores (a
        plan's workers), not this one's.

        ``images``: a training of that many images per epoch is forecast from trainings of at
        least half as many when there are any: first-rung runs (5,000 images at batch 256)
        train slower per image than a final training on 50,000, and sizing the f80cdb8 hour's
        final from them left 3 of its minutes unused. Older samples lack the count."""
        similar = self._similar(precision, flops_per_image, cores)
        same = _within(similar, flops_per_image, self.SAME)
        large = [sample for sample in similar if _at_least_half(sample, images)]
        same_large = [sample for sample in same if _at_least_half(sample, images)]
        # a training of its image count first (f80cdb8), then of its network's size
        rates = [sample[1] for sample in (same_large or large or same or similar)]
        return float(statistics.median(rates)) if rates else None

    def measured_at_size(self, precision: str, flops_per_image: float, images: int) -> bool:
        """A training of a similar network on at least half of ``images`` per epoch ran here,
        so a forecast for that many is not from a half-minute ``--measure`` on random images."""
        return any(_at_least_half(sample, images) for sample in self._similar(precision, flops_per_image))

    def _similar(self, precision: str, flops_per_image: float, cores: int | None = None) -> list:
        return _within(self._read().get(machine_key(precision, cores), []), flops_per_image, self.SIMILAR)


def _within(samples: list, flops_per_image: float, factor: float) -> list:
    """The samples of networks within ``factor`` of ``flops_per_image`` FLOPs per image."""
    return [sample for sample in samples if flops_per_image / factor <= sample[0] <= flops_per_image * factor]


def _at_least_half(sample: list, images: int) -> bool:
    return bool(images) and len(sample) > 2 and sample[2] >= images / 2
