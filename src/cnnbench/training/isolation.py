"""Each trial trains in a child process, so nothing a trial does can take the sweep down.

TensorFlow keeps memory from every model a process has built (keras-tuner#395,
optuna#1178), and a crash, a segfault or the kernel's out-of-memory killer ends the whole
process. So the sweep's own process never trains: a ``TrialRunner`` sends each
configuration to a child process, relays its per-epoch reports to the engine (which may
answer "prune"), and gets the result back. The child loads the data once and trains trial
after trial; it is replaced when its memory has grown by ``recycle_limit_mb()`` (cheaper than a
fresh process per trial: start-up and imports cost seconds). A child that dies takes only
its trial with it: the runner reports how it died, starts a new child for the next trial.

The trainer is named by a dotted path (``module:function``) so tests can run real child
processes with a stand-in trainer.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import fields
from pathlib import Path
from typing import Any

from cnnbench.trials import Outcome, PruneTrial, State

DEFAULT_TRAINER = "cnnbench.training.train:train_and_evaluate"
RECYCLE_MB = 2048  # replace a child whose resident memory grew this much since it started (at most)


def recycle_limit_mb() -> float:
    """How much a trial child may grow before it is replaced: RECYCLE_MB, or an eighth of
    this machine's memory where that is less. Measured on the Zen 4 VM (default space, first
    rung): a child's first trial grows it by about 450 MB (TensorFlow's allocator and kernel
    caches), each later one by 30-100 MB. The former 150 MB therefore started a new child
    (imports, data) for every trial: 5-9 s of each 30-50 s first-rung run."""
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):  # not reported here
        return RECYCLE_MB
    return min(RECYCLE_MB, total_mb / 8)


class ChildDied(RuntimeError):
    """The child process ended during a trial; the message says how."""


def _resident_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except (OSError, AttributeError):
        return None  # not Linux


def _die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None, libc=None) -> None:
    """Linux: the kernel sends ``signum`` to this process when its parent dies (even by
    SIGKILL), so a killed sweep leaves no orphan training on. ``parent``: the pid it must
    still have, for the case where the parent died before this call (then stop at once)."""
    libc = libc or _libc()
    if libc is not None:
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    # elsewhere the child notices the parent at its next epoch (a broken pipe)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


def worker_preexec():
    """For ``subprocess.Popen(preexec_fn=...)`` of a sweep's worker processes: each gets
    SIGTERM when the sweep dies (a worker stops on it the graceful way, recording its trial
    as interrupted), so no worker trains on as an orphan, kill -9 of the sweep included.
    libc is loaded here, before the fork: the forked child of a threaded parent should do
    as little as it can before exec."""
    parent, libc = os.getpid(), _libc()
    return lambda: _die_with_parent(signal.SIGTERM, parent, libc)


def load_trainer(dotted: str):
    """The function ``module:function`` names (a trainer of one's own, or a test's stand-in)."""
    import importlib

    module, colon, name = dotted.partition(":")
    if not colon or not module or not name:
        raise ValueError("expected module:function")
    return getattr(importlib.import_module(module), name)


def takes(trainer, keyword: str) -> bool:
    """Whether ``trainer`` accepts ``keyword=``: ``checkpoint`` and ``stretch_to`` are
    optional (cnnbench's own takes both; a trainer of one's own may, to resume its
    trainings and let the final training re-size its schedule, and otherwise starts them
    over and keeps the epochs it was given)."""
    import inspect

    try:
        parameters = inspect.signature(trainer).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)


def train_one(trainer, config: dict, data, seed: int, model_path, on_epoch,
              log_dir: str | None = None, checkpoint: str | Path | None = None,
              stretch_to: int | None = None) -> Outcome:
    """Train one trial wherever we are: its Outcome (the result's fields without the model).
    A completed trial's model is saved at ``model_path``; ``log_dir`` gets TensorBoard logs;
    ``checkpoint`` is the per-epoch checkpoint's path, for a trainer that takes one;
    ``stretch_to``: the most epochs ``on_epoch`` may re-size the training to (by returning
    that number), for a trainer that takes it."""
    extra: dict = {"log_dir": str(log_dir)} if log_dir else {}
    if checkpoint and takes(trainer, "checkpoint"):
        extra["checkpoint"] = str(checkpoint)
    if stretch_to and takes(trainer, "stretch_to"):
        extra["stretch_to"] = int(stretch_to)
    try:
        result = trainer(config, data, on_epoch, seed, **extra)
    except PruneTrial as pruned:
        return Outcome(State.PRUNED, str(pruned), _plain(getattr(pruned, "result", None)))
    except Exception as e:  # a broken configuration fails its trial, not the search
        text = str(e).strip()
        return Outcome(State.FAILED, f"{type(e).__name__}: {text.splitlines()[0] if text else ''}", None)
    try:
        if isinstance(result.model, (str, Path)) and model_path:  # a trainer that saved its model itself
            from cnnbench.files import atomic_write

            atomic_write(Path(model_path), Path(result.model).read_bytes())
        elif result.model is not None and model_path:
            from cnnbench.training.train import save_model  # TensorFlow: only with a model to save

            save_model(result.model, Path(model_path))
    except OSError as e:  # a full disk: the trial fails in one line, the sweep's next write says why
        why = f"could not save its model: {e.filename or model_path}: {e.strerror}"
        return Outcome(State.FAILED, why, _plain(result))
    return Outcome(State.COMPLETE, "", _plain(result))


def _child_main(conn, trainer_path: str, data_request: tuple | None) -> None:
    """The child: load data once, then train whatever the parent sends until told to stop."""
    # Ctrl-C reaches every process in the terminal's group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal too: the parent stops it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    from cnnbench.training import runtime

    runtime.pin_from_environment()
    if trainer_path == DEFAULT_TRAINER:  # a stand-in trainer imports what it needs, perhaps no TensorFlow
        runtime.import_tensorflow_quietly()
    from cnnbench.training.data import load_data

    with runtime.silenced_stderr():  # a trainer of the user's own may import TensorFlow at its top
        trainer = load_trainer(trainer_path)
    data = load_data(*data_request) if data_request else None
    try:
        _serve(conn, trainer, data)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent went away mid-conversation (its own error, a kill): nobody to tell


def _serve(conn, trainer, data) -> None:
    """Train whatever the parent sends, one trial at a time, until told to stop."""
    baseline = _resident_mb()
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        _, config, seed, model_path, log_dir, final, checkpoint, stretch_to = message

        def on_epoch(epoch: int, logs: dict) -> int | None:
            conn.send(("epoch", epoch, logs))
            verdict, said = conn.recv()
            if verdict == "prune":
                raise PruneTrial(said)
            return int(said) if verdict == "resize" else None

        conn.send(train_one(trainer, config, final_data(data) if final else data, seed, model_path, on_epoch,
                            log_dir, checkpoint, stretch_to))
        conn.send(("memory", _resident_mb() - baseline))


def final_data(data):
    """The final training's data: validation images moved into training (None stays None:
    stand-in trainers need no data)."""
    return data.all_training() if data is not None else None


def _plain(result) -> dict | None:
    """A TrialResult without its model, for the pipe."""
    if result is None:
        return None
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name != "model"}


class InProcessRunner:
    """Trains in this process: for tests with a stand-in trainer, and for debugging."""

    def __init__(self, data, trainer=None):
        self.data, self.trainer = data, trainer

    def run(self, config: dict, seed: int, model_path, on_epoch, log_dir=None,
            final: bool = False, checkpoint: Path | None = None, stretch_to: int | None = None) -> Outcome:
        trainer = self.trainer or load_trainer(DEFAULT_TRAINER)
        data = final_data(self.data) if final else self.data
        return train_one(trainer, config, data, seed, model_path, on_epoch, log_dir, checkpoint, stretch_to)

    def close(self, kill: bool = False) -> None:
        pass


class TrialRunner:
    """Trains trials one at a time in a child process; see the module docstring."""

    def __init__(self, data_request: tuple | None, trainer: str = DEFAULT_TRAINER, recycle_mb: float | None = None):
        self.data_request, self.trainer = data_request, trainer
        self.recycle_mb = recycle_limit_mb() if recycle_mb is None else recycle_mb
        self.process: Any = None  # a spawned multiprocessing Process while a child lives
        self.conn: Any = None     # the parent's end of its pipe
        self.children_started = 0

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited TensorFlow state
        parent, child = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child, self.trainer, self.data_request),
                                       daemon=True, name="cnnbench-trial")
        from cnnbench.training.runtime import trial_allocator

        preload = trial_allocator()  # for the child only: it inherits the environment at its start
        if preload:
            os.environ["LD_PRELOAD"] = preload
        try:
            self.process.start()
        finally:
            if preload:
                os.environ.pop("LD_PRELOAD", None)
        child.close()
        self.conn = parent
        self.children_started += 1

    def run(self, config: dict, seed: int, model_path: Path | None, on_epoch,
            log_dir: Path | None = None, final: bool = False,
            checkpoint: Path | None = None, stretch_to: int | None = None) -> Outcome:
        """Train one trial: returns its Outcome. ``on_epoch(epoch, logs)``
        runs here, in the sweep's process; if it raises PruneTrial the child is told to stop
        the trial, if it returns a number of epochs the training is re-sized to it (up to
        ``stretch_to``). Raises ChildDied when the child ends mid-trial (its exit is described)."""
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send(("train", config, seed, str(model_path) if model_path else None,
                        str(log_dir) if log_dir else None, final, str(checkpoint) if checkpoint else None,
                        stretch_to))
        try:
            while True:
                message = self.conn.recv()
                if message[0] != "epoch":
                    break
                try:
                    wanted = on_epoch(message[1], message[2])
                except PruneTrial as pruned:
                    self.conn.send(("prune", str(pruned)))
                else:
                    self.conn.send(("resize", wanted) if isinstance(wanted, int) else ("go", ""))
            outcome = Outcome(*message)
            _, grown = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            raise ChildDied(self._describe_death()) from None
        except BaseException:  # Ctrl-C or SIGTERM in the sweep: the trial stops with it
            self.close(kill=True)
            raise
        if grown > self.recycle_mb:
            self.close()
        return outcome

    def _describe_death(self) -> str:
        process, self.process = self.process, None
        if process is None:
            return "the trial's process was gone"
        process.join(timeout=10)
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            likely = " (out of memory, or kill -9)" if -code == signal.SIGKILL else ""
            return f"the trial's process was killed by {name}{likely}"
        return f"the trial's process exited with code {code}"

    def close(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if kill:
                process.kill()
            else:
                self.conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
