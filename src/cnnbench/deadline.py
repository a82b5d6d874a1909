"""An hour is an hour: the sweep's deadline and what a trial will cost on this machine.

A trial's training time is forecast from its FLOPs per image (counted on paper), the
images it will see (training x epochs, plus validation after every epoch) and the
training FLOPs per second this machine reached in finished trials, kept per CPU and
precision in a small file in the cache folder. Before a trial starts, the sweep asks
``Deadline.admit``: a trial that cannot finish before the deadline is not started, or,
when the space searches ``epochs``, starts with the most epochs that fit.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from cnnbench import runtime
from cnnbench.model import architecture_stats

TRAIN_COST = 3        # a training image costs about 3 forward passes (forward + backward)
SETUP_SECONDS = 15.0  # building, compiling and tracing a trial before its first step
SAFETY = 1.15         # forecasts run this much long: finishing early is cheaper than overrunning
EXPORT_SECONDS = 45.0 # ranking, loading the best model, saving the card, on top of its test pass
DEADLINE_ENV = "CNNBENCH_DEADLINE"  # absolute end (Unix seconds) a parent hands its workers
SAMPLES_KEPT = 50


class NotStarted(Exception):
    """A trial was not started because it could not finish before the deadline."""


def forward_images(config: dict, n_train: int, n_val: int) -> float:
    """Forward-pass equivalents of images one trial processes: training x 3, validation
    after each epoch (x2 with mirror test-time augmentation)."""
    return config["epochs"] * (n_train * TRAIN_COST + n_val * (2 if config["tta"] else 1))


def trial_seconds(config: dict, n_train: int, n_val: int, flops_per_s: float, image_size: int = 32,
                  num_classes: int = 10) -> float:
    """Forecast wall seconds of one trial of ``config`` at ``flops_per_s`` training FLOPs/s."""
    flops = architecture_stats(config, image_size, num_classes).flops
    return SAFETY * (SETUP_SECONDS + forward_images(config, n_train, n_val) * flops / flops_per_s)


def machine_key(precision: str) -> str:
    info = runtime.cpu()
    return f"{info.model} | {info.cores} cores | {precision}"


class ThroughputLog:
    """Training FLOPs/s of recent trials on each machine, by network size, so forecasts
    start informed. Small networks use a CPU far less efficiently than large ones (tens
    against hundreds of GFLOP/s here), so a forecast only uses trials of a similar size."""

    SIMILAR = 2.0  # networks within this factor of FLOPs per image count as similar

    def __init__(self, path: Path | None = None):
        from cnnbench.data import cache_dir

        self.path = path or cache_dir() / "throughput.json"

    def _read(self) -> dict:
        try:
            table = json.loads(self.path.read_text())
            return table if table.get("version") == 2 else {"version": 2}
        except (OSError, ValueError, AttributeError):
            return {"version": 2}

    def add(self, precision: str, flops_per_s: float, flops_per_image: float) -> None:
        if not flops_per_s or flops_per_s <= 0 or not flops_per_image:
            return
        table = self._read()
        samples = table.setdefault(machine_key(precision), [])
        samples.append([round(flops_per_image), round(flops_per_s)])
        del samples[:-SAMPLES_KEPT]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, self.path)

    def rate(self, precision: str, flops_per_image: float) -> float | None:
        """The median training FLOPs/s of recent trials here of a similar size, or None."""
        similar = [rate for flops, rate in self._read().get(machine_key(precision), [])
                   if flops_per_image / self.SIMILAR <= flops <= flops_per_image * self.SIMILAR]
        return float(statistics.median(similar)) if similar else None


@dataclass
class Deadline:
    """The moment a sweep must be done by (Unix seconds), or None for no deadline."""
    end: float | None
    log: ThroughputLog | None = None

    @classmethod
    def from_minutes(cls, minutes: float | None, started: float | None = None) -> "Deadline":
        inherited = os.environ.get(DEADLINE_ENV)
        if inherited:  # a worker keeps its parent's deadline
            return cls(float(inherited), ThroughputLog())
        if not minutes:
            return cls(None, ThroughputLog())
        return cls((started or time.time()) + minutes * 60, ThroughputLog())

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.time()

    def export_seconds(self, config: dict, n_test: int, precision: str) -> float:
        """Time to keep for ranking and exporting: a test pass of the model plus fixed work."""
        flops = architecture_stats(config).flops
        rate = self.log.rate(precision, flops) if self.log else None
        if not rate:
            return EXPORT_SECONDS
        return EXPORT_SECONDS + n_test * (2 if config["tta"] else 1) * flops / rate

    def admit(self, config: dict, n_train: int, n_val: int, n_test: int, precision: str,
              epoch_options: list[int]) -> tuple[dict, str]:
        """The configuration to train and a note, or NotStarted when it cannot finish in time.

        ``epoch_options`` are the epoch counts the space allows (empty: epochs is fixed);
        a trial too long for the time left is shortened to the largest one that fits.
        """
        rate = self.log.rate(precision, architecture_stats(config).flops) if self.log else None
        if self.end is None or not rate:
            return config, ""
        budget = self.left() - self.export_seconds(config, n_test, precision)
        need = trial_seconds(config, n_train, n_val, rate)
        if need <= budget:
            return config, ""
        for epochs in sorted((e for e in epoch_options if e < config["epochs"]), reverse=True):
            shorter = {**config, "epochs": epochs}
            if trial_seconds(shorter, n_train, n_val, rate) <= budget:
                return shorter, (f"shortened from {config['epochs']} to {epochs} epochs to finish before the "
                                 f"deadline ({budget / 60:.1f} min left)")
        raise NotStarted(f"not started: forecast {need / 60:.1f} min at {rate / 1e9:.0f} GFLOP/s, "
                         f"{max(budget, 0) / 60:.1f} min left before the deadline")

    def epoch_would_overrun(self, seconds_per_epoch: float) -> bool:
        """True when another epoch of this length would end past the deadline (minus export)."""
        return self.end is not None and self.left() - EXPORT_SECONDS < seconds_per_epoch


def measure(space, images: int = 2048) -> float:
    """Train the space's first configuration for two short epochs on random images and log
    the training FLOPs/s this machine reaches (``cnnbench check --measure``)."""
    from cnnbench.data import synthetic_bundle
    from cnnbench.train import train_and_evaluate

    config = {**space.complete(space.start_with[0] if space.start_with else {}), "epochs": 2}
    result = train_and_evaluate(config, synthetic_bundle(images, image_size=space.data.image_size))
    ThroughputLog().add(result.precision, result.train_flops_per_s, result.flops)
    return result.train_flops_per_s
