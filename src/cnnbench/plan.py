"""The plan before the run: what a sweep of some minutes holds on this machine
(``cnnbench check SPACE --timeout 60``), from the training speed finished trials reached
here, and the half-minute measurement of that speed when none has (``--measure``).

The arithmetic is the deadline's (deadline.py), so the plan and the sweep that follows it
forecast alike; the sweep re-forecasts before every trial at the speed it measures.
"""
from __future__ import annotations

import time
from typing import Any
from dataclasses import dataclass, field

from cnnbench.deadline import Deadline
from cnnbench.forecast import FINAL_SAFETY, RESIZE_AFTER, stretch_limit
from cnnbench.throughput import ThroughputLog


def measure(space, images: int = 2048, log: ThroughputLog | None = None) -> float:
    """Train the space's recipe (Space.recipe) for two short epochs on random images and log
    the training FLOPs/s this machine reaches (``cnnbench check --measure``, and a
    ``--recipe-only`` sweep on a machine whose speed is not known yet)."""
    from cnnbench.training.data import synthetic_bundle
    from cnnbench.training.train import train_and_evaluate

    config = {**space.recipe_config(), "epochs": 2}
    result = train_and_evaluate(config, synthetic_bundle(images, image_size=space.data.image_size))
    (log or ThroughputLog()).add(result.precision, result.train_flops_per_s, result.flops)
    return result.train_flops_per_s


