"""The import rules of the layout, read from the source (ast: every import, at the top or
inside a function). The package is laid out like its flow, in layers; a module imports only
from its own layer or the ones below, so the flow reads from the bottom up:

  records (files, provenance, knobs, trials) -> model/ -> space/ -> training/ -> deadline, plan
  -> engines/ and reports/ (side by side, never each other) -> final -> the glue (request,
  sweep, commands, cli, api, benchmarking/)

Optuna is imported only under engines/optuna/, KerasTuner only under engines/kerastuner/."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cnnbench"
LAYERS = (
    ("cnnbench.files", "cnnbench.provenance", "cnnbench.knobs", "cnnbench.trials"),
    ("cnnbench.model",),
    ("cnnbench.space",),
    ("cnnbench.training",),
    ("cnnbench.deadline", "cnnbench.plan"),
    ("cnnbench.engines", "cnnbench.reports"),
    ("cnnbench.final",),
    ("cnnbench.request", "cnnbench.sweep", "cnnbench.commands", "cnnbench.cli", "cnnbench.api",
     "cnnbench.benchmarking", "cnnbench"),
)
SIDE_BY_SIDE = ("cnnbench.engines", "cnnbench.reports")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if node.module == "cnnbench":  # from cnnbench import trials, runtime, ...
                found |= {f"cnnbench.{alias.name}" for alias in node.names}
    return found


def modules():
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("cnnbench", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path


def _group(name: str) -> str:
    best = max((g for layer in LAYERS for g in layer if name == g or name.startswith(g + ".")), key=len)
    return best


def layer(name: str) -> int:
    group = _group(name)
    return next(i for i, groups in enumerate(LAYERS) if group in groups)


def test_every_module_has_a_layer():
    assert [name for name, _ in modules() if name != "cnnbench" and _group(name) == "cnnbench"] == []


def test_no_module_imports_from_a_layer_above_its_own():
    upward = {name: sorted(i for i in imports(path) if i.startswith("cnnbench.") and layer(i) > layer(name))
              for name, path in modules()}
    assert {name: found for name, found in upward.items() if found} == {}


def test_engines_and_reports_never_import_each_other():
    crossing = {name: sorted(i for i in imports(path) if i.startswith("cnnbench.")
                             and _group(i) in SIDE_BY_SIDE and _group(name) in SIDE_BY_SIDE
                             and _group(i) != _group(name))
                for name, path in modules()}
    assert {name: found for name, found in crossing.items() if found} == {}


def test_optuna_and_keras_tuner_are_imported_only_by_their_engines():
    where = {"optuna": "cnnbench.engines.optuna", "keras_tuner": "cnnbench.engines.kerastuner"}
    outside = {name: sorted(i for i in imports(path) if i.split(".")[0] in where
                            and not (name == where[i.split(".")[0]] or name.startswith(where[i.split(".")[0]] + ".")))
               for name, path in modules()}
    assert {name: found for name, found in outside.items() if found} == {}


def test_the_trial_child_imports_no_engine_and_no_report():
    """What a trial's child process imports (isolation, training) stays below engines/ and
    reports/, and the trainer's contract (trials) imports no TensorFlow at the top."""
    for name, path in modules():
        if name.startswith("cnnbench.training"):
            assert not [i for i in imports(path) if i.startswith("cnnbench.") and _group(i) in SIDE_BY_SIDE], name
    top = [n for n in ast.parse((SRC / "trials.py").read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top if "tensorflow" in ast.dump(n) or "keras" in ast.dump(n)]


def test_what_a_trainer_reports_is_what_a_record_keeps():
    """TrialResult (the trainer's side) and TrialRecord (the study's side) share their
    metrics: each recorded one is a record field of the same type, so adding a figure to
    one and not the other fails here, not silently in a study."""
    import typing
    from dataclasses import fields

    from cnnbench import trials

    result = typing.get_type_hints(trials.TrialResult)
    record = typing.get_type_hints(trials.TrialRecord)
    assert set(trials.RECORDED_METRICS) | set(trials.NOT_RECORDED) == {f.name for f in fields(trials.TrialResult)}
    for name in trials.RECORDED_METRICS:
        assert name in record, f"TrialRecord has no field {name!r}"
        # a record may not know a figure yet (None) where a finished result always does
        assert result[name] == record[name] or record[name] == result[name] | None, name
    assert trials.Outcome("complete", "", {"val_accuracy": 0.5}).metrics == {"val_accuracy": 0.5}
