"""Train one configuration and measure it: the only place that calls ``fit``.

``train_and_evaluate(config, data, on_epoch, seed)`` builds the model, feeds it augmented
batches, validates after every epoch (so an engine can prune), keeps the weights of the
best epoch, and returns a ``TrialResult`` whose model is the inference model that gets
exported (float32, with test-time augmentation when the config asks for it). Engines
decide what to try; this module decides nothing about the search.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnbench.training import runtime
from cnnbench.training.data import DataBundle
from cnnbench.knobs import first_validated_epoch, unspell
# re-exported: the trainer's contract lives with the records (no TensorFlow there)
from cnnbench.trials import TRAIN_FLOPS_PER_FORWARD, PruneTrial, TrialFailed, TrialResult, best_epoch  # noqa: F401
from cnnbench.model import architecture_stats, build_model, set_whitening, with_tta
from cnnbench.training.checkpoint import Checkpointer
from cnnbench.training.optim import lookahead_callback, make_optimizer
from cnnbench.training.pipeline import images_per_epoch, steps_per_epoch, train_dataset
from cnnbench.files import temporary_name

EVAL_BATCH = 500          # inference batch; independent of the searched training batch size
WHITENING_IMAGES = 5000   # training images whose patches set the whitening stem


def evaluate_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy (no label smoothing) of predicted probabilities."""
    picked = probabilities[np.arange(len(labels)), labels]
    return {"accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
            "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())}


def _epoch_callback(on_epoch, n_train: int, evaluator, x_val, y_val, whiten_gate=None, whiten_epochs: int = 0,
                    after_epoch: Callable[[int], None] | None = None, validate_from: int = 1):
    """The trainer's per-epoch work. Without validation images (the final training on every
    training image) nothing is validated and the last epoch's weights are the result.
    Epochs before ``validate_from`` (1-based) are not validated: their logs hold no
    val_accuracy (``validate: last_epoch`` sets it to the last epoch).
    ``after_epoch(epochs_done)`` (the checkpoint) runs once the epoch is validated and kept,
    before the engine hears of it: an epoch the engine saw is one a resume can go on from.
    When ``on_epoch`` returns a number of epochs and the watcher has a ``resize(epochs)``
    (which re-sizes the schedule and returns the epochs it now has), it is called; training
    stops after the schedule's last epoch, ``stop_after``."""
    import keras

    class EpochWatcher(keras.callbacks.Callback):
        """Times training apart from validation, validates, keeps the best weights, reports."""

        def __init__(self):
            super().__init__()
            self.history, self.train_times = [], []
            self.traced: list[int] = []  # epochs (0-based) whose time includes tracing the graph
            self.best, self.best_weights = -1.0, None
            self.stop_after = math.inf  # the schedule's last epoch (set by train_and_evaluate)
            self.resize: Callable[[int], int] | None = None

        def on_train_begin(self, logs=None):
            self.traced.append(len(self.train_times))  # the first epoch of this run (a resume too)

        def on_epoch_begin(self, epoch, logs=None):
            if whiten_gate is not None:
                whiten_gate.assign(1.0 if epoch < whiten_epochs else 0.0)
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.train_times.append(time.perf_counter() - self.started)
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                raise TrialFailed(f"training loss became {loss} at epoch {epoch + 1}")
            logs = logs if logs is not None else {}
            if len(y_val) and epoch + 1 >= validate_from:
                val = evaluate_probabilities(evaluator.predict(x_val, batch_size=EVAL_BATCH, verbose=0), y_val)
                # in place: callbacks after this one (TensorBoard) see them too
                logs.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
            logs = {**{k: float(v) for k, v in logs.items()}, "epoch": epoch + 1}
            self.history.append(logs)
            if not len(y_val) or logs.get("val_accuracy", -1.0) > self.best:
                self.best, self.best_weights = logs.get("val_accuracy", -1.0), self.model.get_weights()
            if after_epoch is not None:
                after_epoch(epoch + 1)
            wanted = on_epoch(epoch + 1, logs) if on_epoch is not None else None
            if self.resize is not None and isinstance(wanted, int):
                self.stop_after = self.resize(wanted)
            if epoch + 1 >= self.stop_after:
                self.model.stop_training = True  # fit runs to the longest schedule a re-size may ask for

        def throughput(self) -> float:
            times = [t for i, t in enumerate(self.train_times) if i not in self.traced] or self.train_times
            return n_train * len(times) / max(sum(times), 1e-9)

    return EpochWatcher()


def inference_model(config: dict, trained, num_classes: int, image_size: int, mean, variance):
    """What gets saved and exported: a float32 twin of ``trained`` (bf16 is a training
    speed-up, and emulated bf16 is slow where a model is reused), with the test-time
    augmentation ``tta`` names."""
    model = build_model(config, num_classes, image_size, mean, variance, dtype_policy="float32")
    model.set_weights(trained.get_weights())
    return with_tta(model, config["tta"])


def _callbacks(config: dict, watcher, total_steps: int, log_dir: str | None) -> list:
    import keras

    # With weight averaging on, the averaged weights are swapped in for validation at every
    # epoch end (before the watcher runs) and out again when the next epoch starts.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config["ema"] else []
    if config["lookahead"]:  # before the watcher: the last epoch is validated on the average
        callbacks.append(lookahead_callback(total_steps))
    callbacks.append(watcher)
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, update_freq="epoch"))
    return callbacks