@dataclass
class HourPlan:
    """What a sweep of ``minutes`` holds on this machine, before it runs (cnnbench check
    --timeout): forecasts at the training speed this machine reached for networks of the
    recipe's size (Space.recipe: the first start_with, else the space's centre)."""
    minutes: float
    rate: float               # training FLOPs/s
    trial_seconds: float      # one trial of the recipe (Space.recipe)
    final_seconds: float      # its final training on train + validation (0: off)
    export_seconds: float
    trials: int               # such trials that fit beside the final training and the export
    rungs: list[tuple[str, float, int]] = field(default_factory=list)  # successive halving: (rung, seconds, runs)
    reduction_factor: int = 3
    recipe_only: bool = False # no search: the final training's epochs fill the time
    filled_epochs: int = 0    # those epochs (0: not even one fits); --recipe-only and search.time_share
    stretch_to: int | None = None  # the most epochs they may be re-sized to after epoch 2 (None: not re-sized)
    time_share: float | None = None  # search.time_share: the search's share; the final fills the rest
    search_until: float | None = None  # seconds from the start the search ends by (time_share, or sooner:)
    final_floor: int = 0      # search.final_min_epochs, which ends the search sooner where it binds
    workers: int = 0          # the search on this many worker processes (--workers), each on its share of the cores
    worker_cores: int = 0     # cores each worker is pinned to
    worker_rate_assumed: bool = False  # no worker of that size has trained here: its speed is a share of the rate
    @property
    def search_seconds(self) -> float:
        """Wall time of the search's runs (workers run theirs side by side)."""
        if self.rungs:
            return sum(seconds * runs for _, seconds, runs in self.rungs) / max(1, self.workers)
        return self.trials * self.trial_seconds / max(1, self.workers)

    @property
    def floor_takes_all(self) -> bool:
        """search.final_min_epochs leaves the search no time at all here."""
        return bool(self.final_floor) and self.search_until is not None and self.search_until <= 0

    def _search_total(self) -> float:
        """The search's time: all of its share when it has one (the final is sized to start then)."""
        return self.search_until if self.search_until is not None else self.search_seconds

    def _search_line(self) -> str:
        """When the search ends, and what decides it: its share, or the final's floor."""
        share_end = (self.time_share or 0) * self.minutes
        ends = (self.search_until or 0) / 60
        if not self.final_floor or ends >= share_end - 1e-9:
            return (f"    search.time_share {self.time_share:g}: the search ends by minute {share_end:.1f}, then the "
                    "final training fills the rest")
        floor = f"    search.final_min_epochs {self.final_floor}: the final training keeps time for {self.final_floor} epochs"
        if self.floor_takes_all:
            return floor + (f", which needs all {self.minutes:g} min here: no search, the space's recipe (its "
                            "first start_with, else its centre) is the final training")
        return floor + f", so the search ends by minute {ends:.1f} (its time_share {self.time_share:g} at {share_end:.1f})"

    def _resizing(self) -> str:
        if not self.stretch_to:
            return ""
        return (f"\n      (re-sized after its epoch {RESIZE_AFTER} to what its own speed holds, at most "
                f"{self.stretch_to} epochs)")

    def text(self) -> str:
        lines = [f"  plan for {self.minutes:g} min here (at {self.rate / 1e9:.0f} GFLOP/s training):"]
        if self.recipe_only:
            if not self.filled_epochs:
                return "\n".join(lines + ["    no search (--recipe-only): not even one epoch of the recipe's final "
                                           "training fits beside the export"])
            return "\n".join(lines + [
                "    no search (--recipe-only): the recipe alone",
                f"    final training on all training images: {self.filled_epochs} epochs, "
                f"{self.final_seconds / 60:.1f} min{self._resizing()}",
                f"    export: {self.export_seconds / 60:.1f} min",
                f"    total: {(self.final_seconds + self.export_seconds) / 60:.1f} min"])
        if self.time_share is not None:
            lines.append(self._search_line())
        if self.workers:
            assumed = ", assumed: no worker this size has trained here yet" if self.worker_rate_assumed else ""
            lines.append(f"    the search on {self.workers} worker processes of {self.worker_cores} core(s), "
                         f"{self.workers} runs at a time (run times at a worker's speed{assumed}); the final on "
                         "all cores")
        if self.rungs and not self.floor_takes_all:
            lines.append(f"    search: {self.rungs[0][2]} configuration(s), the best 1/{self.reduction_factor} of each "
                         "rung promoted to the next:")
            lines += [f"      {name}: {runs} run(s) of {seconds / 60:.1f} min" for name, seconds, runs in self.rungs]
        elif not self.rungs and not self.floor_takes_all:
            lines.append(f"    a trial of the recipe: {self.trial_seconds / 60:.1f} min")
        epochs = f"{self.filled_epochs} epochs, " if self.time_share is not None and self.filled_epochs else ""
        lines += [f"    final training on all training images: {epochs}{self.final_seconds / 60:.1f} min"
                  f"{self._resizing() if epochs else ''}" if self.final_seconds else "    final training: off",
                  f"    export: {self.export_seconds / 60:.1f} min",
                  f"    total: {(self._search_total() + self.final_seconds + self.export_seconds) / 60:.1f} min"]
        if not self.rungs and not self.floor_takes_all:
            lines.append(f"    so {self.trials} such trial(s) fit beside the final training and the export")
        if self.trials == 0 and not self.floor_takes_all:
            lines.append("    none does: the sweep shortens trials where the space searches epochs, and refuses "
                         "the rest" + (" (the final training comes first)" if self.final_seconds else ""))
        return "\n".join(lines)


