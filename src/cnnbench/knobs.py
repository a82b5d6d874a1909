"""Every knob a configuration has: its type, allowed values, default and meaning.

A *configuration* (``config``) is a plain ``dict`` holding one concrete value for each knob
below. A search space names some knobs and says which values to try; every knob it does
not name keeps its default here. ``model.py`` and ``train.py`` read configs; nothing else
defines what a knob means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    kind: type                      # int, float, bool or str
    default: Any
    doc: str
    choices: tuple = ()             # allowed values for str knobs
    minimum: float | None = None    # inclusive lower bound for numbers
    below: float | None = None      # exclusive upper bound for numbers

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a valid setting of this knob, or None when it is."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not self.kind:
            return f"{value!r} is not {self.kind.__name__}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        if self.minimum is not None and value < self.minimum:
            return f"{value!r} is below the minimum {self.minimum}"
        if self.below is not None and value >= self.below:
            return f"{value!r} must be below {self.below}"
        return None


KNOBS: dict[str, Knob] = {
    # --- architecture -------------------------------------------------------------------
    "stages": Knob(int, 3, "conv stages; each ends with a 2x2 pooling (halves the size)", minimum=1),
    "convs_per_stage": Knob(int, 2, "conv layers in each stage", minimum=1),
    "base_filters": Knob(int, 32, "filters in the first stage", minimum=1),
    "filter_growth": Knob(float, 2.0, "filters multiply by this from one stage to the next", minimum=1.0),
    "max_filters": Knob(int, 512, "cap on filters in any stage", minimum=1),
    "kernel_size": Knob(int, 3, "conv kernel side, pixels", minimum=1),
    "padding": Knob(str, "same", "conv padding: 'valid' shrinks each side by kernel_size-1", ("same", "valid")),
    "batch_norm": Knob(bool, True, "batch norm after every conv (the conv then has no bias)"),
    "activation": Knob(str, "relu", "activation after every conv and hidden dense layer",
                       ("relu", "gelu", "silu", "elu")),
    "pooling": Knob(str, "max", "2x2 pooling at the end of each stage", ("max", "avg")),
    "pool_last_stage": Knob(bool, True, "pool after the last stage too (the tutorial CNN does not)"),
    "head": Knob(str, "global_avg", "how the last feature map becomes a vector", ("global_avg", "flatten")),
    "conv_dropout": Knob(float, 0.0, "dropout rate after each stage's pooling", minimum=0.0, below=1.0),
    "dense_units": Knob(int, 0, "width of the hidden dense layer; 0 means none", minimum=0),
    "dropout": Knob(float, 0.0, "dropout rate before the classifier", minimum=0.0, below=1.0),
    # --- optimisation -------------------------------------------------------------------
    "optimizer": Knob(str, "adam", "optimizer", ("adam", "adamw", "sgd")),
    "learning_rate": Knob(float, 1e-3, "peak learning rate", minimum=0.0),
    "momentum": Knob(float, 0.9, "SGD momentum (sgd only)", minimum=0.0, below=1.0),
    "nesterov": Knob(bool, False, "Nesterov momentum (sgd only)"),
    "weight_decay": Knob(float, 0.0, "decoupled weight decay, per step, as Keras applies it", minimum=0.0),
    "lr_schedule": Knob(str, "constant", "learning-rate schedule over all steps: constant, cosine to 0, "
                        "or step (x0.1 at 50% and 75%)", ("constant", "cosine", "step")),
    "batch_size": Knob(int, 128, "images per step", minimum=1),
    "epochs": Knob(int, 10, "passes over the training split", minimum=1),
    "label_smoothing": Knob(float, 0.0, "label smoothing of the cross-entropy", minimum=0.0, below=1.0),
    # --- augmentation (training only; never in the exported model) ----------------------
    "flip": Knob(bool, False, "random horizontal flip"),
    "translate": Knob(int, 0, "random translation up to this many pixels (pad + random crop)", minimum=0),
    # --- numerics -----------------------------------------------------------------------
    "precision": Knob(str, "float32", "compute dtype policy; mixed_bfloat16 uses AMX/bf16 units",
                      ("float32", "mixed_bfloat16")),
}


def default_config() -> dict[str, Any]:
    """A configuration with every knob at its default."""
    return {name: knob.default for name, knob in KNOBS.items()}


def coerce(name: str, value: Any) -> Any:
    """``value`` as the Python type of knob ``name`` (YAML may give 1 for 1.0, or 2.0 for 2)."""
    kind = KNOBS[name].kind
    if kind is bool and isinstance(value, int):  # KerasTuner hands booleans back as 0/1
        return bool(value)
    if kind is float and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
