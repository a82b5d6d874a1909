"""The rules a space file must follow beyond its types: what ``parse_space`` checks after
pydantic has validated the fields, and how a pydantic error becomes one line.

Everything here raises ``SpaceError("FILE: FIELD: PROBLEM")``; nothing is enumerated that
could be large (ranges are counted, corners and grids are bounded).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cnnbench.knobs import KNOBS, unspell
from cnnbench.model import ArchitectureError, architecture_stats
from cnnbench.space.params import ARCH_KNOBS, MAX_CORNERS, ChoiceParam, FloatParam, IntParam, SpaceError

if TYPE_CHECKING:  # parse_space (space/__init__.py) calls these rules: no import back at run time
    from cnnbench.space import Space

_SCALAR_BRANCHES = ("bool", "int", "float", "str")  # a plain value's union members, as pydantic names them


def first_error(source: str, error: ValidationError) -> str:
    errors = error.errors()
    err = errors[0]
    loc = [str(x) for x in err["loc"]]
    # A discriminated union puts the chosen type in the path (params.lr.float.low): drop it.
    if len(loc) >= 3 and loc[0] == "params" and loc[2] in ("int", "float", "choice", "fixed"):
        del loc[2]
    # A plain value (bool | int | float | str) that fits none: report it once, as a number
    # problem when it is one (e.g. "finite number" for inf), not as "not a valid boolean".
    if loc and loc[-1] in _SCALAR_BRANCHES:
        branches = [e for e in errors if tuple(e["loc"][:-1]) == tuple(err["loc"][:-1])]
        err = next((e for e in branches if e["loc"][-1] == "float"), err)
        loc = loc[:-1]
    field = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        problem = "unknown key"
    elif err["type"] == "union_tag_invalid":
        problem = "'type' must be one of int, float, choice, fixed"
    elif err["type"] == "union_tag_not_found":
        problem = "missing 'type' (one of int, float, choice, fixed)"
    else:
        problem = err["msg"]
    return f"{source}: {field}: {problem}"


def check_semantics(space: Space) -> None:
    src = space.source
    for name, p in space.params.items():
        field = f"{src}: params.{name}"
        knob = KNOBS[name]
        if isinstance(p, (IntParam, FloatParam)):
            if isinstance(p, FloatParam) and knob.kind is not float:
                raise SpaceError(f"{field}: {name} takes {knob.kind.__name__} values, not a float range")
            if isinstance(p, IntParam) and knob.kind not in (int, float):
                raise SpaceError(f"{field}: {name} takes {knob.kind.__name__} values, not an int range")
            if p.low > p.high:
                raise SpaceError(f"{field}: low ({p.low}) is above high ({p.high})")
            if p.log and p.low <= 0:
                raise SpaceError(f"{field}: a log range must be above zero, but low is {p.low}")
            if p.log and p.step not in (None, 1):
                # Optuna refuses a step on a log range and KerasTuner reads it as a factor: no
                # one meaning to give it
                raise SpaceError(f"{field}: a log range takes no step (got step {p.step}); drop one of them")
            values: list[Any] = [p.low, p.high]
        elif isinstance(p, ChoiceParam):
            if not p.choices:
                raise SpaceError(f"{field}.choices: empty; give at least one value")
            if len(set(map(repr, p.choices))) != len(p.choices):
                raise SpaceError(f"{field}.choices: a value is listed twice")
            values = p.choices
        else:
            values = [p.value]
        for v in values:
            if problem := knob.problem(unspell(name, v)):
                raise SpaceError(f"{field}: {problem} ({knob.doc})")
        for parent, wanted in (p.condition or {}).items():
            if parent not in space.params:
                raise SpaceError(f"{field}.condition: unknown parameter {parent!r} (not in params)")
            if space.value_count(parent) is None:
                raise SpaceError(f"{field}.condition: {parent!r} is a continuous range; "
                                 "conditions need a choice, int or fixed parameter")
            for w in wanted if isinstance(wanted, list) else [wanted]:
                if space.params[parent].admits(w) is not None:
                    raise SpaceError(f"{field}.condition: {parent!r} never takes the value {w!r}")
    space._ordered()  # raises on cycles
    _check_start_with(space)
    _check_rungs(space)
    if space.search.final_min_epochs and space.search.time_share is None:
        raise SpaceError(f"{src}: search.final_min_epochs: a floor for the final training's share of a timed "
                         "sweep; it needs search.time_share (without one the final keeps its own epochs)")
    if len(set(space.minimize)) != len(space.minimize):
        raise SpaceError(f"{src}: minimize: an objective is listed twice")
    if space.minimize and space.search.pruner in ("hyperband", "successive_halving"):
        raise SpaceError(f"{src}: search.pruner: a multi-objective study prunes with the median rule on validation "
                         f"accuracy (Optuna's pruners are single-objective); use median or none")
    if space.search.sampler == "grid" and (problem := space.grid_problem()):
        raise SpaceError(problem)  # what check accepts must also start in sweep
    corners = math.prod(len(space.extremes(k)) for k in ARCH_KNOBS)
    if corners > MAX_CORNERS:
        raise SpaceError(f"{src}: params: {corners:,} combinations of architecture choices to check (at most "
                         f"{MAX_CORNERS:,}); fix some architecture knobs or offer fewer choices")
    for cfg in space.corners():
        try:
            architecture_stats(cfg, space.data.image_size)
        except ArchitectureError as e:
            raise SpaceError(f"{src}: params: architecture impossible: {e}") from None


def _check_start_with(space: Space) -> None:
    """Each start_with entry names searched parameters with values they can take."""
    searched = space.searched()
    for i, entry in enumerate(space.start_with):
        where = f"{space.source}: start_with[{i}]"
        for name, value in entry.items():
            if name not in space.params:
                raise SpaceError(f"{where}.{name}: not a parameter of this space")
            if name not in searched:
                raise SpaceError(f"{where}.{name}: is fixed in this space; start_with names searched parameters")
            if problem := searched[name].admits(value):
                raise SpaceError(f"{where}.{name}: {problem}")
        config = space.complete(entry)
        missing = [n for n, p in searched.items() if n not in entry and p.condition_holds(config)]
        if missing:
            raise SpaceError(f"{where}: no value for {', '.join(missing)} (a known-good configuration "
                             "names every searched parameter that applies to it)")
        for name in entry:
            if not searched[name].condition_holds(config):
                raise SpaceError(f"{where}.{name}: its condition {searched[name].condition} does not hold "
                                 "in this entry, so the value would be ignored")
        try:
            architecture_stats(config, space.data.image_size)
        except ArchitectureError as e:
            raise SpaceError(f"{where}: architecture impossible: {e}") from None


RUNG_KNOBS = ("train_images", "epochs", "batch_size", "tta", "validate")  # fidelity: data, schedule, steps, views


def _check_rungs(space: Space) -> None:
    """Each rung sets fidelity knobs only, to values they take, and each costs more than the
    one before (more images or more epochs; never fewer images, never fewer images x epochs)."""
    previous: tuple[Any, Any] | None = None
    for i, rung in enumerate(space.search.rungs):
        where = f"{space.source}: search.rungs[{i}]"
        if not rung:
            raise SpaceError(f"{where}: empty; give train_images and/or epochs")
        for name, value in rung.items():
            if name not in RUNG_KNOBS:
                raise SpaceError(f"{where}.{name}: a rung sets only {', '.join(RUNG_KNOBS)} (its fidelity)")
            if name in space.searched():
                raise SpaceError(f"{where}.{name}: {name} is searched in params, but a rung fixes it for its "
                                 "trainings; fix it in params (the final training uses that value)")
            if problem := KNOBS[name].problem(unspell(name, value)):
                raise SpaceError(f"{where}.{name}: {problem} ({KNOBS[name].doc})")
        base = space.complete({})
        size: tuple[Any, Any] = (rung.get("train_images") or float("inf"), rung.get("epochs", base["epochs"]))
        # More data may come with fewer epochs (each rung is a whole compressed training, not a
        # continuation), as long as the rung sees more images in all and never a smaller subset.
        # (Epochs alone decide between equal subsets: two all-data rungs are both infinite.)
        if previous is not None and (size[0] < previous[0] or (
                size[1] <= previous[1] if size[0] == previous[0] else size[0] * size[1] <= previous[0] * previous[1])):
            raise SpaceError(f"{where}: trains no more than rungs[{i - 1}] (images {previous[0]}, epochs "
                             f"{previous[1]}); each rung needs more images or more epochs, never fewer images "
                             "and never fewer images x epochs")
        previous = size
    if "validate" in space.params:  # outside the rungs, pruning, KerasTuner and the curves read every epoch
        raise SpaceError(f"{space.source}: params.validate: a rung's setting; set it in search.rungs (a trial "
                         "outside the rungs validates after every epoch)")
    if space.search.rungs and space.minimize:
        raise SpaceError(f"{space.source}: search.rungs: promotion ranks by validation accuracy alone; a "
                         "multi-objective study (minimize) cannot use rungs")