def plan(space, minutes: float, log: ThroughputLog | None = None, n_train: int = 45_000, n_val: int = 5_000,
         n_test: int = 10_000, recipe_only: bool = False, num_classes: int = 10, workers: int = 0,
         cores: int | None = None) -> HourPlan | None:
    """The plan for a sweep of ``space`` lasting ``minutes``, or None while this machine's
    speed for networks of that size is unknown (``cnnbench check --measure``).

    With ``search.rungs``, successive halving: ``n`` configurations at the first rung,
    ``n // f`` of them at the second, ``n // f**2`` at the third (``f`` the reduction
    factor), with the largest ``n`` whose runs fit beside the final training and export.
    ``recipe_only``: ``space`` is one recipe (space.variants.recipe_alone) whose final training
    gets as many epochs as the minutes hold, as ``--recipe-only`` sweeps do. ``num_classes``:
    the data's (``training.data.class_count``): the classifier's size is in every forecast.
    ``workers``: the search runs on that many processes, each pinned to its share of the
    ``cores`` (default: this process's), at the speed such a worker reached here (else that
    share of the whole machine's); the final training runs on all of them.
    """
    from cnnbench.training.runtime import cpu, resolve_precision

    config = space.recipe_config()  # what a sweep without a search trains; the floor is priced on it too
    deadline = Deadline(None, log or ThroughputLog(), final_images=(n_train + n_val) if space.final else 0,
                        image_size=space.data.image_size, num_classes=num_classes)  # as the sweep's is
    rate = (log or deadline.log or ThroughputLog()).rate(resolve_precision(config["precision"]), deadline._flops(config))
    if not rate:
        return None
    export = deadline.export_seconds(config, n_test, resolve_precision(config["precision"]))
    if recipe_only:  # no trial, and the final's length is what the minutes hold, not its own
        deadline.end = time.time() + minutes * 60
        deadline.final_floor = space.search.final_min_epochs or 0  # as the sweep's: the final keeps it
        margin = deadline.final_margin(config)
        filled, note = deadline.fill_final(config, n_test, margin)
        if note and filled["epochs"] <= deadline.final_floor:  # at its floor: priced at the floor's margin
            margin = FINAL_SAFETY
        return HourPlan(minutes, rate, 0.0, deadline.final_seconds(filled, margin) if note else 0.0, export, 0,
                        recipe_only=True, filled_epochs=filled["epochs"] if note else 0,
                        stretch_to=stretch_limit(filled) if note else None)
    cores = cores or cpu().cores
    worker_cores = max(1, cores // workers) if workers else cores
    found = (log or deadline.log or ThroughputLog()).rate(
        resolve_precision(config["precision"]), deadline._flops(config), cores=worker_cores) if workers else None
    search_rate = found or rate * worker_cores / cores
    parallel = max(1, workers)
    trial = deadline._seconds(config, n_train, n_val, search_rate)
    share = space.search.time_share if space.final else None
    if share is not None:  # the search gets its share; the final, as many epochs as the rest holds
        search = share * minutes * 60
        if space.search.final_min_epochs:  # ... less where the final's floor needs more of the time
            now = time.time()
            deadline.end, deadline.test_images = now + minutes * 60, n_test
            deadline.floor_config = config
            deadline.final_floor = space.search.final_min_epochs
            if (floor_start := deadline.floor_start()) is not None:
                search = max(0.0, min(search, floor_start - now))
        deadline.end = time.time() + minutes * 60 - search
        filled, note = deadline.fill_final(config, n_test, FINAL_SAFETY)
        filled_epochs = filled["epochs"] if note else 0
        final = deadline.final_at_start(filled) if note else 0.0
        stretch = stretch_limit(filled) if note else None
    else:
        final, filled_epochs, stretch = deadline.final_seconds(config), 0, None
        search = minutes * 60 - final - export
    side: dict[str, Any] = dict(workers=workers, worker_cores=worker_cores if workers else 0,
                                worker_rate_assumed=bool(workers) and not found, stretch_to=stretch,
                                search_until=search if share is not None else None,
                                final_floor=space.search.final_min_epochs or 0)
    search *= parallel  # run-seconds: the workers' runs side by side
    if not space.search.rungs:
        return HourPlan(minutes, rate, trial, final, export, max(0, int(search // trial)),
                        filled_epochs=filled_epochs, time_share=share, **side)
    f = space.search.reduction_factor
    costs = [deadline._seconds({**config, **rung}, n_train, n_val, search_rate) for rung in space.search.rungs]
    per_config = sum(cost / f**k for k, cost in enumerate(costs))  # a configuration's expected share
    def spent(n: int) -> float:  # whole runs: n at the first rung, n // f at the next, ...
        return sum(cost * (n // f**k) for k, cost in enumerate(costs))

    n = max(0, int(search // per_config))
    while spent(n + 1) <= search:
        n += 1
    while n and spent(n) > search:
        n -= 1
    rungs = [(space.rung_name(k), cost, n // f**k) for k, cost in enumerate(costs)]
    return HourPlan(minutes, rate, costs[0], final, export, n, rungs, f, filled_epochs=filled_epochs,
                    time_share=share, **side)
