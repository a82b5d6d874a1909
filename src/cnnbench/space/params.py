"""The pieces of a space file: parameter types (each knows the values it admits, how many
there are, its extremes, its centre and how to describe itself) and the budget, search and
data sections.
``space.Space`` puts them together."""
from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from cnnbench.knobs import KNOBS

Scalar = Union[bool, int, float, str]

# The knobs that shape the network (each says so itself: Knob.shapes_network): their
# extremes bound its size and feasibility.
ARCH_KNOBS = tuple(name for name, knob in KNOBS.items() if knob.shapes_network)

MAX_LISTED = 10_000        # values of one parameter cnnbench will list (grids, epoch options)
MAX_GRID = 100_000         # configurations a grid search may list
MAX_CORNERS = 20_000       # architecture corner configurations checked for feasibility and size


class SpaceError(ValueError):
    """A search-space file is invalid. The message names the file, the field and the problem."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every number in a space file is finite. strict=True: a value of
    # another type is an error, not converted ("seed: true", "validation_fraction: '0.1'"),
    # as the JSON Schema editors check against says (tests/test_space_fuzz.py holds them together)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class _Param(_Strict):
    # Active only when every named parameter takes one of the listed values.
    condition: dict[str, Union[Scalar, list[Scalar]]] | None = None

    def condition_holds(self, config: dict) -> bool:
        for parent, wanted in (self.condition or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if config.get(parent) not in allowed:
                return False
        return True

    def describe(self) -> str:
        """One line for ``cnnbench check``: its values, then its condition if it has one."""
        when = " and ".join(f"{k} in {v}" if isinstance(v, list) else f"{k} = {v}"
                            for k, v in (self.condition or {}).items())
        return self._values_text() + (f"  when {when}" if when else "")

    def _values_text(self) -> str:
        raise NotImplementedError


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    def _values_text(self) -> str:
        return f"int {self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "") + \
            (" (log)" if self.log else "")

    def middle(self) -> int:
        """The centre of the range (geometric on a log range), on the step grid."""
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + round((mid - self.low) / self.step) * self.step

    def count(self) -> int | None:
        """How many values it can take (None: a continuous range)."""
        return (self.high - self.low) // self.step + 1

    def listed(self) -> list:
        """Every value it can take, smallest first (call only when ``count`` is not None)."""
        return list(range(self.low, self.high + 1, self.step))

    def extremes(self) -> list:
        """Its smallest and largest values (every value, for what has no order)."""
        return [self.low, self.high]

    def admits(self, value) -> str | None:
        """Why ``value`` is not one this parameter can take, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return f"{value!r} is not an integer"
        if not self.low <= value <= self.high or (value - self.low) % self.step:
            return f"{value!r} is not in {self.low}..{self.high}" + (f" step {self.step}" if self.step > 1 else "")
        return None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    def _values_text(self) -> str:
        return f"float {self.low:g}..{self.high:g}" + (f" step {self.step:g}" if self.step else "") + \
            (" (log)" if self.log else "")

    def middle(self) -> float:
        """The centre of the range (geometric on a log range), on the step grid."""
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + round((mid - self.low) / self.step) * self.step if self.step else mid

    def count(self) -> int | None:
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1 if self.step else None

    def listed(self) -> list:
        return [self.low + i * (self.step or 0.0) for i in range(self.count() or 0)]

    def extremes(self) -> list:
        return [self.low, self.high]

    def admits(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if not self.low <= value <= self.high:
            return f"{value!r} is not in {self.low:g}..{self.high:g}"
        return None


class ChoiceParam(_Param):
    type: Literal["choice"]
    choices: list[Scalar] = Field(max_length=1000)

    def _values_text(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))

    def middle(self) -> Scalar:
        """The middle choice, as listed."""
        return self.choices[len(self.choices) // 2]

    def count(self) -> int | None:
        return len(self.choices)

    def listed(self) -> list:
        return list(self.choices)

    def extremes(self) -> list:
        return list(dict.fromkeys(self.choices))

    def admits(self, value) -> str | None:
        # 1 == True in Python: compare types too, so a boolean never stands in for a number
        if any(value == c and type(value) is type(c) for c in self.choices):
            return None
        return f"{value!r} is not one of {', '.join(map(repr, self.choices))}"


class FixedParam(_Param):
    type: Literal["fixed"]
    value: Scalar

    def _values_text(self) -> str:
        return f"fixed {self.value}"

    def middle(self) -> Scalar:
        return self.value

    def count(self) -> int | None:
        return 1

    def listed(self) -> list:
        return [self.value]

    def extremes(self) -> list:
        return [self.value]

    def admits(self, value) -> str | None:
        return None if value == self.value else f"{value!r} is fixed at {self.value!r} in this space"


Param = Annotated[Union[IntParam, FloatParam, ChoiceParam, FixedParam], Field(discriminator="type")]


class Budget(_Strict):
    trials: int = Field(20, ge=1, le=100_000)   # finished trials (complete, pruned or failed)
    timeout_minutes: float | None = Field(None, gt=0, le=60 * 24 * 365)


class Search(_Strict):
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    # The median pruner starts pruning once this many trials have finished (Optuna's
    # n_startup_trials): 1 when the first trial is a known-good recipe to measure against.
    prune_after_trials: int = Field(3, ge=0, le=100_000)
    # Stop the search when this many trials in a row fail: the space is probably broken.
    max_consecutive_failures: int = Field(5, ge=1, le=100_000)
    # A trial lost with its process (kill -9, out of memory, a dead machine) is tried again
    # this many times.
    retries: int = Field(1, ge=0, le=100)
    # Stop rules: end the search (then do the final training) once a trial reaches this
    # validation accuracy, or after this many finished trials in a row brought no new best.
    stop_at: dict[Literal["val_accuracy"], float] | None = None
    stop_after_no_improvement: int | None = Field(None, ge=1, le=100_000)
    # Successive halving over cheap fidelities (engines/promotion.py): every configuration
    # first trains at rungs[0] (e.g. {train_images: 5000, epochs: 2}: a complete small
    # training); the best 1/reduction_factor of each rung train again at the next one; the
    # best of the last rung gets the final training on all images. Empty: every trial
    # trains at the space's own fidelity.
    rungs: list[dict[str, Scalar]] = Field([], max_length=6)
    reduction_factor: int = Field(3, ge=2, le=10)
    # A timed sweep's split: the search may use this share of the timeout, then the final
    # training of its best configuration gets as many epochs as the rest holds (a search
    # compares cheaply; the hour's accuracy comes from the one long training). None: the
    # search runs until only the final training at the space's own epochs still fits.
    time_share: float | None = Field(None, gt=0, lt=1)
    # ... but the final training keeps at least this many epochs: where the share would leave
    # it fewer (a slow CPU), the search ends sooner, or never starts when the whole timeout
    # holds no more (then Space.recipe(), the first start_with else the centre, is the final
    # training). Needs time_share. None: the share alone decides.
    final_min_epochs: int | None = Field(None, ge=1, le=1000)


class Data(_Strict):
    dataset: Literal["cifar10"] = "cifar10"
    # A local copy: image folder, cifar-10-batches-py folder or cifar-10-python.tar.gz.
    # The CNNBENCH_CIFAR10 environment variable overrides it. Relative to the space file.
    path: str | None = Field(None, max_length=4096)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    train_subset: int | None = Field(None, ge=20, le=100_000_000)  # images drawn (stratified) from train
    test_subset: int | None = Field(None, ge=10, le=100_000_000)   # images drawn (stratified) from test
    image_size: int = Field(32, ge=8, le=1024)                     # the model resizes every input to this
