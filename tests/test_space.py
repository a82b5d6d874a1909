"""Search-space parsing and every validation error the issue names."""
from __future__ import annotations

import pytest
import yaml

from cnnbench.space import SpaceError, load_space, parse_space
from conftest import SPACES, run_cli

MINIMAL = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


def write(tmp_path, doc, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


@pytest.mark.parametrize("name", ["default", "seed", "smoke"])
def test_shipped_spaces_are_valid(name):
    space = load_space(SPACES / f"{name}.yaml")
    assert space.params
    low, high = space.param_range()
    assert 0 < low <= high


def test_seed_space_is_the_tutorial_cnn():
    space = load_space(SPACES / "seed.yaml")
    assert space.size() == 1
    assert space.param_range() == (122_570, 122_570)  # the tutorial's model.summary() total


def test_defaults_fill_unnamed_knobs_and_fixed_values_apply():
    space = parse_space({"params": {"epochs": {"type": "fixed", "value": 3},
                                    "optimizer": {"type": "choice", "choices": ["adam", "sgd"]}}})
    config = space.complete({"optimizer": "sgd"})
    assert config["epochs"] == 3 and config["optimizer"] == "sgd"
    assert config["batch_size"] == 128  # knob default


def test_conditional_parameter_only_when_condition_holds():
    space = parse_space({"params": {
        "optimizer": {"type": "choice", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}},
        "nesterov": {"type": "choice", "choices": [True, False], "condition": {"optimizer": ["sgd"]}},
    }})
    assert list(space.searched()) == ["optimizer", "momentum", "nesterov"]
    assert space.params["momentum"].condition_holds({"optimizer": "sgd"})
    assert not space.params["momentum"].condition_holds({"optimizer": "adam"})


def test_size_counts_conditional_branches():
    space = parse_space({"params": {
        "optimizer": {"type": "choice", "choices": ["adam", "adamw", "sgd"]},
        "nesterov": {"type": "choice", "choices": [True, False], "condition": {"optimizer": "sgd"}},
        "batch_size": {"type": "choice", "choices": [64, 128]},
        "stages": {"type": "int", "low": 1, "high": 3},
    }})
    # adam, adamw: 1 each; sgd: 2 nesterov values -> 4 optimizer branches, x2 batch x3 stages
    assert space.size() == 4 * 2 * 3
    assert parse_space(MINIMAL).size() is None  # a float range is infinite


def test_fingerprint_ignores_comments_and_order(tmp_path):
    a = write(tmp_path, "# comment\nparams:\n  epochs: {type: fixed, value: 2}\n  flip: {type: fixed, value: true}\n", "a.yaml")
    b = write(tmp_path, "params:\n  flip: {type: fixed, value: true}  # x\n  epochs: {type: fixed, value: 2}\n", "b.yaml")
    c = write(tmp_path, "params:\n  flip: {type: fixed, value: true}\n  epochs: {type: fixed, value: 3}\n", "c.yaml")
    assert load_space(a).fingerprint() == load_space(b).fingerprint() != load_space(c).fingerprint()


