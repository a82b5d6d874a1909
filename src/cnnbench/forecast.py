"""What a training will cost on this machine, forecast before it starts: a trial's wall time
from its FLOPs per image (counted on paper), the images it will see (training x epochs, plus
validation after every epoch) and the training FLOPs per second this machine reached in
finished trials (throughput.py); and the margins the deadline (deadline.py) and the plan
(plan.py) keep on top of those forecasts.
"""
from __future__ import annotations

import math

from cnnbench.knobs import TTA_VIEWS, first_validated_epoch, unspell
from cnnbench.model import architecture_stats
from cnnbench.trials import TRAIN_FLOPS_PER_FORWARD as TRAIN_COST  # a training image: ~3 forward passes

SETUP_SECONDS = 15.0  # building, compiling and tracing a trial before its first step
SAFETY = 1.15         # forecasts run this much long: finishing early is cheaper than overrunning
# The final training, when the full margin would cost it an epoch, keeps only this one: an
# epoch less is a certain loss (a measured Zen 3 hour lost its 8th epoch and 15 minutes to a final that
# missed its 8 epochs by 16 seconds), while the margin covers an error the speed measured on
# this machine seldom has; each epoch's end still checks the deadline.
FINAL_SAFETY = 1.05
EXPORT_SECONDS = 45.0 # ranking, loading the best model, saving the card, on top of its test pass
DEPLOY_SECONDS = 60.0  # converting to ONNX and LiteRT, starting the check process, latency runs
MAX_FILL_EPOCHS = 1000  # --recipe-only: the longest schedule a timeout is filled with
# A final training filling the time is sized before it starts from the log's speed for
# networks of its size, then re-sized once it has timed its own second epoch (still in its
# warm-up), up to this many times the epochs it started with: the log's speed is a median
# over days and networks within a factor of two: a measured Zen 4 --recipe-only hour
# (ee70497) took 112 s an epoch where 127 were planned and left 8.9 of its minutes unused.
STRETCH = 1.5
RESIZE_AFTER = 2  # ... after this epoch: the first one's time includes tracing the graph
# search.final_min_epochs: the search ends this much before the floor's last moment, for what
# runs between its last run and the final's sizing (the engine's end, reading the records)
FLOOR_SLACK = 30.0


def stretch_limit(config: dict) -> int | None:
    """The most epochs a final training of ``config`` filling the time may be re-sized to
    (STRETCH times its own), or None when it is not re-sized: only while its epoch
    RESIZE_AFTER lies in its warm-up, where a new length changes no more than the slope of
    the ramp still to come (the rate steps down a little when it grows); past the warm-up
    it would move a decaying rate up or down, or undo a step schedule's drops."""
    if config.get("warmup", 0.0) * config["epochs"] <= RESIZE_AFTER:
        return None
    return math.ceil(config["epochs"] * STRETCH)


def forward_images(config: dict, n_train: int, n_val: int) -> float:
    """Forward-pass equivalents of images one trial processes: training x 3, validation
    after each epoch, or the last only (times the test-time augmentation's views)."""
    n_train = min(n_train, config.get("train_images") or n_train)
    validations = config["epochs"] - first_validated_epoch(config) + 1
    return (config["epochs"] * n_train * TRAIN_COST
            + validations * n_val * TTA_VIEWS[unspell("tta", config["tta"])])


def trial_seconds(config: dict, n_train: int, n_val: int, flops_per_s: float, image_size: int = 32,
                  num_classes: int = 10) -> float:
    """Forecast wall seconds of one trial of ``config`` at ``flops_per_s`` training FLOPs/s."""
    flops = architecture_stats(config, image_size, num_classes).flops
    return SAFETY * (SETUP_SECONDS + forward_images(config, n_train, n_val) * flops / flops_per_s)
