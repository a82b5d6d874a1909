"""The optimizer a configuration asks for: its learning-rate schedule, bias scaling and
weight averaging. Training-only: nothing here is saved with a model (models are saved
uncompiled), so these classes never need to load anywhere else.
"""
from __future__ import annotations

WARMUP_START = 0.1  # the warm-up's default start, as a share of the peak (the lr_start knob's default)


def lr_multiplier(step, total_steps, schedule: str, warmup: float, start: float = WARMUP_START,
                  end: float = 0.0):
    """The learning rate at ``step`` as a share of the peak (a TensorFlow scalar).

    Linear warm-up over ``warmup`` of the steps (from ``start`` x the peak), then the
    schedule over the remaining steps: constant, cosine to ``end``, step (x0.1 at 50% and
    75%), or linear to ``end`` at the last step (with a warm-up: one-cycle).
    ``total_steps`` may be a variable: a re-sized training (the final's) changes it.
    """
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    total = tf.maximum(tf.cast(total_steps, tf.float32), 1.0)
    ramp = warmup * total
    after = tf.clip_by_value((step - ramp) / tf.maximum(total - ramp, 1.0), 0.0, 1.0)  # 0..1 past the warm-up
    if schedule == "cosine":
        decayed = end + (1.0 - end) * 0.5 * (1.0 + tf.cos(3.141592653589793 * after))
    elif schedule == "step":
        decayed = tf.where(after < 0.5, 1.0, tf.where(after < 0.75, 0.1, 0.01))
    elif schedule == "linear":
        decayed = 1.0 - (1.0 - end) * after
    else:
        decayed = tf.ones_like(after)
    if warmup <= 0:
        return decayed
    rising = start + (1.0 - start) * step / ramp
    return tf.where(step < ramp, rising, decayed)


def keras_rates(config: dict) -> tuple[float, float]:
    """The configured peak learning rate and weight decay in Keras' units (per step, the
    loss averaged over the batch; decoupled decay multiplied by the learning rate).

    ``hyper_units: per_1024`` gives them as airbench does, per 1,024 examples: with
    Nesterov SGD a constant gradient's step grows by 1 + 1/(1 - momentum), so airbench
    divides that gain out, and its decay is the share of a weight removed per 1,024
    examples whatever the learning rate. So lr_keras = lr x batch / (1024 x (1 + 1/(1 -
    momentum))), and wd_keras = wd / (lr x (1 - momentum)), since PyTorch's coupled decay
    passes through the momentum too (airbench94's 11.5 and 0.0153 at batch 256: 0.375 and
    0.00887). For Adam and Muon only the batch size is divided out of the learning rate.
    """
    lr, wd = config["learning_rate"], config["weight_decay"]
    if config["hyper_units"] != "per_1024":
        return lr, wd
    if config["optimizer"] != "sgd":
        return lr * config["batch_size"] / 1024, wd
    momentum = config["momentum"]
    gain = 1 + 1 / (1 - momentum)
    return lr * config["batch_size"] / (1024 * gain), (wd / (lr * (1 - momentum)) if lr else 0.0)


def _schedule(config: dict, total_steps):
    import keras

    peak, kind, warmup = keras_rates(config)[0], config["lr_schedule"], config["warmup"]
    start, end = config["lr_start"], config["lr_end"]
    if kind == "constant" and not warmup:
        return peak

    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return peak * lr_multiplier(step, total_steps, kind, warmup, start, end)

        def get_config(self):
            return {"peak": peak, "schedule": kind, "warmup": warmup, "total_steps": int(total_steps),
                    "start": start, "end": end}

    return WarmupSchedule()


def bias_variables(model) -> list:
    """Batch-norm shifts (beta): the variables bias_lr_scale speeds up."""
    return [v for v in model.trainable_variables if v.path.endswith("/beta")]


def whiten_bias(model) -> list:
    """The whitening stem's bias, when the model has the stem (whiten_bias_epochs freezes it)."""
    return [v for v in model.trainable_variables if v.path.endswith("whiten/bias")]


def _ids(variables) -> set[int]:
    # The TensorFlow backend hands update_step either the Keras variable or the tf.Variable
    # inside it: know both.
    return {id(v) for v in variables} | {id(getattr(v, "value", v)) for v in variables}


