"""A JSON Schema for search-space files, generated from the validation models (``space.py``)
and the knob table (``knobs.py``), so editors with the YAML language server complete and
check knobs while typing: ``cnnbench schema > search_spaces/space.schema.json``. The shipped
spaces name it in their first line (``# yaml-language-server: $schema=space.schema.json``).

The schema is a helper for editors, not the judge: ``cnnbench check`` also applies the rules
a schema cannot say (conditions, feasibility of the network, start_with values).
"""
from __future__ import annotations

import json
from typing import Any

from cnnbench.knobs import KNOBS, Knob

MODELINE = "# yaml-language-server: $schema=space.schema.json"
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _value_schema(knob: Knob) -> dict[str, Any]:
    """What one value of ``knob`` may be (a fixed value, a choice, a range's bound)."""
    schema: dict[str, Any] = {"type": _JSON_TYPES[knob.kind]}  # "number" admits 1 as well as 1.0
    if knob.choices:
        schema["enum"] = list(knob.choices)
    if knob.minimum is not None:
        schema["minimum"] = knob.minimum
    if knob.maximum is not None:
        schema["maximum"] = knob.maximum
    if knob.below is not None:
        schema["exclusiveMaximum"] = knob.below
    return schema


def _knob_schema(name: str, knob: Knob) -> dict[str, Any]:
    value = _value_schema(knob)
    if name in ("flip", "tta"):  # former booleans: true/false still mean what they meant
        value = {"anyOf": [value, {"type": "boolean"}]}
    return {
        "description": f"{knob.doc} (default {knob.default!r})",
        "allOf": [{"$ref": "#/$defs/Param"}],
        "if": {"properties": {"type": {"const": "fixed"}}},
        "then": {"properties": {"value": value}},
        "else": {"if": {"properties": {"type": {"const": "choice"}}},
                 "then": {"properties": {"choices": {"items": value}}}},
    }


def space_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a search-space file."""
    from cnnbench.space import Space

    schema = Space.model_json_schema()
    schema["properties"].pop("source", None)  # set by load_space, never by the file
    defs = schema["$defs"]
    defs["Param"] = schema["properties"]["params"]["additionalProperties"]
    schema["properties"]["params"] = {
        "type": "object", "description": "the knobs this space sets or searches; the rest keep their defaults",
        "additionalProperties": False,
        "properties": {name: _knob_schema(name, knob) for name, knob in KNOBS.items()},
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "title": "cnnbench search space"}


def schema_text() -> str:
    return json.dumps(space_schema(), indent=1, sort_keys=False) + "\n"
