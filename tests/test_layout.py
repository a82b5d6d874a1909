"""The import rules of the layout, read from the source (ast: every import, at the top or
inside a function): the engines' libraries stay under engines/, and nothing below the glue
imports the glue."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cnnbench"
ENGINE_LIBRARIES = ("optuna", "keras_tuner")
GLUE = ("cnnbench.cli", "cnnbench.commands", "cnnbench.sweep", "cnnbench.request", "cnnbench.api", "cnnbench.benchmarking.compare",
        "cnnbench.benchmarking.tabular")  # the top: commands


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def modules():
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("cnnbench", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path


def test_optuna_and_keras_tuner_are_imported_only_under_engines():
    outside = {name: sorted(i for i in imports(path) if i.split(".")[0] in ENGINE_LIBRARIES)
               for name, path in modules() if not name.startswith("cnnbench.engines")}
    assert {name: found for name, found in outside.items() if found} == {}


def test_nothing_below_the_glue_imports_the_glue():
    upward = {name: sorted(i for i in imports(path) if i in GLUE)
              for name, path in modules() if name not in GLUE and name != "cnnbench"}
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_engines_import_no_reports():
    reports = ("cnnbench.reports.pages", "cnnbench.reports.plots", "cnnbench.reports.report")
    upward = {name: sorted(i for i in imports(path) if i in reports)
              for name, path in modules() if name.startswith("cnnbench.engines")}
    assert {name: found for name, found in upward.items() if found} == {}
