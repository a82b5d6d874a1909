"""cnnbench's own record of every trial: ``results/<study>/trials/trial-NNNN.json``.

A record is written when a trial starts (state ``running``, host, pid, start time), touched
by a heartbeat while it trains, and written again when it ends: the configuration, every
metric, the per-epoch history, how it ended and why. The leaderboard, the export and the
progress curve read only these files; an engine's storage (Optuna's journal or database,
KerasTuner's project) is its resume state and nothing more.

A running record whose heartbeat has gone stale, or whose process is gone, belongs to a
trial that was lost (kill -9, out of memory, a lost machine): ``engines.recovery`` marks it
failed and tries the configuration again.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from cnnbench.files import atomic_write

class State(StrEnum):
    """How a trial (or the final training) stands. A StrEnum: a record's JSON holds the
    plain string, and a state read back compares equal to its member."""
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


STATES = tuple(State)


class Outcome(NamedTuple):
    """How one training ended, as a runner reports it (``engines.base.Runner``): its state,
    why (pruned, failed), and the trainer's figures (``TrialResult``'s fields without the
    model; None when it failed before any). A tuple, so it crosses the trial process's pipe
    as it is and unpacks as ``state, reason, metrics``."""
    state: str
    reason: str
    metrics: dict | None
# Interrupted trials (Ctrl-C, SIGTERM) are not results: they do not count toward the budget.
FINISHED = (State.COMPLETE, State.PRUNED, State.FAILED)
HEARTBEAT_SECONDS = 10.0     # how often a running trial's record is touched
STALE_SECONDS = 90.0         # a running record not touched for this long has lost its process


TRAIN_FLOPS_PER_FORWARD = 3  # a training step costs about forward + 2x backward
NO_TRIAL = -1  # ``trial`` of a final training that no search trial chose (a single-configuration space)


# What a trainer gives back (``train.train_and_evaluate`` or a stand-in): kept here, beside
# the record it becomes, so that neither the engines nor a trial child importing them pulls
# in TensorFlow.
class PruneTrial(Exception):
    """Raised by an ``on_epoch`` callback to stop a trial that is not promising. ``result``:
    what the trainer had reached by then (the leaderboard shows how far it got)."""

    result: "TrialResult | None" = None


class TrialFailed(RuntimeError):
    """Training itself went wrong (e.g. the loss became NaN); the message says how."""


@dataclass
class TrialResult:
    val_accuracy: float | None  # best over epochs (None: trained without a validation split)
    val_loss: float | None      # at the best epoch
    best_epoch: int          # 1-based
    epochs_run: int
    train_seconds: float     # time in training steps, validation excluded
    images_per_s: float      # training throughput, first (tracing) epoch excluded when possible
    parameter_count: int     # the network's weights, as Keras counts them
    flops: int               # per image, forward pass
    precision: str = "float32"  # the dtype policy it trained with (``auto`` resolved)
    train_images: int | None = None  # images it trained on (train_images knob, or all)
    latency_ms: float | None = None  # inference per image, exported model, batch LATENCY_BATCH, this CPU
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: list[int] = field(default_factory=list)  # epochs a checkpoint let it go on from
    resumed_checkpoint_at: float | None = None  # when that checkpoint was written (Unix seconds)
    model: Any = None        # the inference model (best epoch's weights), or the path of a .keras file the
                             # trainer saved itself, or None when pruned

    @property
    def train_flops_per_s(self) -> float:
        """Training FLOPs per second: what the deadline forecast prices later trials with."""
        return self.images_per_s * self.flops * TRAIN_FLOPS_PER_FORWARD


def _column(default=None, **kwargs):
    """A record field that is also a leaderboard column (in declaration order)."""
    return field(default=default, metadata={"column": True}, **kwargs)


@dataclass
class TrialRecord:
    """One trial, whatever its end. Fields marked as columns are the leaderboard's columns."""
    trial: int                       # the engine's trial number, unique in the study
    engine: str
    values: dict[str, Any]           # the searched values the engine chose
    config: dict[str, Any] = field(default_factory=dict)  # the full configuration trained
    state: str = State.RUNNING           # one of STATES
    val_accuracy: float | None = _column()   # best over the epochs run (the objective)
    val_loss: float | None = _column()       # at that epoch
    best_epoch: int | None = _column()
    epochs_run: int | None = _column()
    train_seconds: float | None = _column()  # in training steps, validation excluded
    images_per_s: float | None = _column()   # training throughput, tracing epoch excluded
    parameter_count: int | None = _column()  # the network's weights, as Keras counts them
    flops: int | None = _column()            # forward FLOPs per image, counted on paper
    precision: str | None = _column()        # the dtype policy it trained with
    train_images: int | None = _column()     # images it trained on: its data fidelity (final training: all)
    rung: int | None = _column()             # its successive-halving rung (search.rungs), None without rungs
    promoted_from: int | None = _column()    # the trial whose score at the rung below promoted this one
    latency_ms: float | None = _column()     # inference ms per image (exported model, batch of 64, this CPU)
    reason: str = _column("")                # why it was pruned, failed or interrupted
    note: str = _column("")                  # what cnnbench decided (e.g. epochs shortened)
    attempt: int = 1                         # 2, 3, ... when a lost trial's configuration is retried
    losses: int | None = None                # earlier attempts that were lost (an interruption is not one;
                                             # None in records older than the field: attempt - 1)
    seed: int | None = None                  # the seed it trained with
    data_fingerprint: str | None = None      # the data it trained on (engines/cache.py)
    trainer_version: str | None = None       # the training code's hash (engines/cache.py)
    cached_from: str | None = None           # "<study>/<trial>" when served from an earlier training
    resumed_from_epoch: list[int] = field(default_factory=list)  # went on from a lost attempt's checkpoint
    lost_seconds: float | None = None        # wall time the lost attempts trained past their last checkpoint
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_accuracy, val_loss, seconds
    host: str = ""
    pid: int = 0
    started_at: float | None = None          # Unix seconds
    heartbeat_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str) + "\n"

    @classmethod
    def from_dict(cls, raw: dict) -> "TrialRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


