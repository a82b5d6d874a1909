"""Per-epoch checkpoints: a trial stopped mid-way (kill -9, SIGTERM, a crashed child, a lost
machine) goes on from its last finished epoch instead of from epoch 0.

What a training needs to go on exactly where it stopped, written at every epoch's end:
every variable of the model (weights, batch-norm statistics, dropout's seed state), every
variable of the optimizer (its step counter, which drives the learning-rate schedule, its
momentum slots and, with ``ema``, the averaged weights), the Lookahead average and its step,
and the trainer's own bookkeeping (the per-epoch history, the epoch times, the best epoch's
score and weights). The data order needs nothing: every epoch's shuffle and augmentation are
functions of (seed, epoch, batch) alone (``pipeline.train_dataset``).

One ``.npz`` file (NumPy's own format: arrays by name, plus the bookkeeping as JSON), written
to a temporary name, flushed to disk and renamed over the last one, so a kill at any moment
leaves either the previous epoch's checkpoint or this one's, whole. Why not Keras'
``BackupAndRestore``: it keeps the model and optimizer but not a callback's state (the
Lookahead average), not the trainer's history and best weights, and not which weights
``SwapEMAWeights`` had swapped in; one file of arrays keeps all of it in one atomic rename.
The engine deletes it when the trial ends (``engines/trial.py``).
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.files import atomic_write

FORMAT = 1


@dataclass
class Saved:
    """A training's state after ``epochs_done`` epochs."""
    epochs_done: int
    model: list[np.ndarray]                 # model.variables, in order
    optimizer: list[np.ndarray]             # optimizer.variables, in order
    history: list[dict] = field(default_factory=list)
    train_times: list[float] = field(default_factory=list)
    traced: list[int] = field(default_factory=list)  # epochs whose time includes graph tracing
    best: float = -1.0
    best_weights: list[np.ndarray] | None = None   # model.get_weights() of the best epoch
    lookahead_step: int | None = None
    lookahead: list[np.ndarray] | None = None      # the Lookahead callback's average
    ema_in_model: bool = False              # SwapEMAWeights had the averaged weights swapped in
    resumed_from: list[int] = field(default_factory=list)  # epochs this training went on from before
    written_at: float = 0.0                 # Unix seconds
    schedule_epochs: int | None = None      # the epochs its schedule had then (a re-sized final's change)

    def fits(self, model_variables, optimizer_variables) -> bool:
        """Its arrays have the shapes of these variables (the same network and optimizer)."""
        def same(arrays, variables) -> bool:
            return len(arrays) == len(variables) and all(
                tuple(a.shape) == tuple(v.shape) for a, v in zip(arrays, variables))
        return same(self.model, model_variables) and same(self.optimizer, optimizer_variables)


_LISTS = ("model", "optimizer", "best_weights", "lookahead")


def save(path: Path, saved: Saved) -> None:
    """Write ``saved`` at ``path`` atomically (see the module docstring)."""
    saved.written_at = time.time()
    arrays: dict[str, Any] = {f"{name}/{i}": np.asarray(a) for name in _LISTS
                              for i, a in enumerate(getattr(saved, name) or [])}
    meta = {k: v for k, v in asdict(saved).items() if k not in _LISTS}
    meta.update(format=FORMAT, counts={name: len(getattr(saved, name) or []) for name in _LISTS},
                present={name: getattr(saved, name) is not None for name in _LISTS})
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write(path, buffer.getvalue(), durable=True)


def epochs_done(path: Path) -> int:
    """How many epochs the checkpoint at ``path`` holds (0: none, or unreadable), reading
    only its bookkeeping, not its arrays: what the deadline needs to price a resumed trial."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(bytes(f["__meta__"]).decode())
    except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile):
        return 0
    return int(meta.get("epochs_done", 0)) if meta.get("format") == FORMAT else 0


def load(path: Path) -> Saved | None:
    """The checkpoint at ``path``, or None when there is none or it cannot be read (then the
    training starts from epoch 0: a checkpoint saves time, it is never needed)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(bytes(f["__meta__"]).decode())
            if meta.get("format") != FORMAT:
                return None
            lists: dict[str, Any] = {name: [f[f"{name}/{i}"] for i in range(meta["counts"][name])]
                                     if meta["present"][name] else None for name in _LISTS}
    except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile):  # absent, torn by a disk fault, or not ours
        return None
    known: dict[str, Any] = {k: v for k, v in meta.items() if k in Saved.__dataclass_fields__ and k not in _LISTS}
    return Saved(**known, **lists)


