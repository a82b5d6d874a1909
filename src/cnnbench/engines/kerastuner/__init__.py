"""The KerasTuner engine: the same ``Space`` as KerasTuner hyperparameters, the same trainer.

KerasTuner decides what to try (random, Bayesian, Hyperband, grid); each trial goes through
``engines.trial.run_trial`` exactly like an Optuna trial, and leaves the same record. The
project folder is KerasTuner's own (``results/<study>/kerastuner/``), so reloading a tuner
there and calling ``results_summary()`` works, and re-running the same study continues it.

Distributed search uses KerasTuner's own mechanism: a chief process (the oracle) and
workers, told apart by ``KERASTUNER_TUNER_ID`` and joined by ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT``. ``run`` with workers starts them on this machine; on many
machines the same variables are set by hand (see the README).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import keras_tuner as kt

from cnnbench import trials
from cnnbench.training import runtime
from cnnbench.deadline import NotStarted
from cnnbench.engines.kerastuner import recovery as lost
from cnnbench.engines.kerastuner.oracle import AtomicTunerSave, adopt, check_state_files, is_the_oracle
from cnnbench.engines.recovery import describe_exit
from cnnbench.engines.base import (StudyJob, TrialTaken, share_used_up, stop_rule_reason, wait_all,
                                   workers_finished)
from cnnbench.engines.trial import run_trial
from cnnbench.training.isolation import worker_preexec
from cnnbench.knobs import coerce
from cnnbench.space import ChoiceParam, FloatParam, IntParam, Space, SpaceError
from cnnbench.trials import State

NAME = "kerastuner"
PROJECT = "kerastuner"  # project_name inside the study folder
ALGOS = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband,
         "grid": kt.GridSearch}
ALGORITHMS = tuple(ALGOS)
CHIEF_GRACE_SECONDS = 30  # the chief outlives its workers only while it writes its state


class _StopSearch(BaseException):
    """Ends ``tuner.search`` from inside a trial (the deadline has come)."""


def validate(space: Space, algo: str | None, storage: str | None) -> str:
    """The tuner that will run; raises SpaceError before anything is loaded or written."""
    algo = algo or "random"
    if algo not in ALGOS:
        raise SpaceError(f"--algo: {algo!r} is not a KerasTuner algorithm (one of {', '.join(ALGOS)})")
    if storage:
        raise SpaceError("--storage: is for the Optuna engine; KerasTuner keeps its state in the study folder")
    if space.minimize:
        raise SpaceError(f"{space.source}: minimize: KerasTuner can only add objectives into one number; "
                         "run multi-objective spaces with the Optuna engine (ENGINE=optuna)")
    if space.search.rungs:  # its oracles own the trial queue; a data-size rung is a new trial for them
        raise SpaceError(f"{space.source}: search.rungs: successive halving over data sizes runs on the Optuna "
                         "engine; KerasTuner's Hyperband (--algo hyperband) promotes over epochs instead")
    if algo == "grid" and (problem := space.grid_problem()):
        raise SpaceError(problem)
    return algo


def hyperparameters(space: Space) -> kt.HyperParameters:
    """The space as KerasTuner hyperparameters; conditions become nested conditional scopes."""
    hp = kt.HyperParameters()
    for name, p in space.searched().items():
        with contextlib.ExitStack() as scopes:
            for parent, wanted in (p.condition or {}).items():
                scopes.enter_context(hp.conditional_scope(parent, wanted if isinstance(wanted, list) else [wanted]))
            if isinstance(p, IntParam):
                # KerasTuner reads a step on a log range as a factor and refuses 1: none there
                hp.Int(name, p.low, p.high, step=None if p.log else p.step, sampling="log" if p.log else "linear")
            elif isinstance(p, FloatParam):
                hp.Float(name, p.low, p.high, step=None if p.log else p.step,
                         sampling="log" if p.log else "linear")
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


class _Runner(AtomicTunerSave):
    """Mixed into each KerasTuner tuner: trials run through cnnbench's trainer, not model.fit."""

    def __init__(self, *args, job: StudyJob, **kwargs):
        self.job = job
        super().__init__(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        job = self.job
        if reason := stop_rule_reason(job):  # the trial handed out is not trained
            job.progress.say(f"search stopped by {reason}")
            raise _StopSearch()
        values, overrides = trial_values(trial.hyperparameters.values, job.space)
        # Hyperband asks for `tuner/epochs` epochs; we train them from scratch rather than
        # resuming the earlier round's weights, so every row is one self-contained training.
        try:
            record = run_trial(job, int(trial.trial_id), values, None, overrides,
                               attempt=lost.attempt_of(trials.read_records(job.paths), values))
        except NotStarted as late:
            job.progress.say(f"stopped before trial {trial.trial_id}: {late}")
            share_used_up(job)
            raise _StopSearch() from None
        except TrialTaken as taken:  # declared lost while paused; its retry stands
            raise kt.errors.FailedTrialError(f"trial {taken} was taken over while this worker was paused") from None
        if job.on_record:
            job.on_record(record)
        if record.state == State.FAILED:
            raise kt.errors.FailedTrialError(record.reason)  # fails the trial, not the search
        if record.state == State.PRUNED:  # stopped by the deadline: a partial score the oracle must not learn from
            raise kt.errors.FailedTrialError(f"{record.reason} (its partial score is not reported)")
        return {"val_accuracy": float(record.val_accuracy)} if record.val_accuracy is not None else {}


def make_tuner(job: StudyJob):
    space, algo = job.space, job.algo
    base = ALGOS[algo]
    tuner_class = type(f"Cnnbench{base.__name__}", (_Runner, base), {})
    kwargs = dict(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hyperparameters(space),
                  tune_new_entries=False, allow_new_entries=False, seed=space.seed,
                  max_consecutive_failed_trials=space.search.max_consecutive_failures,
                  directory=str(job.paths.root), project_name=PROJECT, overwrite=False)
    if algo == "hyperband":
        kwargs.update(max_epochs=max(space.extremes("epochs")), factor=3)
    else:
        kwargs["max_trials"] = job.trials
    return tuner_class(job=job, **kwargs)


def run(job: StudyJob) -> None:
    """Run trials until ``job.trials`` counted trials exist (earlier runs count), time is up
    or a signal stops it. With ``job.workers`` (and no KERASTUNER_TUNER_ID set), start a
    chief and that many workers on this machine instead, wait for them, then finish here
    whatever dead workers left undone."""
    if job.workers and "KERASTUNER_TUNER_ID" not in os.environ:
        worker_died = _run_distributed(job)
        workers_finished(job)
        if worker_died:
            _search(job)
        return
    _search(job)


def _search(job: StudyJob) -> None:
    check_state_files(job.paths.root / PROJECT)
    tuner = make_tuner(job)
    oracle = tuner.oracle
    if is_the_oracle(oracle):  # the oracle's own process (single, or the chief)
        adopt(oracle, job.space.start_with)
        if exists(job) and not oracle.trials:
            # KerasTuner reloads only when this tuner id saved its own file, which a run
            # killed before its first trial ended, or another tuner id, never did: without
            # this, trial numbers would start again at 0 over the study's records.
            oracle.reload()
        # Lost trials (kill -9, out of memory) are found before every trial the oracle
        # hands out, and by the chief also while its workers train.
        lost.rebuild_damaged(job, oracle, trial_values)  # a torn record: rebuilt from the oracle, or named
        lost.install(job, oracle, watch=os.environ.get("KERASTUNER_TUNER_ID") == "chief")
    try:
        tuner.search(verbose=0)  # cnnbench's own progress display replaces KerasTuner's
    except _StopSearch:
        pass
    except RuntimeError as error:  # KerasTuner's max_consecutive_failed_trials: stop as Optuna's engine does
        if "consecutive failures exceeded" not in str(error):
            raise
        job.progress.say(f"stopped: the last {job.space.search.max_consecutive_failures} trials failed; "
                         "the space is probably broken")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_distributed(job: StudyJob) -> bool:
    """A chief and ``job.workers`` workers over loopback, each a ``cnnbench sweep`` process.
    True when a worker died (its trial may still need a retry that nobody ran)."""
    env = {**os.environ, **job.deadline.worker_environment(), "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(_free_port())}
    # Workers' requests wait for the chief's server to come up (gRPC wait_for_ready).
    chief = subprocess.Popen(job.worker_command, env={**env, "KERASTUNER_TUNER_ID": "chief"},
                             preexec_fn=worker_preexec())
    pool = [subprocess.Popen(job.worker_command, env={**env, "KERASTUNER_TUNER_ID": f"tuner{i}",
                                                       **runtime.worker_environment(i, job.workers)},
                             preexec_fn=worker_preexec())
            for i in range(job.workers)]
    try:
        codes = wait_all(pool)
    finally:
        # The chief exits by itself once every worker asked for a trial after the end; a
        # worker that died mid-trial never does, so the chief is stopped after a grace period.
        try:
            chief.wait(timeout=CHIEF_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            chief.terminate()
            chief.wait()
    for i, code in enumerate(codes):
        if code:
            job.progress.say(f"worker tuner{i} {describe_exit(code)}; the others went on without it")
    return any(codes)


def exists(job: StudyJob) -> bool:
    """Whether KerasTuner has saved state for this study (a resumed study)."""
    return (job.paths.root / PROJECT / "oracle.json").exists()
