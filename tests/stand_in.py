"""Stand-ins for engine tests: a trainer that needs no TensorFlow, a silent progress
display, and a StudyJob built around them. Everything else (run_trial, the records, the
engines and their storages) is real."""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np

from cnnbench import engines
from cnnbench.deadline import Deadline
from cnnbench.forecast import FINAL_SAFETY
from cnnbench.engines.base import SilentProgress, StudyJob
from cnnbench.training.isolation import InProcessRunner
from cnnbench.trials import TrialResult
from cnnbench.trials import StudyPaths, read_records


SEEN: list = []  # (seed, (train images, validation images)) of every fake_train call, in-process


def fake_train(config, data, on_epoch, seed, stretch_to=None):
    """Accuracy grows with the learning rate's closeness to 1e-2; sgd always crashes. With
    ``stretch_to`` it is re-sized as cnnbench's trainer is: to the epochs ``on_epoch``
    returns (at least one more than done, at most ``stretch_to``)."""
    if config["optimizer"] == "sgd":
        raise ValueError("sgd broken on purpose")
    quality = 1.0 / (1.0 + abs(np.log10(config["learning_rate"]) + 2))
    history, epochs, epoch = [], config["epochs"], 0
    while epoch < epochs:
        epoch += 1
        acc = quality * epoch / epochs
        history.append({"val_accuracy": acc})
        wanted = on_epoch(epoch, {"val_accuracy": acc, "loss": 1.0})
        if stretch_to and isinstance(wanted, int):
            epochs = min(max(wanted, epoch + 1), stretch_to)
    SEEN.append((seed, None if data is None else (len(data.x_train), len(data.x_val))))
    return TrialResult(val_accuracy=acc, val_loss=1 - acc, best_epoch=epoch, epochs_run=epoch, train_seconds=0.1,
                       images_per_s=1000.0, parameter_count=10, flops=20, history=history, model=None)


HOARD: list = []  # what hoarding_train keeps alive in its (child) process


def hoarding_train(config, data, on_epoch, seed):
    """fake_train that also keeps ``config["hoard_mb"]`` MB alive in its process, as a leak
    would (the bytes are written, so they are resident), and reports its process id."""
    HOARD.append(b"\x01" * (int(config.get("hoard_mb", 0)) << 20))
    on_epoch(1, {"val_accuracy": 0.5, "loss": 1.0, "pid": os.getpid()})
    return TrialResult(val_accuracy=0.5, val_loss=0.5, best_epoch=1, epochs_run=1, train_seconds=0.1,
                       images_per_s=1000.0, parameter_count=10, flops=20, history=[{"val_accuracy": 0.5}],
                       model=None)


def gated_train(config, data, on_epoch, seed):
    """For signal and kill tests in real processes (``--trainer stand_in:gated_train``).

    Writes ``training-<seed>`` in CNNBENCH_STAND_IN_DIR when a trial starts, then waits at
    each epoch until a file ``go`` exists there (so a test can act while a trial is surely
    running). Completed trials return a tiny real model, so export works. With
    CNNBENCH_STAND_IN_CRASH set, a learning rate above 0.004 kills the process mid-trial.
    """
    from cnnbench.final import FINAL_SEED_OFFSET

    folder = Path(os.environ["CNNBENCH_STAND_IN_DIR"])
    (folder / f"training-{seed}").touch()
    (folder / f"images-{seed}").write_text(f"{len(data.x_train)} {len(data.x_val)}")
    if config["learning_rate"] > 0.004 and os.environ.get("CNNBENCH_STAND_IN_CRASH"):
        os.kill(os.getpid(), 9)
    # With a file "hold-final" in the folder, the final training (seed + FINAL_SEED_OFFSET)
    # waits at a gate of its own, "go-final", so a test can let the search finish and hold it.
    # A file "go-<seed>" lets that one training through alone: a test can let exactly the
    # first trials finish and hold the next, without racing the sweep.
    held = seed >= FINAL_SEED_OFFSET and (folder / "hold-final").exists()
    gate = folder / ("go-final" if held else "go")
    own = folder / f"go-{seed}"
    history = []
    for epoch in range(1, config["epochs"] + 1):
        while not (gate.exists() or own.exists()):
            time.sleep(0.05)
        acc = 0.1 + 0.01 * epoch + 0.001 * (seed % 7)
        validated = len(data.y_val) and (epoch == config["epochs"] or config.get("validate") != "last_epoch")
        logs = {"val_accuracy": acc, "loss": 1.0} if validated else {"loss": 1.0}
        history.append(logs)
        on_epoch(epoch, logs)
    if not len(data.y_val):
        acc = None
    prebuilt = os.environ.get("CNNBENCH_STAND_IN_MODEL")
    if prebuilt and (len(data.class_names), data.x_train.shape[1]) == PREBUILT_SHAPE:
        model, count = prebuilt, int(os.environ["CNNBENCH_STAND_IN_PARAMS"])  # no TensorFlow in this child
    else:
        from cnnbench.model import build_model

        model = build_model(config, len(data.class_names), data.x_train.shape[1])
        count = model.count_params()
    return TrialResult(val_accuracy=acc, val_loss=None if acc is None else 1 - acc, best_epoch=config["epochs"],
                       epochs_run=config["epochs"], train_seconds=0.1, images_per_s=1000.0,
                       parameter_count=count, flops=20, history=history, model=model,
                       latency_ms=round(0.05 + 0.01 * (seed % 5), 3))  # a cost axis for two-objective fronts


