"""CIFAR-10 (or any image folder) as uint8 arrays: sources, splits, and a decode cache.

Sources, in the order they are looked for:
  1. the ``CNNBENCH_CIFAR10`` environment variable, else ``data.path`` in the space file,
     naming an image folder (``train/<class>/*``, ``test/<class>/*``), the official
     ``cifar-10-batches-py`` folder, or ``cifar-10-python.tar.gz``;
  2. ``keras.datasets.cifar10`` (downloads once into ~/.keras, then cached there).

The search only ever sees ``train`` and ``val`` (a stratified, seeded split of the training
images); ``test`` is touched once, to evaluate the exported model.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnbench.training.sources import (CIFAR10_CLASSES, DataError, _load_arrays, _load_image_folder,  # noqa: F401 (re-exported)
                                   cache_dir, stratified_pick)

if TYPE_CHECKING:  # the validated section: read by attribute, never imported here at run time
    from cnnbench.space.params import Data


@dataclass(frozen=True)
class DataSpec:
    """A space's ``data`` section as plain data: what a trial's child process is handed, so
    it loads the same images without importing the validation schema (pydantic) at all.
    ``load_data`` reads the same attributes from this or from the validated ``space.Data``."""
    dataset: str = "cifar10"
    path: str | None = None
    validation_fraction: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    image_size: int = 32

    @classmethod
    def of(cls, data) -> "DataSpec":
        """The plain copy of a validated ``space.Data``."""
        return cls(data.dataset, data.path, data.validation_fraction, data.train_subset, data.test_subset,
                   data.image_size)


@dataclass
class DataBundle:
    x_train: np.ndarray   # uint8, (n, size, size, 3)
    y_train: np.ndarray   # int64 class indices
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str           # where the images came from
    fingerprint: str      # sha256 prefix over the train+test arrays actually used
    skipped: list[str] = field(default_factory=list)  # "file: reason" of unreadable images left out

    def split_fingerprint(self) -> str:
        """The data and its split into training and validation: a score is only reusable
        (engines/cache.py) on the very images it was trained and validated on."""
        digest = hashlib.sha256(f"{self.fingerprint}/{len(self.y_train)}/{len(self.y_test)}".encode())
        digest.update(self.x_val.tobytes())
        digest.update(self.y_val.tobytes())
        return f"{self.fingerprint}/{digest.hexdigest()[:12]}"

    def train_sample(self, n: int = 5000) -> np.ndarray:
        """``n`` training images drawn evenly over the whole split (seeded), for statistics:
        image folders list their files class by class, so the first ``n`` would be one or
        two classes (before this, normalisation and the whitening stem saw only airplanes)."""
        if len(self.x_train) <= n:
            return self.x_train
        return self.x_train[np.sort(np.random.default_rng(0).choice(len(self.x_train), n, replace=False))]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and variance of training images scaled to [0, 1]."""
        sample = self.train_sample().astype(np.float32) / 255.0
        return sample.mean(axis=(0, 1, 2)).tolist(), sample.var(axis=(0, 1, 2)).tolist()

    def training_subset(self, n: int) -> "DataBundle":
        """The same data with ``n`` training images (stratified; 0 or too many: all of them).
        Seeded by ``n`` alone, so every trial at one fidelity trains on the same images."""
        if not n or n >= len(self.y_train):
            return self
        keep = stratified_pick(self.y_train, n, np.random.default_rng(n))
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])

    def all_training(self) -> "DataBundle":
        """The same data with the validation images moved into training (the final training):
        nothing is held out but the test split."""
        return replace(self, x_train=np.concatenate([self.x_train, self.x_val]),
                       y_train=np.concatenate([self.y_train, self.y_val]), x_val=self.x_val[:0],
                       y_val=self.y_val[:0])


def synthetic_bundle(n_train: int, n_val: int = 256, image_size: int = 32, seed: int = 0) -> DataBundle:
    """Random uint8 images and labels shaped like CIFAR-10: for timing, never for accuracy."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_val, image_size, image_size, 3), dtype=np.uint8)
    y = rng.integers(0, len(CIFAR10_CLASSES), n_train + n_val).astype(np.int64)
    return DataBundle(x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:],
                      CIFAR10_CLASSES, "synthetic", "-")


def resolve_source(opts: DataSpec | Data, space_dir: Path | None = None) -> str | None:
    """The local copy to read, or None for the Keras download."""
    path = os.environ.get("CNNBENCH_CIFAR10") or opts.path
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and opts.path and not os.environ.get("CNNBENCH_CIFAR10") and space_dir:
        p = space_dir / p
    return str(p)


def class_count(opts: DataSpec | Data, space_dir: Path | None = None) -> int:
    """How many classes the space's data has, without reading an image: an image folder's
    class folders (unreadable: the error comes when the sweep loads it), else CIFAR-10's 10."""
    source = resolve_source(opts, space_dir)
    train = Path(source) / "train" if source else None
    if train is not None and train.is_dir():
        try:
            return sum(p.is_dir() for p in train.iterdir()) or len(CIFAR10_CLASSES)
        except OSError:
            pass
    return len(CIFAR10_CLASSES)


def load_data(opts: DataSpec | Data, seed: int, space_dir: Path | None = None) -> DataBundle:
    """Train/val/test arrays for a space's ``data`` section, subsets and split applied."""
    source = resolve_source(opts, space_dir)
    rng = np.random.default_rng(seed)
    skipped: list[str] = []
    if source and Path(source).is_dir() and (Path(source) / "train").is_dir():
        x_tr, y_tr, x_te, y_te, names, skipped = _load_image_folder(Path(source), opts, seed)
    else:
        x_tr, y_tr, x_te, y_te, names = _load_arrays(source)
        if opts.train_subset:
            keep = stratified_pick(y_tr, opts.train_subset, rng)
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        if opts.test_subset:
            keep = stratified_pick(y_te, opts.test_subset, np.random.default_rng(seed + 1))
            x_te, y_te = x_te[keep], y_te[keep]
    val = stratified_pick(y_tr, max(len(names), round(len(y_tr) * opts.validation_fraction)), rng)
    is_val = np.zeros(len(y_tr), bool)
    is_val[val] = True
    digest = hashlib.sha256()
    for arr in (x_tr, y_tr, x_te, y_te):
        digest.update(np.ascontiguousarray(arr).data)
    return DataBundle(x_tr[~is_val], y_tr[~is_val], x_tr[is_val], y_tr[is_val], x_te, y_te,
                      tuple(names), source or "keras.datasets.cifar10", digest.hexdigest()[:16], skipped)