BAD = {
    "unknown top-level key": ({**MINIMAL, "bugdet": {"trials": 3}}, "bugdet", "unknown key"),
    "unknown nested key": ({**MINIMAL, "budget": {"trails": 3}}, "budget.trails", "unknown key"),
    "unknown parameter": ({"params": {"learning_rat": {"type": "fixed", "value": 0.1}}}, "params",
                          "unknown parameter 'learning_rat'"),
    "unknown param key": ({"params": {"epochs": {"type": "int", "low": 1, "high": 3, "hgh": 4}}},
                          "params.epochs.hgh", "unknown key"),
    "wrong type": ({**MINIMAL, "budget": {"trials": "many"}}, "budget.trials", "integer"),
    "wrong value type for knob": ({"params": {"batch_size": {"type": "choice", "choices": [64, "big"]}}},
                                  "params.batch_size", "'big' is not int"),
    "value not allowed": ({"params": {"optimizer": {"type": "choice", "choices": ["adam", "lion"]}}},
                          "params.optimizer", "'lion' is not one of"),
    "empty choice": ({"params": {"optimizer": {"type": "choice", "choices": []}}},
                     "params.optimizer.choices", "empty"),
    "low above high": ({"params": {"dropout": {"type": "float", "low": 0.5, "high": 0.1}}},
                       "params.dropout", "low (0.5) is above high (0.1)"),
    "log range touching zero": ({"params": {"weight_decay": {"type": "float", "low": 0.0, "high": 0.1,
                                                             "log": True}}},
                                "params.weight_decay", "log range must be above zero"),
    "condition on unknown parameter": ({"params": {"momentum": {"type": "float", "low": 0.8, "high": 0.9,
                                                                "condition": {"optimiser": "sgd"}}}},
                                       "params.momentum.condition", "unknown parameter 'optimiser'"),
    "condition value never taken": ({"params": {
        "optimizer": {"type": "choice", "choices": ["adam"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}}}},
        "params.momentum.condition", "never takes the value 'sgd'"),
    "too many poolings": ({"params": {"stages": {"type": "int", "low": 2, "high": 6}}},
                          "params", "too many poolings"),
    "missing type": ({"params": {"epochs": {"value": 3}}}, "params.epochs", "missing 'type'"),
    "bad type": ({"params": {"epochs": {"type": "integer", "low": 1, "high": 3}}}, "params.epochs", "'type' must be"),
    "start_with unknown parameter": ({**MINIMAL, "start_with": [{"learning_rte": 1e-3}]},
                                     "start_with[0].learning_rte", "not a parameter of this space"),
    "start_with value out of range": ({**MINIMAL, "start_with": [{"learning_rate": 0.5}]},
                                      "start_with[0].learning_rate", "0.5 is not in 0.0001..0.01"),
    "start_with missing a searched value": ({"params": {**MINIMAL["params"], "flip": {
        "type": "choice", "choices": [True, False]}}, "start_with": [{"learning_rate": 1e-3}]},
        "start_with[0]", "no value for flip"),
    "start_with names a fixed parameter": ({"params": {**MINIMAL["params"], "epochs": {"type": "fixed", "value": 2}},
                                            "start_with": [{"learning_rate": 1e-3, "epochs": 2}]},
                                           "start_with[0].epochs", "is fixed in this space"),
    "start_with value whose condition fails": ({"params": {
        "optimizer": {"type": "choice", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": "sgd"}}},
        "start_with": [{"optimizer": "adam", "momentum": 0.85}]}, "start_with[0].momentum", "does not hold"),
    "start_with boolean for a number": ({"params": {"stages": {"type": "choice", "choices": [1, 2]}},
                                         "start_with": [{"stages": True}]}, "start_with[0].stages", "not one of"),
    "widths for the wrong number of stages": ({"params": {"widths": {"type": "fixed", "value": "16-32"}}},
                                              "params", "names 2 stage(s), but stages is 3"),
    "widths not a list of numbers": ({"params": {"widths": {"type": "choice", "choices": ["64-x"]}}},
                                     "params.widths", "not a list of widths"),
    "negative seed": ({**MINIMAL, "seed": -1}, "seed", "greater than or equal to 0"),
    "seed beyond the samplers": ({**MINIMAL, "seed": 2**64}, "seed", "less than 2147483648"),
    "NaN bound": ({"params": {"dropout": {"type": "float", "low": float("nan"), "high": 0.5}}},
                  "params.dropout.low", "finite number"),
    "infinite growth": ({"params": {"filter_growth": {"type": "fixed", "value": float("inf")}}},
                        "params.filter_growth.value", "finite number"),
    "a trillion stages": ({"params": {"stages": {"type": "fixed", "value": 10**12}}}, "params.stages",
                          "above the maximum 10"),
    "a billion convs": ({"params": {"convs_per_stage": {"type": "fixed", "value": 10**9}}}, "params.convs_per_stage",
                        "above the maximum 32"),
    "huge image": ({**MINIMAL, "data": {"image_size": 10**9}}, "data.image_size", "less than or equal to 1024"),
    "grid on a continuous range": ({**MINIMAL, "search": {"sampler": "grid"}}, "params.learning_rate",
                                   "grid search needs a finite space"),
    "grid too large to list": ({"search": {"sampler": "grid"}, "params": {
        "epochs": {"type": "int", "low": 1, "high": 10000}, "batch_size": {"type": "int", "low": 1, "high": 60000}}},
        "params", "a grid of 600,000,000 configurations"),
    "not a mapping": ("- just\n- a list\n", "", "must be a mapping"),
    "bad yaml": ("params: {epochs: [1, 2\n", "", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_space_names_file_field_and_problem(tmp_path, case):
    doc, field, problem = BAD[case]
    path = write(tmp_path, doc)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert f": {field}" in message if field else True
    assert problem in message, message


def test_cli_rejects_bad_space_with_exit_2_and_writes_nothing(tmp_path):
    path = write(tmp_path, {"params": {"stages": {"type": "int", "low": 1, "high": 9}}})
    results = tmp_path / "results"
    for args in (["check", str(path)], ["sweep", "--space", str(path), "--results", str(results)]):
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert f"{path}: params: architecture impossible" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not results.exists()


def test_cli_check_prints_what_is_searched():
    proc = run_cli("check", str(SPACES / "smoke.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "momentum" in proc.stdout and "when optimizer = sgd" in proc.stdout
    assert "learning_rate      float 0.001..0.01 (log)" in proc.stdout
    assert "model parameters: 314 .. 5,562" in proc.stdout


def test_fingerprint_ignores_values_left_at_default():
    plain = parse_space({"params": {"epochs": {"type": "fixed", "value": 2}}})
    explicit = parse_space({"search": {"sampler": "tpe"}, "params": {"epochs": {"type": "fixed", "value": 2}}})
    assert plain.fingerprint() == explicit.fingerprint()


def test_epoch_options_follow_what_the_space_allows():
    assert parse_space({"params": {"epochs": {"type": "fixed", "value": 5}}}).epoch_options() == []
    assert parse_space({"params": {"epochs": {"type": "int", "low": 4, "high": 10, "step": 2}}}).epoch_options() \
        == [4, 6, 8, 10]
    assert parse_space({"params": {"epochs": {"type": "choice", "choices": [12, 3]}}}).epoch_options() == [3, 12]


def test_size_is_counted_not_listed_for_huge_ranges():
    space = parse_space({"params": {"filter_growth": {"type": "int", "low": 1, "high": 16},
                                    "batch_size": {"type": "int", "low": 1, "high": 65536},
                                    "epochs": {"type": "int", "low": 1, "high": 10000, "step": 3}}})
    assert space.size() == 16 * 65536 * 3334


def test_every_knob_that_changes_the_networks_size_says_it_shapes_the_network():
    from cnnbench.knobs import KNOBS, default_config
    from cnnbench.model import architecture_stats
    from cnnbench.space import ARCH_KNOBS

    base = {**default_config(), "stages": 2, "base_filters": 8, "dense_units": 16, "batch_norm": True,
            "head": "flatten"}
    alternatives = {"bn_scale": False, "stem": "whiten", "stages": 3, "convs_per_stage": 1, "base_filters": 16,
                    "filter_growth": 1.0, "max_filters": 8, "widths": "8-32", "kernel_size": 5, "padding": "valid",
                    "residual": True, "batch_norm": False, "head": "global_avg", "dense_units": 0,
                    "pool_after": "first_conv", "pool_last_stage": False}
    for name, other in alternatives.items():
        size = lambda cfg: (architecture_stats(cfg).params, architecture_stats(cfg).flops)  # noqa: E731
        changed = size({**base, name: other}) != size(base)
        assert changed and KNOBS[name].shapes_network and name in ARCH_KNOBS, name
    assert not KNOBS["learning_rate"].shapes_network and "learning_rate" not in ARCH_KNOBS


@pytest.mark.parametrize("knob, raw, text", [
    ("dense_units", {"type": "int", "low": 2, "high": 10, "step": 4}, "int 2..10 step 4"),
    ("stages", {"type": "int", "low": 1, "high": 4, "log": True}, "int 1..4 (log)"),
    ("learning_rate", {"type": "float", "low": 0.001, "high": 0.1, "log": True}, "float 0.001..0.1 (log)"),
    ("dropout", {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}, "float 0.1..0.3 step 0.1"),
    ("flip", {"type": "choice", "choices": ["off", "random"]}, "one of off, random"),
    ("dense_units", {"type": "fixed", "value": 7}, "fixed 7"),
    ("momentum", {"type": "float", "low": 0.8, "high": 0.9, "condition": {"optimizer": ["sgd", "muon"]}},
     "float 0.8..0.9  when optimizer in ['sgd', 'muon']"),
])
def test_each_parameter_type_describes_itself_for_check(knob, raw, text):
    params = {knob: raw, **({"optimizer": {"type": "choice", "choices": ["sgd", "muon"]}} if "condition" in raw
                            else {})}
    assert parse_space({"params": params}).params[knob].describe() == text


@pytest.mark.parametrize("knob, raw, count, listed, extremes, middle", [
    ("dense_units", {"type": "int", "low": 2, "high": 10, "step": 4}, 3, [2, 6, 10], [2, 10], 6),
    ("dropout", {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}, 3, [0.1, 0.2, 0.3], [0.1, 0.3], 0.2),
    ("learning_rate", {"type": "float", "low": 0.001, "high": 0.1, "log": True}, None, None, [0.001, 0.1], 0.01),
    ("flip", {"type": "choice", "choices": ["off", "random", "alternating"]}, 3, ["off", "random", "alternating"],
     ["off", "random", "alternating"], "random"),
    ("dense_units", {"type": "fixed", "value": 7}, 1, [7], [7], 7),
])
def test_each_parameter_type_knows_its_values_extremes_and_centre(knob, raw, count, listed, extremes, middle):
    p = parse_space({"params": {knob: raw}}).params[knob]
    assert p.count() == count
    if isinstance(middle, str):
        assert p.extremes() == extremes and p.middle() == middle and p.listed() == listed
    else:
        assert p.extremes() == pytest.approx(extremes) and p.middle() == pytest.approx(middle)
        assert (p.listed() == pytest.approx(listed)) if listed is not None else count is None
