"""The trainer's batch augmentation and one real (tiny) training run."""
from __future__ import annotations

import numpy as np
import pytest

from cnnbench.data import DataBundle
from cnnbench.knobs import default_config
from cnnbench.train import PruneTrial, augment_batch, train_and_evaluate


def images(n=64, size=16):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = images()
    out = augment_batch(x, flip=True, pad=0).numpy()
    assert out.shape == x.shape and out.dtype == np.uint8
    same = [np.array_equal(o, i) for o, i in zip(out, x)]
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0 < sum(mirrored) < len(x)


def test_translate_shifts_each_image_by_at_most_pad_pixels():
    x, pad = images(), 2
    out = augment_batch(x, flip=False, pad=pad).numpy()
    shifts = set()
    for o, i in zip(out, x):
        inner = o[pad:-pad, pad:-pad]
        found = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                 if np.array_equal(inner, i[pad + dy:16 - pad + dy, pad + dx:16 - pad + dx])]
        assert found, "an output is not a shifted copy of its input"
        shifts.add(found[0])
    assert len(shifts) > 5  # shifts differ from image to image


def _tiny_data():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    x = rng.integers(0, 60, (120, 16, 16, 3), dtype=np.uint8)
    x[..., 0] += (y * 90).astype(np.uint8)[:, None, None]  # the class is the red level: learnable
    return DataBundle(x[::2], y[::2], x[1::2], y[1::2], x[1::2], y[1::2], ("a", "b", "c"), "synthetic", "-")


def test_training_learns_a_separable_task_and_keeps_the_best_epoch():
    config = {**default_config(), "stages": 2, "base_filters": 8, "epochs": 4, "batch_size": 20,
              "learning_rate": 1e-2, "flip": True, "translate": 1}
    seen = []
    result = train_and_evaluate(config, _tiny_data(), lambda e, logs: seen.append(e), seed=0)
    assert seen == [1, 2, 3, 4] and result.epochs_run == 4
    assert result.val_accuracy == max(h["val_accuracy"] for h in result.history)
    assert result.val_accuracy > 0.6  # chance is 1/3
    assert result.params == result.model.count_params() and result.images_per_s > 0


def test_prune_stops_training_and_reports_how_far_it_got():
    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 5, "batch_size": 30}

    def stop_after_two(epoch, logs):
        if epoch == 2:
            raise PruneTrial("enough")
    with pytest.raises(PruneTrial) as pruned:
        train_and_evaluate(config, _tiny_data(), stop_after_two, seed=0)
    assert pruned.value.result.epochs_run == 2 and pruned.value.result.model is None
