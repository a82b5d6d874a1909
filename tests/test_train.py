"""The trainer's batch augmentation and one real (tiny) training run."""
from __future__ import annotations

import numpy as np
import pytest

from cnnbench.training.data import DataBundle
from cnnbench.knobs import default_config
from cnnbench.training.pipeline import augment_batch, train_dataset
from cnnbench.training.train import PruneTrial, train_and_evaluate


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


def test_the_input_pipeline_is_fixed_and_covers_every_image_once_per_epoch():
    # tf.data's autotuner stalled epochs' starts for ~10 s on 2 cores: it stays off
    x, y = images(), np.arange(len(images()))
    ds = train_dataset(x, y, {**default_config(), "batch_size": 5, "epochs": 2}, len(x), seed=0)
    assert ds.options().autotune.enabled is False
    seen = np.concatenate([labels.numpy().argmax(axis=1) for _, labels in ds])
    first, second = seen[:len(x)], seen[len(x):]  # the epochs one after the other, 13 batches each
    assert sorted(first.tolist()) == sorted(second.tolist()) == y.tolist()  # every image once per epoch
    assert not np.array_equal(first, second)  # each epoch in its own order


def test_the_pipeline_keeps_one_copy_of_the_images_however_many_epochs_it_holds():
    """Its serialized graph (what tf.data holds and hands to each iterator) stays the size of
    one copy of the training images: it used to hold one copy per epoch (12 GB at 67 epochs
    of 50,000 images). And the batches are the ones shuffling the images themselves gives."""
    import tensorflow as tf

    x, y = images(n=512, size=32), np.arange(512)
    config = {**default_config(), "batch_size": 64, "flip": "off", "translate": 0}
    size = {epochs: len(train_dataset(x, y, {**config, "epochs": epochs}, 512, seed=0)._as_serialized_graph()
                        .numpy()) for epochs in (2, 20)}
    assert size[20] < size[2] + x.nbytes / 2, size  # not 18 copies more
    ours = [labels.numpy().argmax(axis=1) for _, labels in train_dataset(x, y, {**config, "epochs": 2}, 512, seed=3)]
    from cnnbench.training.pipeline import EPOCH_SEED_STRIDE

    slices = tf.data.Dataset.from_tensor_slices((x, y))
    theirs = [b[1].numpy() for epoch in (0, 1) for b in slices.shuffle(
        512, seed=3 * EPOCH_SEED_STRIDE + epoch, reshuffle_each_iteration=False).batch(64)]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)) and len(ours) == len(theirs) == 16


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
    assert result.parameter_count == result.model.count_params() and result.images_per_s > 0


def test_a_run_validating_its_last_epoch_only_is_scored_there_and_keeps_those_weights():
    config = {**default_config(), "stages": 2, "base_filters": 8, "epochs": 3, "batch_size": 20,
              "learning_rate": 1e-2, "validate": "last_epoch"}
    seen = []
    result = train_and_evaluate(config, _tiny_data(), lambda e, logs: seen.append(dict(logs)), seed=0)
    assert ["val_accuracy" in logs for logs in seen] == [False, False, True]
    assert result.val_accuracy == seen[-1]["val_accuracy"] and result.best_epoch == 3
    assert [("val_accuracy" in h) for h in result.history] == [False, False, True]
    assert result.model is not None  # the last epoch's weights were kept and exported


def test_prune_stops_training_and_reports_how_far_it_got():
    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 5, "batch_size": 30}

    def stop_after_two(epoch, logs):
        if epoch == 2:
            raise PruneTrial("enough")
    with pytest.raises(PruneTrial) as pruned:
        train_and_evaluate(config, _tiny_data(), stop_after_two, seed=0)
    assert pruned.value.result.epochs_run == 2 and pruned.value.result.model is None


def test_a_stretchable_training_follows_the_epochs_on_epoch_returns_schedule_and_averaging_too(monkeypatch):
    """The final training re-sizes itself once it has timed its epochs (final.py): the
    learning rate the optimizer applies follows the new length (not only the variable that
    holds it), as does the weight averaging's, and fit ends at the new last epoch, whether
    longer or shorter; without ``stretch_to`` nothing changes."""
    import cnnbench.training.train as train
    from cnnbench.training.optim import keras_rates, lr_multiplier

    optimizers, averaging = [], []
    make_optimizer, lookahead_callback = train.make_optimizer, train.lookahead_callback
    monkeypatch.setattr(train, "make_optimizer", lambda *a: optimizers.append(make_optimizer(*a)) or optimizers[-1])
    monkeypatch.setattr(train, "lookahead_callback", lambda steps: averaging.append(lookahead_callback(steps))
                        or averaging[-1])
    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 3, "batch_size": 30, "lookahead": True,
              "lr_schedule": "linear", "warmup": 0.2}
    steps = train.steps_per_epoch(len(_tiny_data().x_train), config)
    seen, applied = [], []

    def five_at_two(epoch, logs):
        seen.append(epoch)
        applied.append(float(optimizers[-1].learning_rate))  # the rate its next step would take
        return 5 if epoch == 2 else None

    def rate_at(step, total):
        return keras_rates(config)[0] * float(lr_multiplier(step, total, "linear", 0.2, config["lr_start"]))

    grown = train_and_evaluate(config, _tiny_data(), five_at_two, seed=0, stretch_to=6)
    assert seen == [1, 2, 3, 4, 5] and grown.epochs_run == 5 and averaging[-1].total_steps == steps * 5
    assert applied[3] == pytest.approx(rate_at(4 * steps, 5 * steps), rel=1e-4)  # after epoch 4 of 5
    assert rate_at(4 * steps, 5 * steps) > 2 * rate_at(4 * steps, 3 * steps)  # which the 3-epoch schedule is not
    shrunk = train_and_evaluate(config, _tiny_data(), lambda epoch, logs: 2 if epoch == 1 else None, seed=0,
                                stretch_to=6)
    assert shrunk.epochs_run == 2 and float(optimizers[-1].learning_rate) == pytest.approx(
        rate_at(2 * steps, 2 * steps), abs=1e-7)  # the end of the 2-epoch schedule
    kept = train_and_evaluate(config, _tiny_data(), lambda epoch, logs: 5, seed=0)
    assert kept.epochs_run == 3 and averaging[-1].total_steps == steps * 3


