"""What every engine shares: the trial record, the study folder, and one way to run a trial.

An engine (Optuna, KerasTuner) only decides which configuration to try next. Building,
training, saving the trial's model and describing the outcome all go through
``run_trial`` here, so one configuration trains identically whichever engine chose it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cnnbench.data import DataBundle
from cnnbench.space import Space
from cnnbench.train import PruneTrial, TrialResult, train_and_evaluate

STATES = ("complete", "pruned", "failed", "running")


@dataclass
class TrialRecord:
    """One row of the leaderboard: a trial, whatever its end."""
    trial: int
    state: str                      # one of STATES
    engine: str
    params: dict[str, Any]          # the searched values (what the engine chose)
    val_accuracy: float | None = None
    val_loss: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    train_seconds: float | None = None
    images_per_s: float | None = None
    model_params: int | None = None
    flops: int | None = None
    fail_reason: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the full configuration trained

    def metrics(self) -> dict[str, Any]:
        """The measured fields, as engines store them beside their own trial state."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("trial", "state", "engine", "params", "config")}


@dataclass
class StudyPaths:
    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial_model(self, number: int) -> Path:
        return self.trials / f"trial-{number:04d}.keras"

    @property
    def best(self) -> Path:
        return self.root / "best"


class Progress(Protocol):
    def trial_started(self, number: int, params: dict) -> None: ...
    def epoch_done(self, number: int, epoch: int, epochs: int, logs: dict) -> None: ...
    def trial_done(self, record: TrialRecord) -> None: ...


def result_fields(result: TrialResult) -> dict[str, Any]:
    return dict(val_accuracy=result.val_accuracy, val_loss=result.val_loss, best_epoch=result.best_epoch,
                epochs_run=result.epochs_run, train_seconds=result.train_seconds,
                images_per_s=result.images_per_s, model_params=result.params, flops=result.flops)


def run_trial(number: int, engine: str, params: dict, space: Space, data: DataBundle, paths: StudyPaths,
              should_stop: Callable[[int, float], bool] | None = None,
              progress: Progress | None = None, overrides: dict | None = None) -> TrialRecord:
    """Train the configuration ``params`` selects and describe how it ended.

    ``should_stop(epoch, val_accuracy)`` is the engine's pruning hook. Exceptions other than
    KeyboardInterrupt become a failed record with the reason; the caller decides whether
    the engine should see them. A completed trial's model is saved for export.
    ``overrides`` replace config values the engine controls itself (Hyperband's epochs).
    """
    config = {**space.complete(params), **(overrides or {})}
    record = TrialRecord(trial=number, state="running", engine=engine, params=dict(params), config=config)
    if progress:
        progress.trial_started(number, params)

    def on_epoch(epoch: int, logs: dict) -> None:
        if progress:
            progress.epoch_done(number, epoch, config["epochs"], logs)
        if should_stop and should_stop(epoch, logs["val_accuracy"]):
            raise PruneTrial(f"pruned after epoch {epoch}")

    started = time.perf_counter()
    try:
        result = train_and_evaluate(config, data, on_epoch, seed=space.seed + number)
    except PruneTrial as pruned:
        record.state = "pruned"
        if getattr(pruned, "result", None) is not None:
            record.__dict__.update(result_fields(pruned.result))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a broken configuration fails its trial, not the search
        record.state = "failed"
        record.fail_reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        record.train_seconds = round(time.perf_counter() - started, 2)
    else:
        record.state = "complete"
        record.__dict__.update(result_fields(result))
        save_model(result.model, paths.trial_model(number))
    if progress:
        progress.trial_done(record)
    return record


def wait_all(processes: list) -> list[int]:
    """Wait for every process and return their exit codes; on Ctrl-C or error, stop them all."""
    try:
        return [p.wait() for p in processes]
    except BaseException:
        for p in processes:
            p.terminate()
        raise


def save_model(model, path: Path) -> None:
    """Save the inference graph only (no optimizer state), atomically."""
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    inference = keras.Model(model.inputs, model.outputs, name=model.name)  # uncompiled: no optimizer
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    inference.save(tmp)
    tmp.replace(path)
