"""The import rules of the layout, read from the source (ast: every import, at the top or
inside a function). The package is laid out like its flow, in layers; a module imports only
from its own layer or the ones below, so the flow reads from the bottom up:

  records (files, provenance, knobs, trials) -> model/ -> space/ -> training/ -> throughput, forecast, deadline, plan
  -> engines/ and reports/ (side by side, never each other) -> final -> the glue (request,
  sweep, commands, results_commands, cli, api, benchmarking/)

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
    ("cnnbench.deploy",),
    ("cnnbench.throughput", "cnnbench.forecast", "cnnbench.deadline", "cnnbench.plan"),
    ("cnnbench.engines", "cnnbench.reports"),
    ("cnnbench.final",),
    ("cnnbench.request", "cnnbench.sweep", "cnnbench.commands", "cnnbench.results_commands", "cnnbench.cli",
     "cnnbench.api", "cnnbench.benchmarking", "cnnbench"),
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


def runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs (not those under ``if TYPE_CHECKING``):
    ``from package import module`` counts as the module, ``from package import name`` (a
    name its ``__init__`` defines) as the package."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for sub in node.body for n in ast.walk(sub)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {m for m in submodules if m in KNOWN}
            if submodules - KNOWN:
                found.add(node.module)
    return found


def import_cycles() -> set[tuple[str, ...]]:
    """Every cycle of imports between cnnbench modules, as they are written (a package's
    ``__init__`` that a submodule's import runs first by Python's rule is no edge of it)."""
    known = dict(modules())
    graph = {name: {i for i in runtime_imports(path) if i in known and i != name} for name, path in known.items()}
    cycles = set()

    def walk(start: str, node: str, path: tuple[str, ...]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                i = path.index(min(path))
                cycles.add(path[i:] + path[:i])
            elif nxt not in path and len(path) < 8:
                walk(start, nxt, path + (nxt,))

    for name in graph:
        walk(name, name, (name,))
    return cycles


def test_no_import_cycles_but_the_callable_sweep_module():
    """The cycle the issue found (space/__init__ importing space.rules, which imported the
    space package back) is gone; what remains is by design: ``cnnbench.sweep`` is callable as
    the API's function and imports ``cnnbench.api`` only when called."""
    assert import_cycles() == {("cnnbench.api", "cnnbench.sweep")}


KNOWN = {name for name, _ in modules()}


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


def test_a_trial_child_imports_neither_pydantic_nor_the_space_schema():
    """The child process loads its data from a plain DataSpec (what the sweep hands it) and
    imports the trainer: before, `training/data.py` imported `cnnbench.space` at its top and the
    child unpickled the validated pydantic `Data`, so every child imported pydantic."""
    import pickle
    import subprocess
    import sys

    from cnnbench.space import parse_space
    from cnnbench.training.data import DataSpec

    validated = parse_space({"data": {"validation_fraction": 0.2, "train_subset": 500, "image_size": 24},
                             "params": {"epochs": {"type": "fixed", "value": 1}}}).data
    spec = DataSpec.of(validated)
    for name in ("dataset", "path", "validation_fraction", "train_subset", "test_subset", "image_size"):
        assert getattr(spec, name) == getattr(validated, name), name
    assert set(type(validated).model_fields) == {f for f in DataSpec.__dataclass_fields__}  # none forgotten
    child = (f"import pickle, sys\nspec = pickle.loads({pickle.dumps(spec)!r})\n"
             "from cnnbench.training import isolation, train\nfrom cnnbench.training.data import load_data\n"
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m.startswith('cnnbench.space'))\n"
             "print(spec.train_subset, loaded)")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["500", "[]"]


def test_worker_roles_are_read_by_the_command_line_and_the_engines_only(monkeypatch):
    """The issue found them read in sweep.py; now commands.worker_role reads them and the
    request carries them (a notebook's sweep is never a worker)."""
    from cnnbench.commands import worker_role

    readers = sorted(name for name, path in modules()
                     if any(v in path.read_text() for v in ("CNNBENCH_WORKER", "KERASTUNER_TUNER_ID"))
                     and not name.startswith("cnnbench.engines"))
    assert readers == ["cnnbench.commands"]
    monkeypatch.delenv("CNNBENCH_WORKER", raising=False)
    monkeypatch.delenv("KERASTUNER_TUNER_ID", raising=False)
    assert worker_role() == (None, 0)
    monkeypatch.setenv("CNNBENCH_WORKER", "2")
    assert worker_role() == ("2", 2)
    monkeypatch.delenv("CNNBENCH_WORKER")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    assert worker_role() == ("tuner1", 0)


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
