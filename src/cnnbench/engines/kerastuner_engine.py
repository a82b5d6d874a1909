"""The KerasTuner engine: the same ``Space`` as KerasTuner hyperparameters, the same trainer.

KerasTuner decides what to try (random, Bayesian, Hyperband, grid); each trial goes through
``engines.base.run_trial`` exactly like an Optuna trial. The project folder is KerasTuner's
own (``results/<study>/kerastuner/``), so reloading a tuner there and calling
``results_summary()`` works, and re-running the same study continues it.

Distributed search uses KerasTuner's own mechanism: a chief process (the oracle) and
workers, told apart by ``KERASTUNER_TUNER_ID`` and joined by ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT``. ``run(workers=n)`` starts them on this machine; on many machines
the same variables are set by hand (see the README).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import keras_tuner as kt

from cnnbench import runtime
from cnnbench.data import DataBundle
from cnnbench.deadline import Deadline, NotStarted
from cnnbench.engines.base import Progress, StudyPaths, TrialRecord, run_trial, wait_all
from cnnbench.knobs import coerce
from cnnbench.space import ChoiceParam, FloatParam, IntParam, Space, SpaceError

NAME = "kerastuner"
PROJECT = "kerastuner"  # project_name inside the study folder
ALGOS = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband,
         "grid": kt.GridSearch}
_METRICS = ("val_accuracy", "val_loss", "best_epoch", "epochs_run", "train_seconds", "images_per_s",
            "model_params", "flops", "started_at", "finished_at")
_STATE = {"COMPLETED": "complete", "FAILED": "failed", "INVALID": "failed", "RUNNING": "running",
          "IDLE": "running", "STOPPED": "pruned"}


def hyperparameters(space: Space) -> kt.HyperParameters:
    """The space as KerasTuner hyperparameters; conditions become nested conditional scopes."""
    hp = kt.HyperParameters()
    for name, p in space.searched().items():
        with contextlib.ExitStack() as scopes:
            for parent, wanted in (p.condition or {}).items():
                scopes.enter_context(hp.conditional_scope(parent, wanted if isinstance(wanted, list) else [wanted]))
            if isinstance(p, IntParam):
                hp.Int(name, p.low, p.high, step=p.step, sampling="log" if p.log else "linear")
            elif isinstance(p, FloatParam):
                hp.Float(name, p.low, p.high, step=p.step, sampling="log" if p.log else "linear")
            elif isinstance(p, ChoiceParam):
                hp.Choice(name, p.choices, ordered=False)
    return hp


def trial_values(values: dict, space: Space) -> tuple[dict, dict]:
    """(searched values, overrides) from a KerasTuner trial's values: Hyperband's epochs override."""
    params = {k: coerce(k, v) for k, v in values.items() if k in space.params}
    config = space.complete(params)  # drop conditional values whose condition does not hold
    params = {k: v for k, v in params.items() if space.params[k].condition_holds(config)}
    overrides = {"epochs": int(values["tuner/epochs"])} if "tuner/epochs" in values else {}
    return params, overrides


class _Runner:
    """Mixed into each KerasTuner tuner: trials run through cnnbench's trainer, not model.fit."""

    def __init__(self, *args, cnnbench=None, **kwargs):
        self.cnnbench = cnnbench  # (space, data, paths, progress, on_record, deadline)
        super().__init__(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        space, data, paths, progress, on_record, deadline = self.cnnbench
        params, overrides = trial_values(trial.hyperparameters.values, space)
        # Hyperband asks for `tuner/epochs` epochs; we train them from scratch rather than
        # resuming the earlier round's weights, so every row is one self-contained training.
        try:
            record = run_trial(int(trial.trial_id), NAME, params, space, data, paths, None, progress, overrides,
                               deadline=deadline)
        except NotStarted as late:
            if isinstance(self.oracle.max_trials, int) and hasattr(self.oracle, "trials"):
                self.oracle.max_trials = len(self.oracle.trials)  # the oracle's own process: no more trials
            raise kt.errors.FailedTrialError(str(late)) from None
        if on_record:
            on_record(record)
        if record.state == "failed":
            raise kt.errors.FailedTrialError(record.fail_reason)  # fails the trial, not the search
        return {k: float(v) for k, v in record.metrics().items() if k in _METRICS and v is not None}


def make_tuner(space: Space, paths: StudyPaths, algo: str, trials: int, runner_args=None):
    if algo not in ALGOS:
        raise SpaceError(f"--algo: {algo!r} is not a KerasTuner algorithm ({', '.join(ALGOS)})")
    if algo == "grid":
        for name in space.searched():
            if space.candidate_values(name) is None:
                raise SpaceError(f"{space.source}: params.{name}: grid search needs a finite space, but this "
                                 "is a continuous float range (give it a step, or use choices)")
    base = ALGOS[algo]
    tuner_class = type(f"Cnnbench{base.__name__}", (_Runner, base), {})
    kwargs = dict(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hyperparameters(space),
                  tune_new_entries=False, allow_new_entries=False, seed=space.seed,
                  max_consecutive_failed_trials=space.search.max_consecutive_failures,
                  directory=str(paths.root), project_name=PROJECT, overwrite=False)
    if algo == "hyperband":
        kwargs.update(max_epochs=max(space.extremes("epochs")), factor=3)
    else:
        kwargs["max_trials"] = trials
    tuner = tuner_class(cnnbench=runner_args, **kwargs)
    tuner.oracle.max_trials = trials  # Hyperband has no max_trials of its own; the budget still holds
    if space.start_with and hasattr(tuner.oracle, "_random_values"):  # the oracle's own process only
        _start_with_known_good(tuner.oracle, space)
    return tuner


def _start_with_known_good(oracle, space: Space) -> None:
    """The oracle hands out the space's start_with configurations before sampling.

    Random search, Bayesian optimisation's initial points and Hyperband's first rounds all
    draw from ``_random_values``; an entry already tried (a resumed study) is skipped by the
    oracle's own duplicate check. Grid search enumerates its grid and takes no start list.
    """
    sample = oracle._random_values

    def known_good_first():
        for entry in space.start_with:
            hps = kt.HyperParameters()
            for hp in oracle.hyperparameters.space:
                hps.merge([hp])
                if hps.is_active(hp):
                    hps.values[hp.name] = entry[hp.name]
            if not oracle._duplicate(hps.values):
                return hps.values
        return sample()

    oracle._random_values = known_good_first


def run(study: str, space: Space, data: DataBundle, paths: StudyPaths, trials: int,
        timeout_minutes: float | None, progress: Progress, on_record=None,
        storage: str | None = None, algo: str | None = None, workers: int = 0,
        worker_command: list[str] | None = None, deadline: Deadline | None = None) -> None:
    """Run trials until ``trials`` exist in the project (earlier runs count) or time is up.

    With ``workers`` > 0 (and no KERASTUNER_TUNER_ID set), start a chief and that many
    workers on this machine instead, and wait for them all.
    """
    if storage:
        raise SpaceError("--storage: is for the Optuna engine; KerasTuner keeps its state in the study folder")
    if workers and "KERASTUNER_TUNER_ID" not in os.environ:
        _run_distributed(workers, worker_command or [])
        return
    tuner = make_tuner(space, paths, algo or "random", trials, (space, data, paths, progress, on_record, deadline))
    role = os.environ.get("KERASTUNER_TUNER_ID")
    if timeout_minutes and role in (None, "chief"):
        # No new trial after the deadline: cap the oracle's budget at what it has handed out.
        # Only the oracle's own process can do this, which is what makes it work across workers.
        oracle = tuner.oracle
        timer = threading.Timer(timeout_minutes * 60, lambda: setattr(oracle, "max_trials", len(oracle.trials)))
        timer.daemon = True
        timer.start()
    tuner.search(verbose=0)  # cnnbench's own progress display replaces KerasTuner's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_distributed(workers: int, command: list[str]) -> None:
    """A chief and ``workers`` workers over loopback, each a ``cnnbench sweep`` process."""
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
    # Workers' requests wait for the chief's server to come up (gRPC wait_for_ready).
    chief = subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": "chief"})
    pool = [subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": f"tuner{i}",
                                           **runtime.worker_environment(i, workers)})
            for i in range(workers)]
    # The chief serves trials until every worker has been told to stop, then exits too.
    *codes, chief_code = wait_all([*pool, chief])
    if any(codes) or chief_code:
        raise RuntimeError(f"distributed KerasTuner: worker exit codes {codes}, chief {chief_code}")


