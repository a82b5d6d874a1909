"""The model builder over many sampled configurations, against the paper count."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from cnnbench.engines.optuna.study import suggest
from cnnbench.knobs import default_config
from cnnbench.model import ArchitectureError, architecture_stats, build_model
from cnnbench.space import load_space
from conftest import SPACES


def sampled_configs(space, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        yield space.complete(suggest(trial, space))
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name,n", [("default", 12), ("smoke", 4)])
def test_sampled_models_match_check(name, n):
    space = load_space(SPACES / f"{name}.yaml")
    low, high = space.param_range()
    for config in sampled_configs(space, n):
        model = build_model(config)
        stats = architecture_stats(config)
        assert model.count_params() == stats.params, config
        assert low <= stats.params <= high
        probs = model.predict(np.zeros((2, 41, 27, 3), np.uint8), verbose=0)  # any input size
        assert probs.shape == (2, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_tutorial_layout():
    config = {**default_config(), **dict(stages=3, convs_per_stage=1, max_filters=64, padding="valid",
                                         batch_norm=False, pool_last_stage=False, head="flatten",
                                         dense_units=64)}
    model = build_model(config)
    convs = [layer.filters for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [32, 64, 64]
    assert model.count_params() == 122_570


def test_bf16_policy_builds_with_float32_output():
    model = build_model({**default_config(), "precision": "mixed_bfloat16"})
    assert model.get_layer("stage1_conv1").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


def test_impossible_architecture_is_named():
    with pytest.raises(ArchitectureError, match="too many poolings"):
        architecture_stats({**default_config(), "stages": 6})


def keras_flops(model) -> int:
    """Conv and dense FLOPs per image read off the built Keras model (2 x multiply-adds)."""
    total = 0
    for layer in model.layers:
        kind = layer.__class__.__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * kh * kw * cin * cout * h * w
        elif kind == "Dense":
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return total


FAST_RECIPES = {
    "airbench-like": dict(stem="whiten", widths="64-128-128", pool_after="first_conv", bn_scale=False,
                          dirac_init=True, activation="gelu", head="global_max", logit_scale=1 / 9),
    "resnet9-like": dict(stages=3, convs_per_stage=1, widths="32-64-128", residual=True, head="global_max"),
    "residual with valid convs": dict(stages=2, padding="valid", residual=True, kernel_size=5),
    "first-conv pooling, tutorial tail": dict(stages=3, pool_after="first_conv", pool_last_stage=False,
                                              head="flatten", dense_units=32, stem="whiten"),
}


@pytest.mark.parametrize("name", list(FAST_RECIPES))
def test_fast_recipe_knobs_match_the_paper_count(name):
    config = {**default_config(), **FAST_RECIPES[name]}
    model = build_model(config)
    stats = architecture_stats(config)
    assert model.count_params() == stats.params
    assert keras_flops(model) == stats.flops
    probs = model.predict(np.zeros((2, 40, 36, 3), np.uint8), verbose=0)
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_widths_must_name_every_stage():
    with pytest.raises(ArchitectureError, match="names 2 stage"):
        architecture_stats({**default_config(), "stages": 3, "widths": "16-32"})


def test_whitening_filters_whiten_the_patches():
    from cnnbench.model import whitening_filters

    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 8, 8, 3))
    images = base + 0.8 * np.roll(base, 1, axis=2)  # neighbouring pixels correlated, like photos
    kernel = whitening_filters(images, eps=0.0)
    patches = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    responses = patches @ kernel.reshape(12, 24)[:, :12]
    np.testing.assert_allclose(np.cov(responses, rowvar=False, bias=True), np.eye(12), atol=0.05)
    np.testing.assert_allclose(kernel.reshape(12, 24)[:, 12:], -kernel.reshape(12, 24)[:, :12])


def test_dirac_init_passes_channels_through():
    config = {**default_config(), "stages": 1, "convs_per_stage": 2, "base_filters": 8, "batch_norm": False,
              "dirac_init": True}
    model = build_model(config)
    second = model.get_layer("stage1_conv2").kernel.numpy()
    expected = np.zeros((3, 3, 8, 8), np.float32)
    for c in range(8):
        expected[1, 1, c, c] = 1.0
    np.testing.assert_array_equal(second, expected)


def test_fused_batch_norm_computes_what_the_builtin_layer_does():
    import keras

    from cnnbench.model.fused import FusedBatchNormalization

    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 6, 6, 4)).astype(np.float32)
    for scale in (True, False):
        plain = keras.layers.BatchNormalization(momentum=0.6, scale=scale)
        fused = FusedBatchNormalization(momentum=0.6, scale=scale)
        plain.build(x.shape), fused.build(x.shape)
        fused.set_weights(plain.get_weights())
        np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-4)
        # moving statistics move the same way (the fused kernel's variance is the unbiased one)
        np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, atol=1e-5)
        np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=0.02)
        np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=0.02)
        assert len(fused.get_weights()) == len(plain.get_weights())


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("mixed_bfloat16", 1e-2)])
def test_fused_gelu_computes_and_differentiates_what_the_builtin_layer_does(dtype, tolerance):
    import keras
    import tensorflow as tf

    from cnnbench.model.fused import FusedGELU

    x = tf.constant(np.random.default_rng(0).normal(0.0, 2.0, (4, 5, 5, 3)).astype(np.float32))
    plain, fused = keras.layers.Activation("gelu", dtype=dtype), FusedGELU(dtype=dtype)
    outputs, slopes = [], []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        outputs.append(tf.cast(y, tf.float32).numpy())
        slopes.append(tf.cast(tape.gradient(y, x), tf.float32).numpy())
        assert y.dtype == ("float32" if dtype == "float32" else "bfloat16")
    scale = np.abs(outputs[0]).max()
    np.testing.assert_allclose(outputs[1], outputs[0], atol=tolerance * scale)
    np.testing.assert_allclose(slopes[1], slopes[0], atol=tolerance * 2)
    assert not fused.weights  # so the exported model's built-in Activation("gelu") is the same function


def test_the_trained_network_uses_the_fused_kernels_and_the_saved_one_builtin_layers():
    from cnnbench.knobs import default_config
    from cnnbench.model.fused import FusedBatchNormalization, FusedGELU

    config = {**default_config(), "activation": "gelu", "stem": "whiten", "stages": 2, "base_filters": 4}
    trained = build_model(config, fused=True)
    saved = build_model(config)
    kinds = {type(layer) for layer in trained.layers}
    assert FusedGELU in kinds and FusedBatchNormalization in kinds
    assert not {FusedGELU, FusedBatchNormalization} & {type(layer) for layer in saved.layers}
    assert [w.shape for w in trained.weights] == [w.shape for w in saved.weights]
