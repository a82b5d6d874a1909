"""Every knob a configuration has: its type, allowed values, default and meaning.

A *configuration* (``config``) is a plain ``dict`` holding one concrete value for each knob
below. A search space names some knobs and says which values to try; every knob it does
not name keeps its default here. ``model.py`` and ``train.py`` read configs; nothing else
defines what a knob means.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
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
    maximum: float | None = None    # inclusive upper bound: what cnnbench can build and train at all
    check: Callable[[Any], str | None] | None = None  # any further rule; returns the problem
    shapes_network: bool = False    # changes the layers or their sizes (so the parameter count)

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
        number: Any = value  # an int or a float by now, for the bounds below
        if self.minimum is not None and number < self.minimum:
            return f"{value!r} is below the minimum {self.minimum}"
        if self.below is not None and number >= self.below:
            return f"{value!r} must be below {self.below}"
        if self.maximum is not None and number > self.maximum:
            return f"{value!r} is above the maximum {self.maximum}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value!r} is not a finite number"
        return self.check(value) if self.check else None


def _widths_problem(value: str) -> str | None:
    if value and not re.fullmatch(r"[1-9][0-9]{0,3}(-[1-9][0-9]{0,3}){0,9}", value):
        return (f"{value!r} is not a list of widths like '64-128-256' (at most 10 numbers from 1 to 9999, "
                "joined by '-')")
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else f"{value!r} must be above 0"


def _network(*args, **kwargs) -> Knob:
    """A knob that shapes the network: the space's feasibility check builds its corners."""
    return Knob(*args, **{**kwargs, "shapes_network": True})