TRAINED_EPOCHS: list = []  # (seed, epoch) of every epoch resumable_train trained, in-process


def resumable_train(config, data, on_epoch, seed, checkpoint=None):
    """A stand-in that takes cnnbench's ``checkpoint`` as the real trainer does: a JSON file
    of the epochs done, read at the start and written after every epoch. Its figures are a
    function of the seed and the epoch, so a resumed run's match an uninterrupted one's.
    CNNBENCH_STAND_IN_DIE_AT=N (with a file ``die`` in CNNBENCH_STAND_IN_DIR, removed as
    it fires) kills this process (SIGKILL) right after epoch N's checkpoint."""
    import json

    path = Path(checkpoint) if checkpoint else None
    saved = json.loads(path.read_text()) if path is not None and path.exists() else {"done": 0, "history": []}
    history, resumed = saved["history"], [saved["done"]] if saved["done"] else []
    written = path.stat().st_mtime if resumed and path is not None else None
    die_at = int(os.environ.get("CNNBENCH_STAND_IN_DIE_AT", 0))
    folder = Path(os.environ.get("CNNBENCH_STAND_IN_DIR", "."))
    for epoch in range(saved["done"] + 1, config["epochs"] + 1):
        TRAINED_EPOCHS.append((seed, epoch))
        logs = {"val_accuracy": 0.1 + 0.05 * epoch + 0.001 * (seed % 7), "loss": 1.0 / epoch}
        history.append({**logs, "epoch": epoch})
        if path is not None:
            path.write_text(json.dumps({"done": epoch, "history": history}))
        if epoch == die_at and (folder / "die").exists():
            (folder / "die").unlink()
            os.kill(os.getpid(), 9)
        on_epoch(epoch, logs)
    best = max(history, key=lambda h: h["val_accuracy"])
    return TrialResult(val_accuracy=best["val_accuracy"], val_loss=None, best_epoch=best["epoch"],
                       epochs_run=len(history), train_seconds=0.1, images_per_s=1000.0, parameter_count=10,
                       flops=20, history=history, model=None, resumed_from_epoch=resumed,
                       resumed_checkpoint_at=written)