def make_optimizer(config: dict, steps_per_epoch: int, model, whiten_gate=None, total_steps=None):
    """The configured Keras optimizer for a trial of ``steps_per_epoch`` x epochs steps
    (or ``total_steps``, a variable the trainer may change: a re-sized schedule).

    ``whiten_gate`` is a scalar variable (1.0 or 0.0) that the trainer sets at each epoch's
    start; while it is 0 the whitening stem's bias does not move (whiten_bias_epochs).
    """
    import keras

    lr = _schedule(config, steps_per_epoch * config["epochs"] if total_steps is None else total_steps)
    extra = {"use_ema": True, "ema_momentum": config["ema"]} if config["ema"] else {}
    if config["optimizer"] == "sgd":
        cls, kwargs = keras.optimizers.SGD, dict(momentum=config["momentum"], nesterov=config["nesterov"])
    elif config["optimizer"] == "adamw":
        cls, kwargs = keras.optimizers.AdamW, {}
    elif config["optimizer"] == "muon":
        cls, kwargs = keras.optimizers.Muon, dict(momentum=config["momentum"], nesterov=config["nesterov"])
    else:
        cls, kwargs = keras.optimizers.Adam, {}
    decay = keras_rates(config)[1] or (None if cls is not keras.optimizers.AdamW else 0.0)
    if cls is keras.optimizers.Muon:
        decay = decay or 0.0  # Muon's own default decay is 0.004: an unset knob means none
    scale = config["bias_lr_scale"]
    gated = whiten_bias(model) if whiten_gate is not None else []
    if scale == 1.0 and not gated:
        return cls(lr, weight_decay=decay, **kwargs, **extra)
    biases = bias_variables(model)
    scaled, frozen = _ids(biases), _ids(gated)

    class Tuned(cls):  # type: ignore[valid-type,misc]  # the optimizer class chosen at run time
        """``cls`` with the batch-norm shifts' learning rate multiplied by ``scale``, and the
        whitening bias's step (gradient and learning rate) multiplied by the gate."""

        def update_step(self, gradient, variable, learning_rate):
            if id(variable) in scaled:
                learning_rate = learning_rate * scale
            if id(variable) in frozen:
                gradient, learning_rate = gradient * whiten_gate, learning_rate * whiten_gate
            return super().update_step(gradient, variable, learning_rate)

    optimizer = Tuned(lr, weight_decay=decay, **kwargs, **extra)
    if decay:
        # Biases are not decayed: a frozen whitening bias would otherwise still shrink.
        optimizer.exclude_from_weight_decay(var_list=biases + gated)
    return optimizer


LOOKAHEAD_EVERY = 5  # steps between airbench's averaging updates


def lookahead_decay(step: int, total_steps: int) -> float:
    """airbench's averaging decay at ``step``: 0.95^5 x (step / steps)^3, near 0 early on
    (the average follows the weights) and 0.77 at the end."""
    return 0.95 ** 5 * (min(step, total_steps) / max(total_steps, 1)) ** 3


def lookahead_callback(total_steps: int):
    """A Keras callback doing airbench's Lookahead-style averaging (the ``lookahead`` knob):
    every LOOKAHEAD_EVERY steps the average of all weights (batch-norm statistics included)
    moves toward the weights by 1 - decay and the weights are set to it; after the last
    step the weights are the average. Its ``total_steps`` attribute is the schedule's
    length (a re-sized training sets it)."""
    import keras
    import numpy as np
    import tensorflow as tf

    class Lookahead(keras.callbacks.Callback):
        restore = None  # (step, average arrays) from a checkpoint, set before training resumes

        def __init__(self):
            super().__init__()
            self.total_steps = total_steps

        def on_train_begin(self, logs=None):
            self.weights = [w for w in self.model.weights if w.dtype in ("float32", "float16", "bfloat16")]
            self.step, start = self.restore if self.restore else (0, [w.numpy() for w in self.weights])
            self.average = [tf.Variable(np.asarray(a), trainable=False) for a in start]

            @tf.function
            def update(decay):
                for average, weight in zip(self.average, self.weights):
                    average.assign(average + (1.0 - decay) * (tf.cast(weight.value, average.dtype) - average))
                    weight.assign(tf.cast(average, weight.dtype))

            self.update = update

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % LOOKAHEAD_EVERY == 0:
                self.update(tf.constant(lookahead_decay(self.step, self.total_steps), tf.float32))
            if self.step == self.total_steps:
                self.update(tf.constant(1.0, tf.float32))

        def state(self) -> tuple[int, list]:
            """(step, average arrays): what a checkpoint keeps to go on from here."""
            return self.step, [a.numpy() for a in self.average]

    return Lookahead()
