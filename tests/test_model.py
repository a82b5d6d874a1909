"""The model builder over many sampled configurations, against the paper count."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from cnnbench.engines.optuna_engine import suggest
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
