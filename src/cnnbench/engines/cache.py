"""No training paid for twice: a trial whose training was already done is served from its record.

Before a trial trains, the results folder is searched for a completed trial of any study
with the same full configuration (fidelity included: ``train_images``, ``epochs``...), the
same seed, the same data (fingerprint) and the same trainer version. When one is found its
record is copied (marked ``cached_from: <study>/<trial>``) with its model file, and the trial
counts toward the budget at no training cost. ``--no-cache`` turns it off.

The trainer version is a hash of the source of every module that decides what a training
computes (the trainer, the network, the optimizer, the knobs and their defaults, the data
pipeline) and of the TensorFlow and Keras versions, so any change to that code or those
libraries serves nothing stale. A trial's seed is the space's seed plus its number, so hits
come from studies that run the same configuration at the same place in their sequence:
above all the start_with recipe, trial 0 of every study made from one space.
"""
from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path

from cnnbench import trials
from cnnbench.trials import StudyPaths, TrialRecord, State
from cnnbench.files import atomic_copy

# What a training computes depends on these modules (cnnbench/...) and these packages.
TRAINING_MODULES = ("training/train.py", "model/__init__.py", "training/optim.py", "knobs.py", "model/fused.py",
                    "training/data.py", "training/sources.py", "training/images.py", "training/checkpoint.py")
TRAINING_PACKAGES = ("tensorflow", "keras")


def trainer_version(trainer: str | None = None) -> str:
    """A short hash of the code and library versions that train a configuration; with
    ``trainer`` (a ``module:function`` of the user's own), its name and its module's source
    too, so no other trainer's result is ever served for it. Computed once per process."""
    return _trainer_version(trainer or None)


@functools.cache
def _trainer_version(trainer: str | None) -> str:
    import importlib.util
    from importlib import metadata

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in TRAINING_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    if trainer:
        digest.update(b"trainer\0" + trainer.encode())
        spec = importlib.util.find_spec(trainer.partition(":")[0])
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            digest.update(Path(spec.origin).read_bytes())
    for package in TRAINING_PACKAGES:
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} missing".encode())
    return digest.hexdigest()[:12]


def find(results: Path, config: dict, seed: int, data_fingerprint: str | None, version: str,
         exclude: Path | None = None) -> tuple[str, TrialRecord] | None:
    """A completed trial under ``results`` that trained exactly this, with its model file:
    (``study/trial``, its record), or None. ``exclude``: a study folder not to serve from."""
    if not data_fingerprint:
        return None
    for path in sorted(results.glob("*/trials/trial-*.json")):
        study_root = path.parent.parent
        if exclude is not None and study_root == exclude:
            continue
        record = trials.read_record(path)
        if (record is None or record.state != State.COMPLETE or record.cached_from or record.seed != seed
                or record.config != config or record.data_fingerprint != data_fingerprint
                or record.trainer_version != version):
            continue
        if StudyPaths(study_root).trial_model(record.trial).exists():
            return f"{study_root.name}/{record.trial}", record
    return None


def serve(paths: StudyPaths, number: int, engine: str, values: dict, found: tuple[str, TrialRecord]) -> TrialRecord:
    """Trial ``number`` of this study, copied from a finished one: its record and model."""
    source, earlier = found
    study, trial = source.rsplit("/", 1)
    model = StudyPaths(paths.root.parent / study).trial_model(int(trial))
    now = time.time()
    record = TrialRecord(**{**earlier.__dict__, "trial": number, "engine": engine, "values": dict(values),
                            "cached_from": source, "started_at": now, "heartbeat_at": now, "finished_at": now,
                            "note": "; ".join(filter(None, (earlier.note, f"served from {source}")))})
    paths.trials.mkdir(parents=True, exist_ok=True)
    atomic_copy(model, paths.trial_model(number))
    trials.write_record(paths, record)
    return record
