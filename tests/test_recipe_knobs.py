"""airbench94's ingredients as knobs: units, schedules, the alternating flip, the six-view
test-time augmentation, the whitening bias freeze and Lookahead averaging."""
from __future__ import annotations

import numpy as np
import pytest

from cnnbench.training.data import synthetic_bundle
from cnnbench.knobs import coerce, default_config
from cnnbench.model import architecture_stats, build_model, with_tta
from cnnbench.training.optim import keras_rates, lookahead_decay
from cnnbench.space import SpaceError, parse_space

TINY = {**default_config(), "base_filters": 4, "stages": 2, "batch_size": 16}


def test_per_1024_units_convert_to_kerass_airbench94s_numbers():
    config = {**default_config(), "optimizer": "sgd", "momentum": 0.85, "hyper_units": "per_1024",
              "learning_rate": 11.5, "weight_decay": 0.0153}
    lr, wd = keras_rates({**config, "batch_size": 256})
    assert lr == pytest.approx(0.375, rel=1e-3) and wd == pytest.approx(0.00887, rel=1e-3)
    lr_1024, wd_1024 = keras_rates({**config, "batch_size": 1024})
    assert lr_1024 == pytest.approx(1.5, rel=1e-3) and wd_1024 == pytest.approx(wd)  # decay per example holds
    assert keras_rates({**config, "hyper_units": "keras"}) == (11.5, 0.0153)


def test_one_cycle_starts_and_ends_where_the_knobs_say():
    from cnnbench.training.optim import lr_multiplier

    at = lambda step: float(lr_multiplier(step, 100, "linear", 0.23, start=0.2, end=0.07))  # noqa: E731
    assert at(0) == pytest.approx(0.2) and at(23) == pytest.approx(1.0)
    assert at(100) == pytest.approx(0.07) and at(50) < at(30)
    assert float(lr_multiplier(100, 100, "linear", 0.23)) == pytest.approx(0.0)  # defaults unchanged


def test_lookahead_decay_rises_as_the_cube_of_progress():
    assert lookahead_decay(0, 500) == 0.0
    assert lookahead_decay(250, 500) == pytest.approx(0.95 ** 5 / 8)
    assert lookahead_decay(500, 500) == pytest.approx(0.95 ** 5)


def test_lookahead_callback_moves_the_average_and_sets_the_weights_to_it():
    import keras

    from cnnbench.training.optim import lookahead_callback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    callback = lookahead_callback(total_steps=10)
    callback.set_model(model)
    callback.on_train_begin()
    start = model.get_weights()[0].copy()
    for step in range(1, 6):
        model.set_weights([start + step])  # a step moves the weights by 1
        callback.on_train_batch_end(step - 1)
    decay = lookahead_decay(5, 10)
    expected = start + (1 - decay) * 5  # the average moved toward start + 5, the weights jumped to it
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-6)


def test_six_view_tta_weights_the_views_as_airbench_and_loads_in_safe_mode(tmp_path):
    import keras

    model = build_model(TINY)
    six = with_tta(model, "mirror_translate")
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    f = lambda v: model.predict(v, verbose=0)  # noqa: E731
    pair = lambda v: (f(v) + f(v[:, :, ::-1])) / 2  # noqa: E731
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    expected = 0.5 * pair(x) + 0.25 * pair(padded[:, :32, :32]) + 0.25 * pair(padded[:, 2:, 2:])
    got = six.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, pair(x), atol=1e-6)  # the shifted views count
    six.save(tmp_path / "six.keras")
    loaded = keras.models.load_model(tmp_path / "six.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), got, atol=1e-7)
    assert six.count_params() == model.count_params() == architecture_stats(TINY).params


def test_alternating_flip_mirrors_every_image_in_every_other_epoch():
    from cnnbench.training.pipeline import train_dataset

    n = 64
    x = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n)  # one class per image: the one-hot label says which image a row is
    config = {**default_config(), "flip": "alternating", "translate": 0, "batch_size": 16, "epochs": 3}

    def seen(epoch: int) -> np.ndarray:  # epoch ``epoch`` as the trainer gets it, resumed there or not
        out = np.zeros_like(x)
        for images, onehot in train_dataset(x, labels, config, n, seed=3, first_epoch=epoch, epochs=epoch + 1):
            out[onehot.numpy().argmax(1)] = images.numpy()
        return out

    first, second = seen(0), seen(1)
    mirrored_first = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(first, x)])
    assert 0 < mirrored_first.sum() < n  # a coin per image ...
    np.testing.assert_array_equal(second, first[:, :, ::-1])  # ... and all of them the other way round
    np.testing.assert_array_equal(seen(2), first)


@pytest.mark.parametrize("drop_last, batches", [(False, [16, 16, 16, 2]), (True, [16, 16, 16])])
def test_drop_last_trains_full_batches_only_and_leaves_out_another_remainder_each_epoch(drop_last, batches):
    from cnnbench.training.pipeline import images_per_epoch, steps_per_epoch, train_dataset

    n = 50
    x = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    config = {**default_config(), "translate": 0, "batch_size": 16, "epochs": 2, "drop_last": drop_last}
    seen = [onehot.numpy().argmax(1) for _, onehot in train_dataset(x, np.arange(n), config, n, seed=0)]
    assert [len(b) for b in seen] == batches * 2
    assert steps_per_epoch(n, config) == len(batches) and images_per_epoch(n, config) == sum(batches)
    first, second = (np.concatenate(seen[i * len(batches):(i + 1) * len(batches)]) for i in range(2))
    if drop_last:  # 48 distinct images each epoch, and a reshuffle leaves out two others
        assert len(set(first)) == len(first) == 48 and set(first) != set(second)
    else:
        assert sorted(first) == list(range(n))
    # a split smaller than one batch still trains (its one partial batch)
    assert steps_per_epoch(10, config) == 1 and images_per_epoch(10, config) == 10