def gated_resumable_train(config, data, on_epoch, seed, checkpoint=None):
    """For a worker killed mid-trial in real processes: ``resumable_train``'s checkpoint (a
    JSON file of the epochs done) with ``gated_train``'s gate and model. After epoch
    CNNBENCH_STAND_IN_HOLD_AFTER's checkpoint it writes ``held-<seed>`` in
    CNNBENCH_STAND_IN_DIR and waits for a file ``go`` there."""
    import json

    folder = Path(os.environ["CNNBENCH_STAND_IN_DIR"])
    (folder / f"training-{seed}").touch()
    path = Path(checkpoint) if checkpoint else None
    saved = json.loads(path.read_text()) if path is not None and path.exists() else {"done": 0, "history": []}
    history, resumed = saved["history"], [saved["done"]] if saved["done"] else []
    hold_after = int(os.environ.get("CNNBENCH_STAND_IN_HOLD_AFTER", 0))
    for epoch in range(saved["done"] + 1, config["epochs"] + 1):
        if epoch > hold_after and not (folder / "go").exists():
            (folder / f"held-{seed}").touch()
            while not (folder / "go").exists():
                time.sleep(0.05)
        logs = {"val_accuracy": 0.1 + 0.05 * epoch + 0.001 * (seed % 7), "loss": 1.0 / epoch}
        history.append({**logs, "epoch": epoch})
        if path is not None:
            path.write_text(json.dumps({"done": epoch, "history": history}))
        on_epoch(epoch, logs)
    best = max(history, key=lambda h: h["val_accuracy"])
    return TrialResult(val_accuracy=best["val_accuracy"] if len(data.y_val) else None, val_loss=None,
                       best_epoch=best["epoch"], epochs_run=len(history), train_seconds=0.1, images_per_s=1000.0,
                       parameter_count=int(os.environ["CNNBENCH_STAND_IN_PARAMS"]), flops=20, history=history,
                       model=os.environ["CNNBENCH_STAND_IN_MODEL"], resumed_from_epoch=resumed)


PREBUILT_SHAPE = (10, 32)  # classes, image size: the smoke space's data
_PREBUILT: dict = {}


def stand_in_model_env() -> dict:
    """Environment for gated_train in real child processes: a tiny real model saved once per
    test session (here, where TensorFlow is loaded anyway), which each trial hands back as a
    file, so that the children never import TensorFlow (seconds each on 2 cores)."""
    if not _PREBUILT:
        import atexit
        import shutil
        import tempfile

        from cnnbench.knobs import default_config
        from cnnbench.model import build_model

        folder = Path(tempfile.mkdtemp(prefix="cnnbench-stand-in-"))
        atexit.register(shutil.rmtree, folder, True)
        model = build_model({**default_config(), "stages": 1, "base_filters": 4}, *PREBUILT_SHAPE)
        model.save(folder / "tiny.keras")
        _PREBUILT.update(CNNBENCH_STAND_IN_MODEL=str(folder / "tiny.keras"),
                         CNNBENCH_STAND_IN_PARAMS=str(model.count_params()))
    return dict(_PREBUILT)


def final_epochs_take(monkeypatch, deadline: Deadline, config: dict, epochs_left: int, n_test: int = 60) -> None:
    """The final training's epoch timer (final.clock) reads, for every epoch, the time at
    which the time left holds ``epochs_left`` more epochs (half an epoch clear), so its
    re-size after its second epoch is stated, never measured: no test waits on a clock."""
    seconds = deadline.final_budget(config, n_test) / ((epochs_left + 0.5) * FINAL_SAFETY)
    ticks = itertools.count()
    monkeypatch.setattr("cnnbench.final.clock", lambda: next(ticks) * seconds)


def make_job(space, root: Path, study: str = "s", trials: int | None = None, engine: str = "optuna",
             algo: str | None = None, trainer=fake_train, data=None, **kw) -> StudyJob:
    module = engines.get(engine)
    paths = StudyPaths(Path(root) / study)
    paths.root.mkdir(parents=True, exist_ok=True)
    return StudyJob(study=study, engine=engine, space=space, paths=paths, trials=trials or space.budget.trials,
                    progress=kw.pop("progress", SilentProgress()), runner=InProcessRunner(data, trainer),
                    algo=module.validate(space, algo, kw.get("storage")),
                    deadline=kw.pop("deadline", Deadline(None)), **kw)


def run(space, root: Path, study: str = "s", trials: int | None = None, **kw):
    """Run a study with the stand-in trainer; return its trial records."""
    job = make_job(space, root, study, trials, **kw)
    engines.get(job.engine).run(job)
    return read_records(job.paths)
