"""Search-space files: YAML -> validated, frozen ``Space`` objects.

A space file is data, not code. It is parsed once here; engines only translate the
resulting ``Space``. Every problem is reported as ``SpaceError("FILE: FIELD: PROBLEM")``
before anything runs or is written.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from cnnbench.space import safe_yaml
from cnnbench.space.params import (Budget, ChoiceParam, Data, FixedParam, FloatParam, IntParam, Param, Scalar,  # noqa: F401 (re-exported)
                                   Search, SpaceError, _Strict)
from cnnbench.space.params import ARCH_KNOBS, MAX_CORNERS, MAX_GRID, MAX_LISTED  # noqa: F401 (re-exported)
from cnnbench.knobs import KNOBS, coerce, default_config
from cnnbench.model import architecture_stats

_OTHER = object()           # "a value no condition names", when counting conditional branches


class Space(_Strict):
    description: str = Field("", max_length=10_000)
    seed: int = Field(0, ge=0, lt=2**31)  # what every sampler, numpy and TensorFlow accept
    objective: Literal["val_accuracy"] = "val_accuracy"
    # Costs minimised beside validation accuracy: a multi-objective study (Optuna), whose
    # Pareto-optimal trials the leaderboard marks. Empty: accuracy alone.
    minimize: list[Literal["parameter_count", "flops", "latency_ms"]] = Field([], max_length=3)
    budget: Budget = Budget()
    search: Search = Search()
    data: Data = Data()
    params: dict[str, Param]
    # Known-good configurations (a value for every searched parameter that applies) tried
    # before the engine samples anything: a sweep never ends below its best known recipe.
    start_with: list[dict[str, Scalar]] = []
    # After the search, train the best configuration once more on train + validation and
    # export that model (final.py). A space of one configuration has nothing to choose: it
    # goes straight to that training.
    final: bool = True
    # Repeatable trials: TensorFlow's op determinism in every trial (the deterministic knob),
    # so a configuration and seed give the same per-epoch figures on one machine.
    deterministic: bool = False
    # Set by load_space, not by the file.
    source: str = Field("", exclude=True)

    @field_validator("params")
    @classmethod
    def _known_knobs(cls, params: dict) -> dict:
        for name in params:
            if name not in KNOBS:
                raise ValueError(f"unknown parameter {name!r}; known: {', '.join(KNOBS)}")
        return params

    # ---- what the engines and commands use ------------------------------------------------
    def searched(self) -> dict[str, Param]:
        """Parameters with more than one value, parents before the parameters they condition."""
        return {n: p for n, p in self._ordered().items() if not isinstance(p, FixedParam)}

    def complete(self, values: dict[str, Any]) -> dict[str, Any]:
        """A full configuration: knob defaults, then fixed values, then ``values``.

        Conditional parameters whose condition fails keep their default.
        """
        config = default_config()
        for name, param in self._ordered().items():
            if not param.condition_holds(config):
                continue
            if isinstance(param, FixedParam):
                config[name] = coerce(name, param.value)
            elif name in values:
                config[name] = coerce(name, values[name])
        if self.deterministic:
            config["deterministic"] = True
        return config

    def value_count(self, name: str) -> int | None:
        """How many values parameter ``name`` can take (arithmetic), or None for a continuous range."""
        return self.params[name].count()

    def candidate_values(self, name: str) -> list | None:
        """Every value parameter ``name`` can take, or None for a continuous range. Listing is
        for grids and epoch options; a parameter with more than MAX_LISTED values is refused."""
        count = self.value_count(name)
        if count is None:
            return None
        if count > MAX_LISTED:
            raise SpaceError(f"{self.source}: params.{name}: {count:,} values is more than cnnbench lists "
                             f"({MAX_LISTED:,}) for a grid or an epoch choice; use a wider step or fewer values")
        return self.params[name].listed()

    def centre(self) -> dict[str, Any]:
        """A value for every searched parameter that applies: the centre of each range, the
        middle choice. The configuration trained when nothing else can be (no search trial
        fits the deadline and the space names no start_with recipe)."""
        values: dict[str, Any] = {}
        for name, p in self.searched().items():
            if p.condition_holds(self.complete(values)):
                values[name] = p.middle()
        return values

    def recipe(self) -> dict[str, Any]:
        """The values trained when no search trial can be (a slow machine, or a timeout whose
        search.final_min_epochs leaves no search, or --recipe-only): the first start_with
        recipe, the parameters it does not name at the centre; else the centre. The plan and
        the final training's floor are priced on them before any trial has finished."""
        return {**self.centre(), **(self.start_with[0] if self.start_with else {})}

    def recipe_config(self) -> dict[str, Any]:
        """The recipe as a full configuration (``complete``): the network the plan prices."""
        return self.complete(self.recipe())

    def rung_config(self, rung: int | None) -> dict[str, Any]:
        """The configuration values a run at successive-halving ``rung`` trains with (none
        without rungs): its fidelity (train_images, epochs, batch_size, tta, validate)."""
        return dict(self.search.rungs[rung]) if rung is not None and self.search.rungs else {}

    def rung_name(self, rung: int) -> str:
        """``rung 1 (15,000 images, 4 epochs)``, for notes and the progress line."""
        setting = self.search.rungs[rung]
        images = setting.get("train_images")
        parts = [f"{images:,} images" if images else "all images"]
        if "epochs" in setting:
            parts.append(f"{setting['epochs']} epochs")
        return f"rung {rung} ({', '.join(parts)})"

    def epoch_options(self) -> list[int]:
        """Epoch counts a trial may be given when the space searches ``epochs`` (else [])."""
        p = self.params.get("epochs")
        if p is None or isinstance(p, FixedParam):
            return []
        values = self.candidate_values("epochs")
        return sorted({int(v) for v in values}) if values else []

    def extremes(self, name: str) -> list:
        """The smallest and largest values of a parameter (all values for non-numbers)."""
        p = self.params.get(name)
        return [KNOBS[name].default] if p is None else p.extremes()

    def grid_problem(self) -> str | None:
        """Why a grid search cannot run over this space (a continuous range, or a grid too
        large to list), or None."""
        total = 1
        for name in self.searched():
            count = self.value_count(name)
            if count is None:
                return (f"{self.source}: params.{name}: a grid search needs a finite space, but this is a "
                        "continuous float range (give it a step, or use choices)")
            total *= count
        if total > MAX_GRID:
            return f"{self.source}: params: a grid of {total:,} configurations is more than cnnbench lists ({MAX_GRID:,})"
        return None

    def size(self) -> int | None:
        """Number of distinct configurations, or None when a float range is searched.

        Counted, never listed: each condition parent's values fall into classes (each value
        a condition names, and "any other"), and only those classes are combined.
        """
        if any(self.value_count(n) is None for n in self.params):
            return None
        parents = sorted({k for p in self.params.values() for k in (p.condition or {})})
        classes = []
        for parent in parents:
            named: list[Any] = []
            for p in self.params.values():
                wanted = (p.condition or {}).get(parent, [])
                for w in wanted if isinstance(wanted, list) else [wanted]:
                    if not any(w == v and type(w) is type(v) for v in named):
                        named.append(w)
            rest = (self.value_count(parent) or 0) - len(named)  # value_count is None only for a float range
            classes.append([(v, 1) for v in named] + ([(_OTHER, rest)] if rest > 0 else []))
        total = 0
        for combo in itertools.product(*classes):
            assignment = {parent: value for parent, (value, _) in zip(parents, combo)}
            count = math.prod(weight for _, weight in combo)
            for name, p in self.params.items():
                if name not in assignment and p.condition_holds(assignment):
                    count *= self.value_count(name) or 0
            total += count
        return total

    def param_range(self) -> tuple[int, int]:
        """Smallest and largest parameter count over the space (corners of every size knob)."""
        counts = [architecture_stats(cfg, self.data.image_size).params for cfg in self.corners()]
        return min(counts), max(counts)

    def fingerprint(self) -> str:
        """Short hash of the validated space; equal spaces hash equal whatever their comments.

        Values left at their defaults are not hashed, so a new optional field in a later
        version of the format does not orphan existing studies.
        """
        canonical = json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # ---- internals ---------------------------------------------------------------------------
    def corners(self):
        """Configurations at the extremes of every architecture knob: they bound the sizes."""
        base = self.complete({})
        for combo in itertools.product(*(self.extremes(k) for k in ARCH_KNOBS)):
            cfg = dict(base)
            cfg.update({k: coerce(k, v) for k, v in zip(ARCH_KNOBS, combo)})
            # A conditional knob whose condition fails keeps its default, as in complete():
            # kernel_size 9 only under padding 'same' must not be tried with 'valid'.
            for name, param in self._ordered().items():
                if name in ARCH_KNOBS and param.condition and not param.condition_holds(cfg):
                    cfg[name] = KNOBS[name].default
            yield cfg

    def _ordered(self) -> dict[str, Param]:
        done: dict[str, Param] = {}
        pending = dict(self.params)
        while pending:
            ready = [n for n, p in pending.items() if all(k in done for k in (p.condition or {}))]
            if not ready:
                raise SpaceError(f"{self.source}: params: conditions form a cycle among {', '.join(pending)}")
            for n in ready:
                done[n] = pending.pop(n)
        return done


def load_space(path: str | Path) -> Space:
    """Read and validate a space file. Raises SpaceError naming file, field and problem."""
    path = Path(path)
    try:
        raw = safe_yaml.load(path)
    except IsADirectoryError:
        raise SpaceError(f"{path}: a folder, not a space file") from None
    except OSError as e:
        raise SpaceError(f"{path}: cannot read: {e.strerror or e}") from None
    except safe_yaml.YamlProblem as e:
        raise SpaceError(f"{path}: {e}") from None
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "<space>") -> Space:
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: the file must be a mapping with a 'params' key")
    from cnnbench.space.rules import check_semantics, first_error  # rules reads a Space: it comes after

    try:
        space = Space.model_validate({**raw, "source": source})
    except ValidationError as e:
        raise SpaceError(first_error(source, e)) from None
    check_semantics(space)
    return space