def records(study: str, paths: StudyPaths, storage: str | None = None) -> list[TrialRecord]:
    """Every trial in the project, read from KerasTuner's own trial.json files."""
    space = _space_of(paths)
    out = []
    for trial_file in sorted((paths.root / PROJECT).glob("trial_*/trial.json")):
        t = json.loads(trial_file.read_text())
        values = t.get("hyperparameters", {}).get("values", {})
        params, overrides = trial_values(values, space) if space else ({}, {})
        rec = TrialRecord(trial=int(t["trial_id"]), state=_STATE.get(t.get("status"), "running"), engine=NAME,
                          params=params, config={**space.complete(params), **overrides} if space else {})
        for name, metric in t.get("metrics", {}).get("metrics", {}).items():
            observations = metric.get("observations") or []
            if name in _METRICS and observations:
                setattr(rec, name, observations[-1]["value"][0])
        if rec.state == "failed":
            message = (t.get("message") or "").strip().splitlines()
            rec.fail_reason = message[-1].split("FailedTrialError: ", 1)[-1] if message else "unknown"
        for name in ("best_epoch", "epochs_run", "model_params", "flops"):
            if getattr(rec, name) is not None:
                setattr(rec, name, int(getattr(rec, name)))
        out.append(rec)
    return out


def exists(study: str, paths: StudyPaths, storage: str | None = None) -> bool:
    return (paths.root / PROJECT / "oracle.json").exists()


def _space_of(paths: StudyPaths) -> Space | None:
    from cnnbench.space import parse_space

    try:
        run = json.loads((paths.root / "run.json").read_text())
        return parse_space(run["space"], str(paths.root / "run.json"))
    except (OSError, ValueError, KeyError):
        return None