def train_and_evaluate(config: dict, data: DataBundle, on_epoch: Callable[[int, dict], None] | None = None,
                       seed: int = 0, log_dir: str | None = None, checkpoint: str | None = None,
                       stretch_to: int | None = None) -> TrialResult:
    """Train ``config`` on ``data.x_train``, validating on ``data.x_val`` after every epoch
    (when it holds images: the final training has none), or after the last one only
    (``validate: last_epoch``, a rung's setting).

    ``on_epoch(epoch, logs)`` may raise PruneTrial to stop early. Raises TrialFailed when
    training diverges. With ``log_dir``, TensorBoard logs of every epoch go there. With
    ``checkpoint`` (a file path), the training's state is written there at every epoch's end
    and, when a checkpoint of this training is already there, it goes on from that epoch
    (training/checkpoint.py); the caller deletes the file once the trial has ended.
    With ``stretch_to``, ``on_epoch`` may re-size the training by returning its new number
    of epochs (at most ``stretch_to``, at least one more than done): the learning-rate
    schedule and the weight averaging are stretched or compressed to it from the next step
    on (the final training does it once it has timed its own epochs, still in its warm-up).

    Longer than most functions here on purpose: one training read top to bottom, as
    airbench's is; its steps depend on their order (the seed before the network, the
    whitening before compiling, resuming after the callbacks exist), which helpers would hide.
    """
    import keras
    import tensorflow as tf

    tf_runtime = runtime.configure_tensorflow()
    precision = runtime.resolve_precision(config["precision"], gpus=tf_runtime["gpus"])
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow: the data order and augmentation too
    if config.get("deterministic"):
        # Process-wide and one-way: a trial process that trained one deterministic trial
        # keeps deterministic kernels for the rest of its life (it is recycled on memory only).
        tf.config.experimental.enable_op_determinism()
    data = data.training_subset(config["train_images"])
    config = {**config, **{name: unspell(name, config[name]) for name in ("flip", "tta")}}  # true/false of old
    num_classes = len(data.class_names)
    image_size = data.x_train.shape[1]
    mean, var = data.channel_stats()
    model = build_model(config, num_classes, image_size, mean, var, dtype_policy=precision, fused=True)
    whitened = config["stem"] == "whiten"
    if whitened:
        set_whitening(model, data.train_sample(WHITENING_IMAGES))
    steps = steps_per_epoch(len(data.x_train), config)
    whiten_gate = tf.Variable(1.0, trainable=False) if whitened and config["whiten_bias_epochs"] else None
    longest = max(config["epochs"], stretch_to or 0)  # what fit runs to; the watcher stops at the schedule's end
    total_steps = tf.Variable(float(steps * config["epochs"]), trainable=False)  # the schedule's length, re-sizable
    model.compile(optimizer=make_optimizer(config, steps, model, whiten_gate, total_steps),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config["label_smoothing"]))
    # Validation sees what export will see: the test-time augmentation's views.
    evaluator = with_tta(model, config["tta"])
    saver = Checkpointer(Path(checkpoint), config["epochs"]) if checkpoint else None
    watcher = _epoch_callback(on_epoch, images_per_epoch(len(data.x_train), config), evaluator, data.x_val, data.y_val, whiten_gate,
                              config["whiten_bias_epochs"], saver.after_epoch if saver else None,
                              validate_from=first_validated_epoch(config))
    callbacks = _callbacks(config, watcher, steps * config["epochs"], log_dir)
    watcher.stop_after = config["epochs"]

    def resize(epochs: int) -> int:
        epochs = min(max(epochs, len(watcher.history) + 1), longest)
        total_steps.assign(float(steps * epochs))
        for callback in callbacks:
            if hasattr(callback, "total_steps"):  # the weight averaging's decay follows the schedule
                callback.total_steps = steps * epochs
        if saver is not None:  # its checkpoint says the new length: a resume goes on with it
            saver.schedule_epochs = epochs
            saver.after_epoch(len(watcher.history))
        return epochs

    watcher.resize = resize if stretch_to else None
    first_epoch = saver.resume(model, watcher, callbacks) if saver else 0
    stats = architecture_stats(config, image_size, num_classes)

    def result(with_model) -> TrialResult:
        best = best_epoch(watcher.history)
        return TrialResult(
            val_accuracy=best.get("val_accuracy"), val_loss=best.get("val_loss"), best_epoch=best["epoch"],
            epochs_run=len(watcher.history), train_seconds=round(sum(watcher.train_times), 2),
            images_per_s=round(watcher.throughput(), 1), parameter_count=stats.params, flops=stats.flops,
            precision=precision, train_images=len(data.y_train), history=watcher.history, model=with_model,
            resumed_from_epoch=saver.resumed_from if saver else [],
            resumed_checkpoint_at=saver.resumed_at if saver else None)

    try:
        if first_epoch < config["epochs"]:
            model.fit(train_dataset(data.x_train, data.y_train, config, num_classes, seed, first_epoch, longest),
                      epochs=longest, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=0,
                      shuffle=False, callbacks=callbacks)  # the dataset shuffles itself
    except PruneTrial as pruned:
        pruned.result = result(None)  # the leaderboard still shows how far it got
        raise
    model.set_weights(watcher.best_weights)
    exported = inference_model(config, model, num_classes, image_size, mean, var)
    done = result(exported)
    done.latency_ms = latency_ms(exported, data.x_val if len(data.x_val) else data.x_train)
    return done


LATENCY_BATCH = 64


def latency_ms(model, images: np.ndarray, rounds: int = 3) -> float:
    """Milliseconds per image to classify a batch of LATENCY_BATCH images with ``model`` here
    (median of ``rounds`` after a warm-up): the cost axis of accuracy/latency fronts."""
    batch = images[:LATENCY_BATCH]
    model.predict_on_batch(batch)  # warm-up: tracing
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - started)
    return round(1000 * sorted(times)[len(times) // 2] / len(batch), 4)


def save_model(model, path) -> None:
    """Save the inference graph only (no optimizer state), atomically."""
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    inference = keras.Model(model.inputs, model.outputs, name=model.name)  # uncompiled: no optimizer
    tmp = temporary_name(path, keep_suffix=True)
    try:
        inference.save(tmp)
        tmp.replace(path)
    except BaseException:  # a full disk, a signal: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise
