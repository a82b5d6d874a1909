"""The JSON Schema of space files: shipped, current, and in agreement with the validator."""
from __future__ import annotations

import json

import jsonschema
import pytest

from cnnbench.space.schema import MODELINE, schema_text, space_schema
from cnnbench.space.safe_yaml import load
from conftest import SPACES


def test_the_shipped_schema_is_what_cnnbench_schema_prints():
    assert (SPACES / "space.schema.json").read_text() == schema_text()  # regenerate: cnnbench schema > ...


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_names_the_schema_and_passes_it(path):
    assert path.read_text().splitlines()[0] == MODELINE
    jsonschema.validate(load(path), space_schema())


@pytest.mark.parametrize("bad", [
    {"params": {"epochz": {"type": "fixed", "value": 3}}},                    # an unknown knob
    {"params": {"tta": {"type": "fixed", "value": "sideways"}}},              # not one of its values
    {"params": {"optimizer": {"type": "choice", "choices": ["sgd", "lion"]}}},
    {"params": {"epochs": {"type": "fixed", "value": 0}}},                    # below the minimum
    {"params": {}, "budget": {"trials": 0}},
    {"params": {}, "colour": "blue"},                                         # an unknown section
])
def test_the_schema_refuses_what_the_validator_refuses(bad):
    from cnnbench.space import SpaceError, parse_space

    with pytest.raises(SpaceError):
        parse_space(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, space_schema())


def test_the_schema_accepts_the_spellings_the_validator_accepts():
    from cnnbench.space import parse_space

    good = {"params": {"flip": {"type": "fixed", "value": True}, "tta": {"type": "choice",
                                                                          "choices": ["off", "mirror_translate"]},
                       "learning_rate": {"type": "float", "low": 1, "high": 2.5, "log": True}}}
    parse_space(good)
    jsonschema.validate(good, space_schema())
    assert json.loads(schema_text())["title"] == "cnnbench search space"
