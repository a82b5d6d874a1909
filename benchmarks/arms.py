"""The arms ``benchmarks/run.py`` times, each called in a fresh process (no graph or
allocator state carried over from another arm). Each returns a JSON-able dict."""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import cnnbench  # noqa: E402

cnnbench.prepare()  # oneDNN and a quiet start, before TensorFlow loads
from cnnbench.training import runtime  # noqa: E402
from cnnbench.training.data import synthetic_bundle  # noqa: E402

runtime.pin_from_environment()  # a thread-setting run given its core as a sweep's worker is (threads.py)

def ref_net(policy: str, batch: int) -> dict:
    """The peer's ref-net in cnnbench's terms: the knob defaults (Adam 1e-3), one precision."""
    from cnnbench.knobs import default_config

    return {**default_config(), "precision": policy, "batch_size": batch}


def cnnbench_trial(policy: str, images: int, batch: int) -> dict:
    """cnnbench's trial path: one warm-up epoch, one timed epoch (validation not timed)."""
    from cnnbench.training.train import train_and_evaluate

    result = train_and_evaluate({**ref_net(policy, batch), "epochs": 2}, synthetic_bundle(images))
    return {"images_per_s": result.images_per_s, "precision": result.precision}


def keras_fit(policy: str, images: int, batch: int) -> dict:
    """The same network with Keras' built-in layers and a plain ``fit``, as a script would."""
    import keras
    import numpy as np

    from cnnbench.model import build_model

    data = synthetic_bundle(images)
    model = build_model(ref_net(policy, batch), dtype_policy=policy)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    y = np.eye(10, dtype=np.float32)[data.y_train]

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    model.fit(data.x_train, y, batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing
    model.fit(data.x_train, y, batch_size=batch, epochs=1, verbose=0, callbacks=[clock])
    return {"images_per_s": round(images / clock.seconds, 1)}


def default_trial_costs(images: int = 4096) -> dict:
    """Build time, first-epoch tracing and one full epoch of the default space's first
    known-good configuration, through cnnbench's trainer."""
    from cnnbench.model import build_model
    from cnnbench.space import load_space
    from cnnbench.training.train import train_and_evaluate

    import keras  # noqa: F401  (imports are counted apart, once per trial process)

    space = load_space(ROOT / "search_spaces" / "default.yaml")
    entry = space.start_with[0] if space.start_with else {}
    config = {**space.complete(entry), "epochs": 2}
    build_model({**config, "stages": 1, "widths": "8"})  # TensorFlow's own one-time start, not a trial's cost
    started = time.perf_counter()
    build_model(config)
    build = time.perf_counter() - started
    result = train_and_evaluate(config, synthetic_bundle(images))
    steady = images / result.images_per_s           # the second epoch
    first = result.train_seconds - steady           # the first: the same work plus tracing
    train_images = 45_000                           # the default split's training images
    return {"network": f"default.yaml start_with[0] ({result.flops / 1e6:.0f} MFLOPs/image, "
                       f"{result.precision})",
            "build_seconds": round(build, 2), "tracing_seconds": round(max(first - steady, 0.0), 2),
            "train_images": train_images, "epoch_seconds": round(train_images / result.images_per_s, 1)}


def process_boundary(trials: int = 10) -> dict:
    """Seconds per smoke trial trained in this process vs in cnnbench's child process (the
    same configurations, same data): what isolating each trial costs."""
    from cnnbench.training.data import load_data
    from cnnbench.training.isolation import InProcessRunner, TrialRunner
    from cnnbench.space import load_space

    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    request = (space.data, space.seed, ROOT / "search_spaces")
    configs = [space.complete({"stages": 1 + i % 2, "base_filters": 8, "batch_norm": True, "optimizer": "adam",
                               "learning_rate": 3e-3}) for i in range(trials)]
    timings = {}
    for name, runner in (("in_process", InProcessRunner(load_data(*request))), ("child", TrialRunner(request))):
        started = time.perf_counter()
        runner.run(configs[0], 0, None, lambda e, logs: None)  # start-up and first tracing, timed apart
        first = time.perf_counter() - started
        started = time.perf_counter()
        for i, config in enumerate(configs):
            runner.run(config, i, None, lambda e, logs: None)
        timings[name] = {"first_trial_s": round(first, 2), "per_trial_s": round((time.perf_counter() - started) / trials, 3)}
        runner.close()
    timings["boundary_per_trial_s"] = round(timings["child"]["per_trial_s"] - timings["in_process"]["per_trial_s"], 3)
    timings["child_start_s"] = round(timings["child"]["first_trial_s"] - timings["in_process"]["first_trial_s"], 2)
    return timings
