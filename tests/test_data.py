"""Each data source: the official python format (folder and tarball, written here), the image
folder (a seeded subset of the offline copy), splits and the decode cache."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time

import numpy as np
import pytest

from cnnbench.training import data as data_mod
from cnnbench.training import sources as data_sources
from cnnbench.training.data import DataError, load_data, stratified_pick
from cnnbench.space import Data


def _batch(n, offset):
    rng = np.random.default_rng(offset)
    return {b"batch_label": b"tiny", b"labels": [int(i % 10) for i in range(offset, offset + n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


@pytest.fixture
def official_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(20, i * 100), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_batch(20, 999), protocol=5))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [n.encode() for n in data_mod.CIFAR10_CLASSES], b"num_vis": 3072}))
    return folder


def test_official_folder_layout_and_pixels(official_folder):
    bundle = load_data(Data(path=str(official_folder), validation_fraction=0.2), seed=0)
    assert len(bundle.y_train) + len(bundle.y_val) == 100 and len(bundle.y_test) == 20
    assert bundle.x_train.shape[1:] == (32, 32, 3) and bundle.x_train.dtype == np.uint8
    assert bundle.class_names == data_mod.CIFAR10_CLASSES
    # Row layout is 1024 red, then green, then blue values: pixel (0, 0) is data[0], [1024], [2048].
    raw = _batch(20, 999)[b"data"][0]
    assert tuple(bundle.x_test[0, 0, 0]) == (raw[0], raw[1024], raw[2048])
    # the parent folder works too
    assert load_data(Data(path=str(official_folder.parent)), seed=0).fingerprint == \
        load_data(Data(path=str(official_folder)), seed=0).fingerprint


def test_tarball_checked_against_sha256(official_folder, tmp_path, monkeypatch):
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(official_folder, arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match="is not the published"):
        load_data(Data(path=str(tar_path)), seed=0)
    monkeypatch.setattr(data_sources, "CIFAR10_TAR_SHA256", hashlib.sha256(tar_path.read_bytes()).hexdigest())
    bundle = load_data(Data(path=str(tar_path)), seed=0)
    assert bundle.fingerprint == load_data(Data(path=str(official_folder)), seed=0).fingerprint


def test_restricted_unpickler_refuses_code(official_folder):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    (official_folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3: refusing to unpickle (posix|os)\.system"):
        load_data(Data(path=str(official_folder)), seed=0)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(Data(path=str(tmp_path / "nope")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither an image folder"):
        load_data(Data(path=str(tmp_path / "empty")), seed=0)


def test_env_variable_overrides_space_path(official_folder, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CIFAR10", str(official_folder))
    bundle = load_data(Data(path="/does/not/exist"), seed=0)
    assert bundle.source == str(official_folder)


def test_image_folder_subset_split_and_cache(jpeg_root):
    opts = Data(path=str(jpeg_root), train_subset=300, test_subset=100, validation_fraction=0.2)
    started = time.perf_counter()
    bundle = load_data(opts, seed=3)
    first = time.perf_counter() - started
    assert bundle.class_names[:3] == ("airplane", "automobile", "bird") and len(bundle.class_names) == 10
    assert len(bundle.y_train) == 240 and len(bundle.y_val) == 60 and len(bundle.y_test) == 100
    assert np.bincount(bundle.y_val, minlength=10).tolist() == [6] * 10       # stratified
    assert np.bincount(bundle.y_test, minlength=10).tolist() == [10] * 10
    # train and validation never share an image
    seen = {img.tobytes() for img in bundle.x_train}
    assert not any(img.tobytes() in seen for img in bundle.x_val)
    again = load_data(opts, seed=3)
    assert again.fingerprint == bundle.fingerprint
    np.testing.assert_array_equal(again.x_val, bundle.x_val)
    assert load_data(opts, seed=4).fingerprint != bundle.fingerprint          # the seed picks the subset
    assert list(data_mod.cache_dir().glob("images-*.npz"))
    assert first >= 0


def test_image_folder_pixels_match_pillow(jpeg_root):
    from PIL import Image

    bundle = load_data(Data(path=str(jpeg_root), train_subset=100, test_subset=10, validation_fraction=0.1), 0)
    first_test = sorted((jpeg_root / "test" / "airplane").iterdir())
    decoded = {np.asarray(Image.open(p).convert("RGB")).tobytes() for p in first_test}
    assert bundle.x_test[0].tobytes() in decoded


def test_own_categories_any_size(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name in ("cats", "dogs", "owls"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                mode = ("L", "RGBA", "RGB")[i % 3]
                arr = rng.integers(0, 256, (40 + i, 50, 4 if mode == "RGBA" else 3), dtype=np.uint8)
                img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
                img.save(tmp_path / split / name / f"{i}.png")
    bundle = load_data(Data(path=str(tmp_path), validation_fraction=0.25, image_size=24), seed=0)
    assert bundle.class_names == ("cats", "dogs", "owls")
    assert bundle.x_train.shape[1:] == (24, 24, 3) and len(bundle.y_test) == 12


@pytest.mark.parametrize("n", [1, 7, 10, 55, 100])
def test_stratified_pick_exact_count_and_shares(n):
    labels = np.repeat(np.arange(10), 10)
    picked = stratified_pick(labels, n, np.random.default_rng(0))
    assert len(picked) == n and len(set(picked)) == n
    counts = np.bincount(labels[picked], minlength=10)
    assert counts.max() - counts.min() <= 1
