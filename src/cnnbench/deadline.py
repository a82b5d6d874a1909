"""An hour is an hour: the sweep's deadline.

Before a trial starts, the sweep asks ``Deadline.admit``: a trial that cannot finish
before the deadline (at the forecast of forecast.py) is not started, or, when the space
searches ``epochs``, starts with the most epochs that fit. The deadline also keeps time for
the final training, sizes it to the time left, and ends a search whose share of the time
(search.time_share, search.final_min_epochs) is over.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cnnbench.forecast import (DEPLOY_SECONDS, EXPORT_SECONDS, FINAL_SAFETY, FLOOR_SLACK, MAX_FILL_EPOCHS,
                               SAFETY, trial_seconds)
from cnnbench.knobs import TTA_VIEWS, unspell
from cnnbench.model import architecture_stats
from cnnbench.throughput import ThroughputLog

DEADLINE_ENV = "CNNBENCH_DEADLINE"  # absolute end (Unix seconds) a parent hands its workers
SEARCH_END_ENV = "CNNBENCH_SEARCH_END"  # and the end of its search phase (search.time_share)


class NotStarted(Exception):
    """A trial was not started because it could not finish before the deadline."""


@dataclass
class Deadline:
    """The moment a sweep must be done by (Unix seconds), or None for no deadline.

    With ``final_images`` set (the final training is on: train + validation images), the
    deadline keeps time for the final training of the best trial so far, and admits a new
    trial only if its own final training would fit too (it may become the best).
    """
    end: float | None
    log: ThroughputLog | None = None
    final_images: int = 0
    image_size: int = 32     # the data's: a trial's FLOPs per image depend on it
    num_classes: int = 10
    best_val: float = -1.0
    best_final_seconds: float = 0.0  # forecast of the current best trial's final training
    best_rung: int = 0               # the rung the best so far was scored at
    # search.time_share: the search phase ends here (Unix seconds); a trial must finish by
    # then, and the final training fills what is left after it instead of being kept aside
    search_end: float | None = None
    # search.final_min_epochs: the search ends earlier still where its share would leave the
    # final training fewer epochs than this (a slow CPU), priced on the best configuration so
    # far (before one finished, ``floor_config``: the space's recipe) once this machine's speed
    # for it is known; ``test_images``: the export's test pass, kept beside it
    final_floor: int = 0
    floor_config: dict | None = None
    test_images: int = 0
    best_config: dict | None = None

    def final_seconds(self, config: dict, margin: float = SAFETY) -> float:
        """Forecast wall seconds of ``config``'s final training (0 when off or unknown here),
        ``margin`` times what the measured speed gives."""
        if not self.final_images or self.log is None:
            return 0.0
        from cnnbench.training.runtime import resolve_precision

        rate = self.log.rate(resolve_precision(config["precision"]), self._flops(config), self.final_images)
        return self._seconds(config, self.final_images, 0, rate) * margin / SAFETY if rate else 0.0

    def _flops(self, config: dict) -> int:
        return architecture_stats(config, self.image_size, self.num_classes).flops

    def _seconds(self, config: dict, n_train: int, n_val: int, rate: float) -> float:
        return trial_seconds(config, n_train, n_val, rate, self.image_size, self.num_classes)

    def final_margin(self, config: dict) -> float:
        """The margin a final training filling the time is sized with: FINAL_SAFETY when
        this network's speed here comes from trainings of at least half the final's images
        (after a search, or a --recipe-only sweep on a machine that has trained it), else
        SAFETY (the speed may be a half-minute --measure's: a final the deadline cuts short
        leaves no finished schedule). At 1.15 a measured Zen 4 --recipe-only hour left 10.6
        of its minutes unused."""
        from cnnbench.training.runtime import resolve_precision

        known = self.log is not None and self.log.measured_at_size(
            resolve_precision(config["precision"]), self._flops(config), self.final_images)
        return FINAL_SAFETY if known else SAFETY

    def final_at_start(self, config: dict) -> float:
        """The final training's forecast when it is about to start: with FINAL_SAFETY's
        margin instead of SAFETY's (see there)."""
        return self.final_seconds(config, FINAL_SAFETY)

    def fit_final(self, config: dict, epoch_options: list[int], n_test: int = 0) -> tuple[dict, str]:
        """``config`` with the most epochs (of ``epoch_options``, at most its own) whose final
        training fits in the time left less the export (its test pass over ``n_test``
        images), and a note when they were cut."""
        budget = self.final_budget(config, n_test)
        if self.end is None or self.final_at_start(config) <= budget:
            return config, ""
        # the space's epoch choices when it searches epochs, else any shorter schedule (the
        # one-cycle schedule compresses to it)
        for epochs in sorted((e for e in epoch_options or range(1, config["epochs"]) if e < config["epochs"]),
                             reverse=True):
            if self.final_at_start({**config, "epochs": epochs}) <= budget:
                return {**config, "epochs": epochs}, f"; shortened from {config['epochs']} to {epochs} epochs"
        return config, ""

    def fill_final(self, config: dict, n_test: int = 0, margin: float = SAFETY) -> tuple[dict, str]:
        """``config`` with as many epochs as its final training can have in the time left
        less the export (its test pass over ``n_test`` images), and a note saying so; as it
        is without a deadline or while this machine's speed for it is unknown.

        ``margin``: how much longer than forecast the training may run. ``--recipe-only``
        keeps the full SAFETY: its speed may come from half a minute on random images, and
        a final training the deadline cuts short leaves no finished schedule. After a
        search (search.time_share), FINAL_SAFETY's: the speed was just measured on this
        network's own size, and at 1.15 a 35-minute final would idle 4.5 minutes. Never fewer
        than search.final_min_epochs where they fit at FINAL_SAFETY's margin."""
        if self.end is None or not self.final_seconds(config):
            return config, ""
        budget = self.final_budget(config, n_test)

        def seconds(epochs: int) -> float:
            return self.final_seconds({**config, "epochs": epochs}, margin)

        lo, hi = 0, MAX_FILL_EPOCHS  # a forecast grows with the epochs: the most that fit, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if seconds(mid) <= budget else (lo, mid - 1)
        # search.final_min_epochs was kept at FINAL_SAFETY's margin (floor_start, the plan): a
        # wider one must not take back an epoch of it (the sweep would train fewer than planned)
        floor = self.final_floor
        if lo < floor and self.final_seconds({**config, "epochs": floor}, FINAL_SAFETY) <= budget:
            return {**config, "epochs": floor}, f"; {floor} epochs (search.final_min_epochs) in the {budget / 60:.1f} min left"
        if not lo:
            return config, ""  # not even one epoch: run_final refuses it and says why
        return {**config, "epochs": lo}, f"; {lo} epochs, as many as the {budget / 60:.1f} min left hold"

    def final_budget(self, config: dict, n_test: int = 0) -> float:
        """Seconds the final training may take: the time left less the export (its test
        pass over ``n_test`` images)."""
        return self.left() - self.export_reserve(config, n_test)

    def export_reserve(self, config: dict, n_test: int = 0) -> float:
        """Seconds kept after the final training for the export (its test pass over
        ``n_test`` images), at least twice the fixed work."""
        from cnnbench.training.runtime import resolve_precision

        return max(2 * EXPORT_SECONDS, self.export_seconds(config, n_test, resolve_precision(config["precision"])))

    def refill_final(self, config: dict, n_test: int, done: int, epoch_seconds: float) -> int:
        """The epochs a final training filling the time should have in all, once ``done``
        epochs ran and the last took ``epoch_seconds``: as many as the time left holds at
        FINAL_SAFETY's margin on the speed it measured itself (at least one more)."""
        left = self.final_budget(config, n_test)
        return done + max(1, int(left // (epoch_seconds * FINAL_SAFETY)))

    def search_over(self) -> bool:
        """search.time_share: the search's share of the timeout has passed (or the time the
        final training keeps for search.final_min_epochs has come)."""
        ends = self.search_ends_at()
        return ends is not None and time.time() >= ends

    def search_ends_at(self) -> float | None:
        """When the search must be over (Unix seconds; None: no search share): its share's
        end, or earlier when the final training of the best configuration so far needs more
        than the rest for search.final_min_epochs (``floor_binds``)."""
        floor = self.floor_start()
        if self.search_end is None or floor is None:
            return self.search_end
        return min(self.search_end, floor)

    def floor_binds(self) -> bool:
        """search.final_min_epochs ends the search before its share does."""
        return self._before_share(self.search_ends_at())

    def _before_share(self, ends: float | None) -> bool:
        return ends is not None and self.search_end is not None and ends < self.search_end

    def floor_start(self, config: dict | None = None) -> float | None:
        """The moment (Unix seconds) the search must end for the final training of ``config``
        (default: the best so far, else ``floor_config``) to train search.final_min_epochs
        epochs before the export (FLOOR_SLACK before the latest one it could start); None
        without a floor, a deadline, or this machine's speed for that configuration (the
        first runs measure it)."""
        config = config or self.best_config or self.floor_config
        if not self.final_floor or self.end is None or config is None:
            return None
        floor = {**config, "epochs": self.final_floor, "train_images": 0}
        seconds = self.final_seconds(floor, FINAL_SAFETY)
        if not seconds:
            return None
        return self.end - self.export_reserve(floor, self.test_images) - seconds - FLOOR_SLACK

    def note_complete(self, config: dict, val_accuracy: float | None, rung: int | None = None) -> None:
        """A trial completed: when it is the best so far (at the highest rung yet, with
        successive halving), keep time for its final training."""
        if val_accuracy is not None and (rung or 0, val_accuracy) > (self.best_rung, self.best_val):
            self.best_val, self.best_final_seconds = val_accuracy, self.final_seconds(config)
            self.best_rung, self.best_config = rung or 0, config

    @classmethod
    def from_minutes(cls, minutes: float | None, started: float | None = None) -> "Deadline":
        inherited = os.environ.get(DEADLINE_ENV)
        if inherited:  # a worker keeps its parent's deadline and search phase
            search_end = os.environ.get(SEARCH_END_ENV)
            return cls(float(inherited), ThroughputLog(), search_end=float(search_end) if search_end else None)
        if not minutes:
            return cls(None, ThroughputLog())
        return cls((started or time.time()) + minutes * 60, ThroughputLog())

    def worker_environment(self) -> dict[str, str]:
        """What a worker process started by this sweep is handed in its environment, so that
        it keeps this deadline and search phase (``from_minutes`` reads them back)."""
        env = {DEADLINE_ENV: repr(self.end)} if self.end is not None else {}
        ends = self.search_ends_at()  # as it stands now: a worker prices no floor of its own
        if self.end is not None and ends is not None:
            env[SEARCH_END_ENV] = repr(ends)
        return env

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.time()

    def export_seconds(self, config: dict, n_test: int, precision: str) -> float:
        """Time to keep for ranking and exporting: a test pass of the model plus fixed work,
        and when the ``export`` extra is installed, the ONNX and LiteRT files' conversion
        and check (three more passes over the check images: model.keras and the two files)."""
        from cnnbench.deploy.verify import CHECK_IMAGES, deploying

        flops = self._flops(config)
        rate = self.log.rate(precision, flops) if self.log else None
        deploy = DEPLOY_SECONDS if deploying() else 0.0
        if not rate:
            return EXPORT_SECONDS + deploy
        views = TTA_VIEWS[unspell("tta", config["tta"])]
        checks = 3 * min(n_test, CHECK_IMAGES) if deploy else 0
        return EXPORT_SECONDS + deploy + (n_test + checks) * views * flops / rate

    def admit(self, config: dict, n_train: int, n_val: int, n_test: int, precision: str,
              epoch_options: list[int], final_config: dict | None = None, epochs_done: int = 0) -> tuple[dict, str]:
        """The configuration to train and a note, or NotStarted when it cannot finish in time.

        ``epoch_options`` are the epoch counts the space allows (empty: epochs is fixed);
        a trial too long for the time left is shortened to the largest one that fits.
        ``final_config``: what its final training would train when that differs from
        ``config`` (a successive-halving rung trains a cheaper fidelity than its final).
        ``epochs_done``: epochs a checkpoint of this training already holds (a retried
        trial): only the rest is forecast, and it is never shortened, since a shorter
        schedule is another training that the checkpoint cannot go on from.
        """
        if epochs_done:
            epoch_options = []
        rate = self.log.rate(precision, self._flops(config)) if self.log else None
        if self.end is None or not rate:
            return config, ""
        # the export tests the final model (its views), not this run's cheaper fidelity
        budget = self.left() - self.export_seconds(final_config or config, n_test, precision)
        search_end = self.search_ends_at()
        if search_end is not None:  # the search has its share; the final, all after it
            # ... and this run's own final keeps the floor too, should it become the best (a
            # costlier network than the best so far)
            own_floor = self.floor_start(final_config or config)
            search_end = search_end if own_floor is None else min(search_end, own_floor)
            budget = min(budget, search_end - time.time())
        floored = self._before_share(search_end)

        left_share = max(config["epochs"] - epochs_done, 0) / config["epochs"]

        def reserve_for(candidate: dict) -> float:
            if self.search_end is not None:
                return 0.0
            return max(self.best_final_seconds, self.final_seconds(final_config or candidate))

        def fits(candidate: dict) -> bool:
            return self._seconds(candidate, n_train, n_val, rate) * left_share + reserve_for(candidate) <= budget

        if fits(config):
            return config, ""
        for epochs in sorted((e for e in epoch_options if e < config["epochs"]), reverse=True):
            shorter = {**config, "epochs": epochs}
            if fits(shorter):
                return shorter, (f"shortened from {config['epochs']} to {epochs} epochs to finish before the "
                                 f"deadline ({budget / 60:.1f} min left)")
        need = self._seconds(config, n_train, n_val, rate) * left_share
        final = reserve_for(config)
        kept = f", {final / 60:.1f} min of it kept for the final training" if final else ""
        until = ("the final training's time for its search.final_min_epochs" if floored
                 else "the search's share of the time ends (search.time_share)" if self.search_end else "the deadline")
        raise NotStarted(f"not started: forecast {need / 60:.1f} min at {rate / 1e9:.0f} GFLOP/s, "
                         f"{max(budget, 0) / 60:.1f} min left before {until}{kept}")

    def epoch_would_overrun(self, seconds_per_epoch: float, keep_final: bool = True) -> bool:
        """True when another epoch of this length would end past the deadline (minus export
        and, for a search trial, the time kept for the final training or the search's end)."""
        search_end = self.search_ends_at()
        if keep_final and search_end is not None:
            return search_end - time.time() < seconds_per_epoch
        reserve = self.best_final_seconds if keep_final else 0.0
        return self.end is not None and self.left() - EXPORT_SECONDS - reserve < seconds_per_epoch