def capture(epochs_done: int, model, watcher, lookahead=None, ema_swap=None, resumed_from=(),
            schedule_epochs: int | None = None) -> Saved:
    """The state of a training after ``epochs_done`` epochs, from the trainer's objects:
    the compiled ``model``, its ``watcher`` (train.EpochWatcher), the Lookahead callback and
    the SwapEMAWeights callback when the configuration has them."""
    step, average = lookahead.state() if lookahead is not None else (None, None)
    return Saved(epochs_done=epochs_done, model=[v.numpy() for v in model.variables],
                 optimizer=[v.numpy() for v in model.optimizer.variables],
                 history=[dict(h) for h in watcher.history], train_times=list(watcher.train_times),
                 traced=list(watcher.traced), best=float(watcher.best), best_weights=watcher.best_weights,
                 lookahead_step=step, lookahead=average,
                 ema_in_model=bool(getattr(ema_swap, EMA_FLAG, False)), resumed_from=list(resumed_from),
                 schedule_epochs=schedule_epochs)


EMA_FLAG = "_ema_weights_in_model"  # SwapEMAWeights' own record of which weights the model holds (Keras 3)


def resumable(ema_swap) -> bool:
    """Whether a training with these callbacks can be checkpointed: with ``ema`` the
    checkpoint must know which weights SwapEMAWeights had swapped in, which Keras keeps in
    a private attribute; if a Keras release renames it, trainings start over instead of
    resuming wrongly (tests/test_checkpoint.py resumes an ``ema`` training bit for bit)."""
    return ema_swap is None or hasattr(ema_swap, EMA_FLAG)


def restore(saved: Saved, model, watcher, lookahead=None, ema_swap=None) -> bool:
    """Put ``saved`` back into a freshly built and compiled training; False (nothing
    changed) when it does not fit this network and optimizer."""
    model.optimizer.build(model.trainable_variables)
    if not saved.fits(model.variables, model.optimizer.variables):
        return False
    if (lookahead is None) != (saved.lookahead is None) or (saved.ema_in_model and ema_swap is None):
        return False
    for variable, value in zip(model.variables, saved.model):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, saved.optimizer):
        variable.assign(value)
    watcher.history, watcher.train_times = [dict(h) for h in saved.history], list(saved.train_times)
    watcher.traced, watcher.best, watcher.best_weights = list(saved.traced), saved.best, saved.best_weights
    if lookahead is not None:
        lookahead.restore = (saved.lookahead_step, saved.lookahead)
    if ema_swap is not None:
        setattr(ema_swap, EMA_FLAG, saved.ema_in_model)
    return True


class Checkpointer:
    """The trainer's side: a training's checkpoint at ``path``, resumed from before the
    training starts and written after every epoch. ``resumed_from``: the epochs it went on
    from (earlier resumes first); ``resumed_at``: when the checkpoint it went on from was
    written (what the lost attempt had saved by then). ``schedule_epochs``: the length of
    the schedule it trains; a checkpoint of another length is not resumed (a final training
    filling the time is keyed without its epochs, and its schedule may be re-sized)."""

    def __init__(self, path: Path, schedule_epochs: int | None = None):
        self.path: Path | None = path
        self.schedule_epochs = schedule_epochs
        self.resumed_from: list[int] = []
        self.resumed_at: float | None = None
        self.state: tuple = ()

    def resume(self, model, watcher, callbacks) -> int:
        """The epoch to start at: 0, or the epochs a checkpoint of this training holds."""
        import keras

        lookahead = next((c for c in callbacks if hasattr(c, "restore")), None)
        swap = next((c for c in callbacks if isinstance(c, keras.callbacks.SwapEMAWeights)), None)
        self.state = (model, watcher, lookahead, swap)
        if not resumable(swap):
            self.path = None  # nothing written: see resumable
            return 0
        saved = load(self.path) if self.path is not None else None
        if saved is None or not self._same_length(saved) or not restore(saved, model, watcher, lookahead, swap):
            return 0
        self.resumed_from, self.resumed_at = [*saved.resumed_from, saved.epochs_done], saved.written_at
        return saved.epochs_done

    def _same_length(self, saved: Saved) -> bool:
        """Its schedule is this training's length (one that does not say its length, written
        before lengths were kept or by a training given none, counts as the same)."""
        return None in (saved.schedule_epochs, self.schedule_epochs) or saved.schedule_epochs == self.schedule_epochs

    def after_epoch(self, epochs_done: int) -> None:
        if self.path is not None and self.state:
            model, watcher, lookahead, swap = self.state
            save(self.path, capture(epochs_done, model, watcher, lookahead, swap, self.resumed_from,
                                    self.schedule_epochs))