KNOBS: dict[str, Knob] = {
    # --- architecture -------------------------------------------------------------------
    "stem": _network(str, "none", "what the image meets first: nothing, or 'whiten': a frozen 2x2 conv whose 24 "
                 "filters whiten the training images' 2x2 patches (their PCA, +/-; airbench), then the activation",
                 ("none", "whiten")),
    "stages": _network(int, 3, "conv stages; each has one 2x2 pooling (halves the size)", minimum=1, maximum=10),
    "convs_per_stage": _network(int, 2, "conv layers in each stage (before any residual unit)", minimum=1,
                            maximum=32),
    "base_filters": _network(int, 32, "filters in the first stage", minimum=1, maximum=8192),
    "filter_growth": _network(float, 2.0, "filters multiply by this from one stage to the next", minimum=1.0,
                          maximum=16.0),
    "max_filters": _network(int, 512, "cap on filters in any stage", minimum=1, maximum=8192),
    "widths": _network(str, "", "filters of each stage, e.g. '64-256-256' (one per stage); when set, base_filters, "
                   "filter_growth and max_filters are not used", check=_widths_problem),
    "kernel_size": _network(int, 3, "conv kernel side, pixels", minimum=1, maximum=31),
    "padding": _network(str, "same", "conv padding: 'valid' shrinks each side by kernel_size-1", ("same", "valid")),
    "pool_after": _network(str, "last_conv", "where each stage's pooling sits: after its last conv (VGG), or after "
                       "its first, so the stage's other convs run on a quarter of the pixels (ResNet-9, airbench)",
                       ("last_conv", "first_conv")),
    "residual": _network(bool, False, "a residual unit after each stage's pooling: its input plus two more 3x3 "
                     "'same' convs of the stage's width (ResNet-9)"),
    "batch_norm": _network(bool, True, "batch norm after every conv (the conv then has no bias)"),
    "bn_scale": _network(bool, True, "batch norm learns a per-channel scale as well as a shift (airbench: no)"),
    "bn_momentum": Knob(float, 0.9, "batch norm moving-statistics momentum; short CPU runs want it low so the "
                        "statistics settle within a few hundred steps (airbench: 0.6)", minimum=0.0, below=1.0),
    "dirac_init": Knob(bool, False, "initialise every 3x3 conv as the identity on its first channels: an implicit "
                       "residual path at the start of training (airbench)"),
    "activation": Knob(str, "relu", "activation after every conv and hidden dense layer",
                       ("relu", "gelu", "silu", "elu")),
    "pooling": Knob(str, "max", "2x2 pooling of each stage", ("max", "avg")),
    "pool_last_stage": _network(bool, True, "pool in the last stage too (the tutorial CNN does not)"),
    "head": _network(str, "global_avg", "how the last feature map becomes a vector",
                 ("global_avg", "global_max", "flatten")),
    "conv_dropout": Knob(float, 0.0, "dropout rate at the end of each stage", minimum=0.0, below=1.0),
    "dense_units": _network(int, 0, "width of the hidden dense layer; 0 means none", minimum=0, maximum=65536),
    "dropout": Knob(float, 0.0, "dropout rate before the classifier", minimum=0.0, below=1.0),
    "logit_scale": Knob(float, 1.0, "the classifier's outputs are multiplied by this before the softmax "
                        "(airbench: 1/9, a gentler start)", maximum=1000.0, check=_positive),
    # --- optimisation -------------------------------------------------------------------
    "optimizer": Knob(str, "adam", "optimizer; in Keras 3 'adam' with a weight_decay is AdamW (decoupled decay), "
                      "so 'adamw' differs only in its default decay; 'muon' is Keras' Muon (orthogonalised "
                      "momentum for conv and dense kernels, AdamW for the rest)", ("adam", "adamw", "sgd", "muon")),
    "learning_rate": Knob(float, 1e-3, "peak learning rate: per step with the loss averaged over the batch, or per "
                          "1,024 examples when hyper_units is per_1024", minimum=0.0, maximum=100.0),
    "hyper_units": Knob(str, "keras", "how learning_rate and weight_decay are given: 'keras' (per step; decay "
                        "multiplies weights by 1 - lr x decay each step) or 'per_1024' (airbench's: per 1,024 "
                        "examples, decoupled from momentum and batch size; SGD only), converted to Keras' units "
                        "by optim.keras_rates", ("keras", "per_1024")),
    "momentum": Knob(float, 0.9, "SGD momentum (sgd only)", minimum=0.0, below=1.0),
    "nesterov": Knob(bool, False, "Nesterov momentum (sgd only)"),
    "weight_decay": Knob(float, 0.0, "decoupled weight decay: each step multiplies weights by "
                         "(1 - learning_rate x weight_decay), as Keras applies it", minimum=0.0, maximum=10.0),
    "bias_lr_scale": Knob(float, 1.0, "learning-rate multiplier for batch-norm shifts (beta), which are then "
                          "not weight-decayed (airbench: 64)", maximum=10_000.0, check=_positive),
    "lr_schedule": Knob(str, "constant", "learning rate after the warm-up: constant, cosine to 0, step (x0.1 at "
                        "50% and 75%), or linear to 0 at the trial's last step", ("constant", "cosine", "step", "linear")),
    "warmup": Knob(float, 0.0, "share of the trial's steps over which the learning rate rises linearly from a "
                   "tenth of its peak to the peak; with lr_schedule linear this is one-cycle", minimum=0.0, below=1.0),
    "batch_size": Knob(int, 128, "images per step", minimum=1, maximum=65536),
    "drop_last": Knob(bool, False, "each epoch drops its last partial batch, as airbench's loader does: every "
                      "step is a full batch and an epoch is images // batch_size steps (a different batch "
                      "left out each epoch, since the order is reshuffled)"),
    "epochs": Knob(int, 10, "passes over the training split; the schedule is the trial's own, so fewer epochs "
                   "are a complete shorter training, not the start of a longer one", minimum=1, maximum=10_000),
    "train_images": Knob(int, 0, "train on this many training images, a stratified subset that is the same for "
                         "every trial of that size (a cheap fidelity); 0 = all of them. The final training "
                         "always uses all", minimum=0, maximum=100_000_000),
    "label_smoothing": Knob(float, 0.0, "label smoothing of the cross-entropy", minimum=0.0, below=1.0),
    "ema": Knob(float, 0.0, "average the weights over steps with this decay (e.g. 0.99; 0 = off); validation, "
                "test and the exported model use the averaged weights", minimum=0.0, below=1.0),
    "lookahead": Knob(bool, False, "airbench's weight averaging: every 5 steps an average of all weights (batch-norm "
                      "statistics too) moves toward them by 1 - d, d = 0.95^5 x (step/steps)^3, and the weights jump "
                      "to it; the last step ends on the average"),
    "lr_start": Knob(float, 0.1, "the warm-up starts at this share of the peak learning rate (airbench: 0.2)",
                     minimum=0.0, maximum=1.0),
    "lr_end": Knob(float, 0.0, "linear and cosine schedules end at this share of the peak (airbench: 0.07)",
                   minimum=0.0, maximum=1.0),
    "whiten_bias_epochs": Knob(int, 0, "with the whitening stem: its bias trains for this many epochs, then stays "
                               "fixed (airbench: 3); 0 = it trains throughout", minimum=0, maximum=10_000),
    # --- augmentation (training only; never in the exported model) ----------------------
    "flip": Knob(str, "off", "horizontal flip: 'random' (each image, each epoch, a coin), or 'alternating' "
                 "(airbench: a coin once per image, then every image mirrored every other epoch, so each pair "
                 "of epochs sees both); true/false mean random/off", ("off", "random", "alternating")),
    "translate": Knob(int, 0, "random translation up to this many pixels (edges reflected)", minimum=0,
                      maximum=64),
    # --- evaluation ------------------------------------------------------------------------
    "tta": Knob(str, "off", "test-time augmentation, built into validation, test and the exported model: "
                "'mirror' averages each image and its mirror (2 views); 'mirror_translate' also the mirror pair "
                "shifted 1 px up-left and 1 px down-right, weighted 1/2, 1/4, 1/4 (airbench's 6 views); "
                "true/false mean mirror/off", ("off", "mirror", "mirror_translate")),
    "validate": Knob(str, "every_epoch", "when a run with validation images validates: after 'every_epoch' (what "
                     "pruning, the progress line and the learning curves read), or after its 'last_epoch' only, "
                     "a rung's setting (search.rungs): a rung run is a whole compressed training scored at its "
                     "end, and validating its earlier epochs cost a tenth of a first-rung run",
                     ("every_epoch", "last_epoch")),
    # --- numerics -----------------------------------------------------------------------
    "precision": Knob(str, "auto", "compute dtype policy: auto = mixed_bfloat16 where the CPU has native bf16 "
                      "(AMX or AVX512_BF16), float32 elsewhere", ("auto", "float32", "mixed_bfloat16")),
    "deterministic": Knob(bool, False, "TensorFlow's op determinism: the same configuration and seed give the same "
                          "figures, bit for bit, on one machine (the space's top-level deterministic: true sets it)"),
}