RESULT_COLUMNS = [f.name for f in fields(TrialRecord) if f.metadata.get("column")]
# What a trainer reports (TrialResult) that its record keeps: every field but the model and
# the resume's bookkeeping, which the engine turns into note and lost_seconds. A test holds
# each of them a TrialRecord field of the same type, so the two cannot drift apart.
NOT_RECORDED = ("model", "resumed_checkpoint_at")
RECORDED_METRICS = tuple(f.name for f in fields(TrialResult) if f.name not in NOT_RECORDED)


def best_epoch(history: list[dict]) -> dict:
    """The entry of a training's per-epoch ``history`` that scores it: the validated epoch
    with the highest val_accuracy, else (nothing validated: the final training) the last."""
    validated = [h for h in history if "val_accuracy" in h]
    return max(validated, key=lambda h: h["val_accuracy"]) if validated else history[-1]


def take_metrics(record: TrialRecord, metrics: dict, skip: tuple[str, ...] = ()) -> None:
    """Copy what a trainer reported (an Outcome's metrics) into its record: every recorded
    figure it gave a value, but those in ``skip``."""
    for key in RECORDED_METRICS:
        if key not in skip and metrics.get(key) is not None:
            setattr(record, key, metrics[key])


@dataclass
class StudyPaths:
    """Where a study's files live."""
    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial_record(self, number: int) -> Path:
        return self.trials / f"trial-{number:04d}.json"

    def trial_model(self, number: int) -> Path:
        return self.trials / f"trial-{number:04d}.keras"

    def lost_marker(self, number: int) -> Path:
        """Exists once a trial was declared lost (engines.recovery): its process, if it comes
        back (a paused machine), must not write its record again."""
        return self.trials / f".lost-{number:04d}"

    def checkpoint(self, key: str) -> Path:
        """A running training's per-epoch checkpoint (training/checkpoint.py), named by what it
        trains (``checkpoint_key``), so the retry of a lost trial, a new trial number, finds it.
        Its folder is made here: a trainer of one's own just writes the file."""
        folder = self.root / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}.npz"

    def retry_marker(self, number: int) -> Path:
        """Exists once a trial's configuration was handed out again (engines.recovery)."""
        return self.trials / f".retried-{number:04d}"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def final_record(self) -> Path:
        """The final training's record (final.py): the best configuration on all training images."""
        return self.root / "final" / "record.json"

    @property
    def final_model(self) -> Path:
        return self.root / "final" / "model.keras"