def test_whitening_bias_stops_moving_when_its_gate_closes():
    import tensorflow as tf

    from cnnbench.training.optim import make_optimizer, whiten_bias

    config = {**TINY, "stem": "whiten", "optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.1,
              "whiten_bias_epochs": 1, "weight_decay": 0.01}
    model = build_model(config)
    gate = tf.Variable(0.0, trainable=False)
    optimizer = make_optimizer(config, 10, model, gate)
    bias = whiten_bias(model)[0]
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in model.trainable_variables])
    assert np.array_equal(bias.numpy(), before[bias.path])  # frozen: no step, no decay
    others = [v for v in model.trainable_variables if v.path != bias.path]
    assert all(not np.array_equal(v.numpy(), before[v.path]) for v in others)
    gate.assign(1.0)
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in model.trainable_variables])
    assert not np.array_equal(bias.numpy(), before[bias.path])


def test_statistics_sample_every_class_of_a_class_sorted_folder():
    bundle = synthetic_bundle(12_000)
    order = np.argsort(bundle.y_train, kind="stable")  # as an image folder lists them
    bundle.x_train, bundle.y_train = bundle.x_train[order], bundle.y_train[order]
    bundle.x_train[bundle.y_train == bundle.y_train[0]] = 0  # the first class is black
    sample = bundle.train_sample(5000)
    assert len(sample) == 5000 and sample.mean() > 100  # mostly not the first class
    mean, _ = bundle.channel_stats()
    assert min(mean) > 0.4


def test_former_boolean_knobs_keep_their_meaning_and_new_values_are_checked():
    assert coerce("flip", True) == "random" and coerce("flip", False) == "off" and coerce("tta", 1) == "mirror"
    assert coerce("flip", "alternating") == "alternating"
    space = parse_space({"params": {"flip": {"type": "fixed", "value": True},
                                    "tta": {"type": "choice", "choices": [False, "mirror_translate"]}}})
    assert space.complete({"tta": False}) | {} == {**space.complete({}), "tta": "off"}
    assert space.complete({})["flip"] == "random"
    with pytest.raises(SpaceError, match=r"params\.tta: 'sideways' is not one of off, mirror, mirror_translate"):
        parse_space({"params": {"tta": {"type": "fixed", "value": "sideways"}}}, "x.yaml")


def test_the_airbench94_space_is_one_configuration_with_every_ingredient():
    from conftest import SPACES
    from cnnbench.space import load_space

    space = load_space(SPACES / "airbench94.yaml")
    config = space.complete({})
    assert space.size() == 1 and space.final
    assert (config["flip"], config["tta"], config["lookahead"], config["whiten_bias_epochs"], config["drop_last"]) == \
        ("alternating", "mirror_translate", True, 3, True)
    assert keras_rates(config)[0] == pytest.approx(1.5, rel=1e-3)
    assert architecture_stats(config).flops == pytest.approx(236e6, rel=0.02)


# Muon's path through the same recipe is in the slow tier (make test-slow, CI): two real
# trainings of this recipe were a tenth of make test.
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("muon", marks=pytest.mark.slow)])
def test_the_airbench_recipe_trains_end_to_end_and_exports_six_views_in_float32(tmp_path, optimizer):
    """Every new knob at once on tiny data: it trains, validates with the six views, and the
    exported model keeps the paper count of parameters and loads in safe mode."""
    import keras

    from cnnbench.training.train import save_model, train_and_evaluate

    config = {**default_config(), "stem": "whiten", "whiten_bias_epochs": 1, "stages": 2, "widths": "8-16",
              "pool_after": "first_conv", "bn_scale": False, "dirac_init": True, "activation": "gelu",
              "head": "global_max", "optimizer": optimizer, "nesterov": True, "momentum": 0.85,
              "hyper_units": "per_1024", "learning_rate": 11.5 if optimizer == "sgd" else 0.02,
              "weight_decay": 0.0153, "bias_lr_scale": 64.0, "lr_schedule": "linear", "warmup": 0.23,
              "lr_start": 0.2, "lr_end": 0.07, "lookahead": True, "batch_size": 32, "epochs": 2,
              "label_smoothing": 0.2, "flip": "alternating", "translate": 2, "tta": "mirror_translate",
              "train_images": 96, "precision": "float32"}
    data = synthetic_bundle(160, n_val=40, image_size=16)
    result = train_and_evaluate(config, data, seed=0)
    assert result.epochs_run == 2 and result.train_images == 96 and 0 <= result.val_accuracy <= 1
    assert result.model.name == "cnnbench_tta" and result.model.count_params() == \
        architecture_stats(config, 16).params
    save_model(result.model, tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(data.x_val, verbose=0), result.model.predict(data.x_val, verbose=0),
                               atol=1e-6)


def test_the_final_training_has_no_validation_and_keeps_its_last_epoch():
    from cnnbench.training.train import train_and_evaluate

    data = synthetic_bundle(64, n_val=16, image_size=16).all_training()
    assert len(data.y_train) == 80 and len(data.y_val) == 0
    seen = []
    result = train_and_evaluate({**TINY, "epochs": 2, "precision": "float32"}, data,
                                on_epoch=lambda epoch, logs: seen.append((epoch, sorted(logs))), seed=1)
    assert result.val_accuracy is None and result.best_epoch == 2 and result.train_images == 80
    assert [epoch for epoch, _ in seen] == [1, 2] and all("val_accuracy" not in keys for _, keys in seen)
