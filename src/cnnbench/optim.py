"""The optimizer a configuration asks for: its learning-rate schedule, bias scaling and
weight averaging. Training-only: nothing here is saved with a model (models are saved
uncompiled), so these classes never need to load anywhere else.
"""
from __future__ import annotations

WARMUP_START = 0.1  # the warm-up starts at this share of the peak learning rate


def lr_multiplier(step, total_steps: int, schedule: str, warmup: float):
    """The learning rate at ``step`` as a share of the peak (a TensorFlow scalar).

    Linear warm-up over ``warmup`` of the steps (from WARMUP_START of the peak), then the
    schedule over the remaining steps: constant, cosine to 0, step (x0.1 at 50% and 75%),
    or linear to 0 at the last step (with a warm-up: one-cycle).
    """
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    total = float(max(total_steps, 1))
    ramp = warmup * total
    after = tf.clip_by_value((step - ramp) / max(total - ramp, 1.0), 0.0, 1.0)  # 0..1 past the warm-up
    if schedule == "cosine":
        decayed = 0.5 * (1.0 + tf.cos(3.141592653589793 * after))
    elif schedule == "step":
        decayed = tf.where(after < 0.5, 1.0, tf.where(after < 0.75, 0.1, 0.01))
    elif schedule == "linear":
        decayed = 1.0 - after
    else:
        decayed = tf.ones_like(after)
    if ramp <= 0:
        return decayed
    rising = WARMUP_START + (1.0 - WARMUP_START) * step / ramp
    return tf.where(step < ramp, rising, decayed)


def _schedule(config: dict, total_steps: int):
    import keras

    peak, kind, warmup = config["learning_rate"], config["lr_schedule"], config["warmup"]
    if kind == "constant" and not warmup:
        return peak

    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return peak * lr_multiplier(step, total_steps, kind, warmup)

        def get_config(self):
            return {"peak": peak, "schedule": kind, "warmup": warmup, "total_steps": total_steps}

    return WarmupSchedule()


def bias_variables(model) -> list:
    """Batch-norm shifts (beta): the variables bias_lr_scale speeds up."""
    return [v for v in model.trainable_variables if v.path.endswith("/beta")]


def make_optimizer(config: dict, steps_per_epoch: int, model):
    """The configured Keras optimizer for a trial of ``steps_per_epoch`` x epochs steps."""
    import keras

    lr = _schedule(config, steps_per_epoch * config["epochs"])
    extra = {"use_ema": True, "ema_momentum": config["ema"]} if config["ema"] else {}
    if config["optimizer"] == "sgd":
        cls, kwargs = keras.optimizers.SGD, dict(momentum=config["momentum"], nesterov=config["nesterov"])
    elif config["optimizer"] == "adamw":
        cls, kwargs = keras.optimizers.AdamW, {}
    else:
        cls, kwargs = keras.optimizers.Adam, {}
    decay = config["weight_decay"] or (None if cls is not keras.optimizers.AdamW else 0.0)
    scale = config["bias_lr_scale"]
    if scale == 1.0:
        return cls(lr, weight_decay=decay, **kwargs, **extra)
    biases = bias_variables(model)
    # The TensorFlow backend hands update_step either the Keras variable or the tf.Variable
    # inside it: know both.
    scaled = {id(v) for v in biases} | {id(getattr(v, "value", v)) for v in biases}

    class BiasScaled(cls):
        """``cls`` with the learning rate of the bias variables multiplied by ``scale``."""

        def update_step(self, gradient, variable, learning_rate):
            if id(variable) in scaled:
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

    optimizer = BiasScaled(lr, weight_decay=decay, **kwargs, **extra)
    if decay:
        optimizer.exclude_from_weight_decay(var_list=biases)
    return optimizer
