"""Where CIFAR-10 comes from: an image folder (decoded once into a cache), the official
pickled batches (a folder or the tarball, read without running any pickled code), or the
Keras download; and the stratified, seeded draws every subset and split uses. ``data``
turns what these return into a ``DataBundle``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnbench.training.images import SUFFIXES as IMAGE_SUFFIXES
from cnnbench.training.images import ImageError, read_image
from cnnbench.files import temporary_name

if TYPE_CHECKING:
    from cnnbench.space.params import Data
    from cnnbench.training.data import DataSpec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# Published SHA-256 of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
CIFAR10_TAR_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


class DataError(ValueError):
    """The data source is missing, malformed or fails its checksum."""


def cache_dir() -> Path:
    root = os.environ.get("CNNBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cnnbench")
    return Path(root)


def stratified_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn so each class keeps its share (seeded)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * n / len(labels)).astype(int)
    # Hand the rounding remainder to the largest classes so the total is exactly n.
    for i in np.argsort(-counts)[: n - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


# ---- image folders ------------------------------------------------------------------------

def _list_split(root: Path, split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Image paths (sorted by name within each class) and their labels. Strings, not Paths:
    listing 60,000 files is the hot part of a cached load. An empty class is an error."""
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, split, name)
        found = sorted(e.name for e in os.scandir(folder)
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: no images (class {name!r} needs at least one in {split}/; "
                            f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
        files += [os.path.join(folder, f) for f in found]
        labels += [label] * len(found)
    return files, np.array(labels, np.int64)


def _class_folders(root: Path, split: str) -> list[str]:
    try:
        return sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    except PermissionError:
        raise DataError(f"{root / split}: not readable (permission denied)") from None


def _load_image_folder(root: Path, opts: DataSpec | Data, seed: int):
    if not (root / "test").is_dir():
        raise DataError(f"{root}: no test/ folder beside train/")
    classes = _class_folders(root, "train")
    if len(classes) < 2:
        raise DataError(f"{root}/train: needs one subfolder per class, found {len(classes)}")
    missing = [c for c in classes if not (root / "test" / c).is_dir()]
    if missing:
        raise DataError(f"{root}/test: no folder for class(es) {', '.join(missing)}")
    extra = [c for c in _class_folders(root, "test") if c not in classes]
    if extra:
        raise DataError(f"{root}/train: no folder for class(es) {', '.join(extra)}, which test/ has")
    root = root.resolve()  # once, so the cache key names files the same from any working directory
    splits, skipped = {}, []
    for split, n, split_seed in (("train", opts.train_subset, seed), ("test", opts.test_subset, seed + 1)):
        files, labels = _list_split(root, split, classes)
        if n:
            keep = stratified_pick(labels, n, np.random.default_rng(split_seed))
            files, labels = [files[i] for i in keep], labels[keep]
        images, readable, broken = _decode_cached(files, opts.image_size)
        splits[split] = (images, labels[readable])
        skipped += broken
        empty = sorted(set(range(len(classes))) - set(labels[readable].tolist()))
        if empty:
            raise DataError(f"{root}/{split}: no readable image for class(es) {', '.join(classes[i] for i in empty)}")
    return (*splits["train"], *splits["test"], classes, skipped)


def _decode_cached(files: list[str], size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode images to (n, size, size, 3) uint8, reusing a cache keyed on the file list
    (path, size and modification time of every file, so an edited image is decoded again).
    Unreadable files are skipped: returns the images, the indices of the files they came
    from, and "file: reason" for each skipped one."""
    key = hashlib.sha256(f"v2 {size}".encode())
    for f in files:
        st = os.stat(f)
        key.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = cache_dir() / f"images-{key.hexdigest()[:24]}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return stored["images"], stored["readable"], [str(b) for b in stored["broken"]]

    def decode(path):
        try:
            return read_image(path, size), ""
        except ImageError as e:
            return None, str(e)

    from cnnbench.training.runtime import usable_cores

    # Pillow releases the GIL while decoding; a worker pinned to one core decodes on that one
    with ThreadPoolExecutor(usable_cores()) as pool:
        decoded = list(pool.map(decode, files, chunksize=256))
    readable = np.array([i for i, (img, _) in enumerate(decoded) if img is not None], np.int64)
    broken = [why for _, why in decoded if why]
    images = (np.stack([decoded[i][0] for i in readable]) if len(readable)
              else np.zeros((0, size, size, 3), np.uint8))
    tmp = temporary_name(cache, keep_suffix=True)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, readable=readable, broken=np.array(broken, dtype=str))
        os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    except OSError as e:
        with contextlib.suppress(OSError):  # a full disk: no half-written temporary left in the cache
            tmp.unlink(missing_ok=True)
        raise DataError(f"{cache.parent}: the decode cache is not writable ({e.strerror or e}); "
                        "set CNNBENCH_CACHE to a writable folder") from None
    return images, readable, broken


# ---- the official python format and the Keras download ------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's pickles hold: numpy arrays, lists, dicts, bytes, numbers."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: not part of the CIFAR-10 format")
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except Exception as e:
        raise DataError(f"{where}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], np.uint8)
        labels = np.asarray(batch["labels"], np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows hold R, G, B planes
    except (KeyError, ValueError) as e:
        raise DataError(f"{where}: malformed CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _from_batches(read, where: str):
    """Assemble train/test from a reader of the official file names."""
    train = [_batch_arrays(_unpickle(read(f"data_batch_{i}"), f"{where}/data_batch_{i}"),
                           f"{where}/data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = _batch_arrays(_unpickle(read("test_batch"), f"{where}/test_batch"), f"{where}/test_batch")
    names = list(CIFAR10_CLASSES)
    try:
        blob = read("batches.meta")
    except DataError:
        return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_te, y_te, names)
    meta = _unpickle(blob, f"{where}/batches.meta")  # a refused or broken pickle is an error, not ignored
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    except (KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}/batches.meta: no usable label_names ({type(e).__name__})") from None
    if len(names) != len(CIFAR10_CLASSES) or len(set(names)) != len(names):
        raise DataError(f"{where}/batches.meta: {len(names)} label names, expected 10 distinct ones")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_te, y_te, names)


def _load_arrays(source: str | None):
    if source is None:
        from cnnbench.training import runtime

        runtime.import_tensorflow_quietly()  # the download path: Keras brings TensorFlow in
        import keras

        try:
            (x_tr, y_tr), (x_te, y_te) = keras.datasets.cifar10.load_data()
        except Exception as e:  # no network, a proxy, a half-written download
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError("no local CIFAR-10 copy (set CNNBENCH_CIFAR10 or data.path to an image folder, "
                            "cifar-10-batches-py or cifar-10-python.tar.gz) and keras.datasets.cifar10 "
                            f"could not download it: {reason}") from None
        return x_tr, y_tr.ravel().astype(np.int64), x_te, y_te.ravel().astype(np.int64), list(CIFAR10_CLASSES)
    path = Path(source)
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        if not (folder / "data_batch_1").exists():
            raise DataError(f"{path}: neither an image folder (train/, test/) nor cifar-10-batches-py "
                            "(data_batch_1..5, test_batch)")

        def read(name):
            try:
                return (folder / name).read_bytes()
            except FileNotFoundError:
                raise DataError(f"{folder}: missing {name}") from None
            except OSError as e:
                raise DataError(f"{folder / name}: not readable ({e.strerror or e})") from None
        return _from_batches(read, str(folder))
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return _load_tarball(path)
    raise DataError(f"{path}: not found (expected an image folder, cifar-10-batches-py or "
                    "cifar-10-python.tar.gz)")


def _load_tarball(path: Path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != CIFAR10_TAR_SHA256:
        raise DataError(f"{path}: SHA-256 {digest.hexdigest()} is not the published "
                        f"{CIFAR10_TAR_SHA256} of cifar-10-python.tar.gz")
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

        def read(name):
            if name not in members:
                raise DataError(f"{path}: missing cifar-10-batches-py/{name}")
            member = tar.extractfile(members[name])
            if member is None:  # a folder or a link where the batch file should be
                raise DataError(f"{path}: cifar-10-batches-py/{name} is not a file")
            return member.read()
        return _from_batches(read, str(path))