def test_warmup_then_linear_schedule_is_one_cycle_ending_at_zero():
    from cnnbench.training.optim import WARMUP_START, lr_multiplier

    share = [float(lr_multiplier(step, 100, "linear", 0.2)) for step in (0, 10, 20, 60, 100)]
    assert share[0] == pytest.approx(WARMUP_START) and share[1] == pytest.approx((WARMUP_START + 1) / 2)
    assert share[2] == pytest.approx(1.0) and share[3] == pytest.approx(0.5) and share[4] == pytest.approx(0.0)
    assert float(lr_multiplier(100, 100, "cosine", 0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(lr_multiplier(70, 100, "step", 0.0)) == pytest.approx(0.1)
    assert float(lr_multiplier(50, 100, "constant", 0.0)) == 1.0


def test_bias_lr_scale_moves_batch_norm_shifts_that_much_faster():
    import keras

    from cnnbench.model import build_model
    from cnnbench.training.optim import make_optimizer

    data = _tiny_data()
    y = np.eye(3, dtype=np.float32)[data.y_train[:20]]
    moved = {}
    for scale in (1.0, 8.0):
        config = {**default_config(), "stages": 1, "base_filters": 4, "optimizer": "sgd", "momentum": 0.0,
                  "learning_rate": 0.01, "weight_decay": 0.0, "bias_lr_scale": scale}
        keras.utils.set_random_seed(0)
        model = build_model(config, num_classes=3, image_size=16)
        model.compile(make_optimizer(config, 1, model), "categorical_crossentropy")
        beta, kernel = model.get_layer("stage1_conv1_bn").beta, model.get_layer("stage1_conv1").kernel
        before = beta.numpy().copy(), kernel.numpy().copy()
        model.train_on_batch(data.x_train[:20], y)
        moved[scale] = beta.numpy() - before[0], kernel.numpy() - before[1]
    np.testing.assert_allclose(moved[8.0][0], 8.0 * moved[1.0][0], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(moved[8.0][1], moved[1.0][1], rtol=1e-3, atol=1e-7)  # the rest as before


def test_tta_and_ema_model_is_exported_float32_mirror_averaged_and_loads_in_safe_mode(tmp_path):
    import subprocess
    import sys

    from cnnbench.training.train import save_model

    config = {**default_config(), "stages": 2, "base_filters": 8, "epochs": 1, "batch_size": 20,
              "learning_rate": 1e-2, "tta": True, "ema": 0.9, "stem": "whiten", "precision": "mixed_bfloat16"}
    result = train_and_evaluate(config, _tiny_data(), seed=0)
    assert result.precision == "mixed_bfloat16" and result.model.name == "cnnbench_tta"
    images = _tiny_data().x_val[:4]
    probs = result.model.predict(images, verbose=0)
    mirrored = result.model.predict(images[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(probs, mirrored, atol=1e-5)  # the average of an image and its mirror
    path = tmp_path / "model.keras"
    save_model(result.model, path)
    np.save(tmp_path / "x.npy", images)
    code = ("import sys, numpy as np, keras\n"
            "m = keras.models.load_model(sys.argv[1], safe_mode=True)\n"
            "dtypes = {l.compute_dtype for l in m.layers[1].layers if hasattr(l, 'compute_dtype')}\n"
            "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]), verbose=0)); print(sorted(dtypes))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "p.npy"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bfloat16" not in proc.stdout  # exported in float32 whatever it trained in
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), probs, atol=1e-5)


def test_deterministic_training_gives_the_same_figures_bit_for_bit():
    from cnnbench.knobs import default_config
    from cnnbench.training.train import train_and_evaluate

    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 2, "batch_size": 16,
              "precision": "float32", "flip": "random", "translate": 2, "deterministic": True}
    runs = [train_and_evaluate(config, _tiny_data(), seed=3) for _ in range(2)]
    figures = [[(h["loss"], h["val_accuracy"], h["val_loss"]) for h in r.history] for r in runs]
    assert figures[0] == figures[1]
    weights = [r.model.get_weights() for r in runs]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