def default_config() -> dict[str, Any]:
    """A configuration with every knob at its default."""
    return {name: knob.default for name, knob in KNOBS.items()}


def knob_defaults_hash() -> str:
    """A short hash of every knob's default: a space names only what it sets, so a changed
    default changes what a resumed study's new trials would train."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(default_config(), sort_keys=True, default=str).encode()).hexdigest()[:16]


# Knobs that were booleans before they had more than two settings: a space file's (or an
# old record's) true/false still means what it meant.
BOOLEAN_SPELLINGS = {"flip": {True: "random", False: "off"}, "tta": {True: "mirror", False: "off"}}
TTA_VIEWS = {"off": 1, "mirror": 2, "mirror_translate": 6}  # forward passes per evaluated image


def first_validated_epoch(config: dict) -> int:
    """The first epoch (1-based) a run with validation images validates after: 1, or its
    last with ``validate: last_epoch`` (the trainer validates from there; the deadline prices
    that many passes)."""
    return config["epochs"] if config.get("validate") == "last_epoch" else 1


def unspell(name: str, value: Any) -> Any:
    """A former boolean knob's true/false (or KerasTuner's 0/1) as the setting it names."""
    if name in BOOLEAN_SPELLINGS and type(value) in (bool, int) and value in (0, 1):
        return BOOLEAN_SPELLINGS[name][bool(value)]
    return value


def coerce(name: str, value: Any) -> Any:
    """``value`` as the Python type of knob ``name`` (YAML may give 1 for 1.0, or 2.0 for 2)."""
    value = unspell(name, value)
    kind = KNOBS[name].kind
    if kind is bool and isinstance(value, int):  # KerasTuner hands booleans back as 0/1
        return bool(value)
    if kind is float and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