def write_record(paths: StudyPaths, record: TrialRecord, target: Path | None = None) -> None:
    """Atomically (re)write a trial's record (or the final training's, at ``target``): a
    reader never sees half a file."""
    atomic_write(target or paths.trial_record(record.trial), record.to_json())


def read_records(paths: StudyPaths, unreadable: list[str] | None = None) -> list[TrialRecord]:
    """Every trial record of the study, by trial number. Records are written atomically, so
    one that cannot be read was damaged (a full disk, an editor): it is left out, and its
    file name is added to ``unreadable`` for the caller to report."""
    out = []
    for path in sorted(paths.trials.glob("trial-*.json")):
        try:
            out.append(TrialRecord.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, RecursionError) as e:  # RecursionError: nested too deep
            if unreadable is not None:
                unreadable.append(f"{path}: {type(e).__name__}")
    return sorted(out, key=lambda r: r.trial)


def read_record(path: Path) -> TrialRecord | None:
    """One record file, or None when it is missing or unreadable."""
    try:
        return TrialRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, RecursionError):
        return None


def started(number: int, engine: str, values: dict, config: dict, note: str = "", attempt: int = 1,
            seed: int | None = None) -> TrialRecord:
    now = time.time()
    return TrialRecord(trial=number, engine=engine, values=dict(values), config=dict(config), note=note,
                       attempt=attempt, seed=seed, host=socket.gethostname(), pid=os.getpid(), started_at=now,
                       heartbeat_at=now)


def config_key(values: dict) -> str:
    """A configuration's identity (its searched values), for comparing records."""
    return json.dumps(values, sort_keys=True, default=str)


def checkpoint_key(config: dict, seed: int | None, data_fingerprint: str | None, version: str | None) -> str:
    """What a training is, as a short name: its whole configuration (fidelity included), seed,
    data and trainer version. Two trainings with one key compute the same thing."""
    import hashlib

    text = json.dumps([config, seed, data_fingerprint, version], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fidelity(record: TrialRecord) -> tuple[float, float]:
    """A record's fidelity: its rung (a trial without rungs trained at the space's own, full
    fidelity, above every rung), then the images it trained on (unknown: all of them).
    Scores are compared only between records of one fidelity."""
    rung = float("inf") if record.rung is None else float(record.rung)
    return rung, float("inf") if not record.train_images else float(record.train_images)


def top_fidelity(records: list[TrialRecord]) -> list[TrialRecord]:
    """The completed records at the largest fidelity any completed record has: the ones a
    best trial is chosen from."""
    done = [r for r in records if r.state == State.COMPLETE and r.val_accuracy is not None]
    top = max(map(fidelity, done), default=None)
    return [r for r in done if fidelity(r) == top]


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The completed search trial with the best validation accuracy (lowest number on ties),
    among those at the largest data fidelity."""
    done = top_fidelity(records)  # a 5,000-image score is never compared with a 45,000-image one
    return max(done, key=lambda r: (r.val_accuracy, -r.trial), default=None)


def finished_count(records: list[TrialRecord]) -> int:
    return sum(r.state in FINISHED for r in records)
