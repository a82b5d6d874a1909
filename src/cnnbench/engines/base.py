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

from cnnbench import runtime
from cnnbench.data import DataBundle
from cnnbench.deadline import TRAIN_COST, Deadline
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
    note: str = ""                  # what cnnbench changed or decided (e.g. epochs shortened for the deadline)
    started_at: float | None = None   # Unix seconds
    finished_at: float | None = None
    precision: str | None = None    # the dtype policy it trained with
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
                images_per_s=result.images_per_s, model_params=result.params, flops=result.flops,
                precision=result.precision)


def run_trial(number: int, engine: str, params: dict, space: Space, data: DataBundle, paths: StudyPaths,
              should_stop: Callable[[int, float], bool] | None = None,
              progress: Progress | None = None, overrides: dict | None = None,
              deadline: Deadline | None = None) -> TrialRecord:
    """Train the configuration ``params`` selects and describe how it ended.

    ``should_stop(epoch, epochs, val_accuracy)`` is the engine's pruning hook. Exceptions other than
    KeyboardInterrupt become a failed record with the reason; the caller decides whether
    the engine should see them. A completed trial's model is saved for export.
    ``overrides`` replace config values the engine controls itself (Hyperband's epochs).
    With a ``deadline``, a trial that cannot finish in time raises ``NotStarted`` before
    training (or is shortened, when the space searches epochs), and one that is running
    when the deadline nears stops at the end of an epoch.
    """
    config = {**space.complete(params), **(overrides or {})}
    note = ""
    if deadline is not None and data is not None:
        precision = runtime.resolve_precision(config["precision"], gpus=runtime.configure_tensorflow()["gpus"])
        config, note = deadline.admit(config, len(data.y_train), len(data.y_val), len(data.y_test), precision,
                                      space.epoch_options())
    record = TrialRecord(trial=number, state="running", engine=engine, params=dict(params), config=config,
                         note=note, started_at=time.time())
    if progress:
        progress.trial_started(number, params)
    last_epoch_end = [time.perf_counter()]

    def on_epoch(epoch: int, logs: dict) -> None:
        now = time.perf_counter()
        epoch_seconds, last_epoch_end[0] = now - last_epoch_end[0], now
        # how far it got, whatever ends it (the trainer's own result, when it has one, wins)
        record.epochs_run = epoch
        record.val_accuracy = max(record.val_accuracy or 0.0, logs["val_accuracy"])
        if progress:
            progress.epoch_done(number, epoch, config["epochs"], logs)
        # the pruner hears every epoch, but a trial that has trained all its epochs is complete
        if should_stop and should_stop(epoch, config["epochs"], logs["val_accuracy"]) and epoch < config["epochs"]:
            raise PruneTrial(f"pruned after epoch {epoch}")
        if deadline is not None and epoch < config["epochs"] and deadline.epoch_would_overrun(epoch_seconds):
            record.note = f"stopped after epoch {epoch} of {config['epochs']}: the deadline is near"
            raise PruneTrial(record.note)

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
    record.finished_at = time.time()
    if deadline is not None and deadline.log is not None and record.images_per_s and record.precision:
        deadline.log.add(record.precision, record.images_per_s * record.flops * TRAIN_COST)
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
