"""Property test: a mutated space file is either a space that `sweep` would accept, or one
clean ``FILE: FIELD: PROBLEM`` line with exit code 2. Never a traceback, never a hang,
never the machine's memory. Seeded, validation only (no training), at least 300 examples.
What is accepted also passes the shipped JSON Schema (editors never flag a valid file).
"""
from __future__ import annotations

import math
import resource

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnbench import engines
from cnnbench.cli import main
from cnnbench.space import SpaceError, load_space
from cnnbench.space.schema import space_schema
from conftest import SPACES

SCHEMA = space_schema()
ENGINES = {name: engines.get(name) for name in engines.ENGINES}  # imported now: their memory is not validation's
SHIPPED = {name: yaml.safe_load((SPACES / f"{name}.yaml").read_text()) for name in ("default", "seed", "smoke")}
ODD_VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 10**12, 2**64, -1, 0, 0.0, -0.5, "", "1e-3",
                     "ünïcødé ✓", True, None, [], {}, [[[]]], {"a": {"b": {"c": 1}}}, "64-x", 10**9]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-3, 10**6), max_size=4),
)


def _paths(doc, prefix=()):
    """Every (path, value) in a nested YAML document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    *head, last = path
    target = doc
    for key in head:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()


@st.composite
def mutated_space(draw) -> bytes:
    import copy

    doc = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "value", "add", "self-condition", "swap-type"]))
        if action == "delete":
            doc = _set(doc, path, _DELETE)
        elif action == "value":
            doc = _set(doc, path, draw(ODD_VALUES))
        elif action == "add" and isinstance(doc, dict):
            doc[draw(st.text(min_size=1, max_size=8))] = draw(ODD_VALUES)
        elif action == "self-condition" and "params" in doc and isinstance(doc["params"], dict) and doc["params"]:
            name = draw(st.sampled_from(sorted(map(str, doc["params"]))))
            if isinstance(doc["params"].get(name), dict):
                doc["params"][name]["condition"] = {name: draw(ODD_VALUES)}
        elif action == "swap-type":
            doc = _set(doc, path, draw(st.sampled_from([{"type": "int", "low": 1, "high": 10**9},
                                                       {"type": "float", "low": 0.0, "high": 1.0, "log": True},
                                                       {"type": "choice", "choices": []}, {"type": "fixed"},
                                                       {"type": "int", "low": 5, "high": 1}, "str", 3])))
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False) if doc is not None else ""
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "anchor", "duplicate", "tag", "bytes", "nest", "empty"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    elif damage == "anchor":
        text = "base: &b {type: fixed, value: 1}\n" + text + "\nextra: *b\n"
    elif damage == "duplicate":
        text = text + "\nseed: 1\nseed: 2\n"
    elif damage == "tag":
        text = "evil: !!python/object/apply:os.system ['true']\n" + text
    elif damage == "nest":
        text = "params: " + "[" * 200 + "]" * 200 + "\n"
    elif damage == "empty":
        text = ""
    data = text.encode("utf-8")
    if damage == "bytes":
        data = data[:20] + b"\xff\xfe\x80" + data[20:]
    return data


@settings(max_examples=300, derandomize=True, deadline=60_000, suppress_health_check=list(HealthCheck))
@given(mutated_space())
def test_mutated_space_files_are_accepted_whole_or_refused_in_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        space = load_space(path)
    except SpaceError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert "Traceback" not in message
    else:
        for name, engine in ENGINES.items():  # what check accepts also starts in sweep, with either engine
            try:
                engine.validate(space, None, None)
            except SpaceError as e:
                assert name == "kerastuner" or "grid" not in str(e), str(e)
        space.size(), space.param_range()
        # the editors' schema never refuses what cnnbench check accepts (it may let through
        # what only check can judge: conditions, feasibility, start_with values)
        jsonschema.validate(yaml.safe_load(data), SCHEMA)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"validation took {grown_mb:.0f} MB"


def test_check_exits_2_with_one_line_for_a_broken_file(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"params:\n  stages: {type: int, low: 1, high: 1000000000000}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cnnbench: {path}: params.stages:")
