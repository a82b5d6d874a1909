"""The Optuna engine: a ``Space`` becomes suggest_* calls; the study lives in a shared storage.

The default storage is a JournalStorage file in the study folder, which several processes
on one machine can append to at once; ``storage`` takes any Optuna RDB URL instead
(PostgreSQL/MySQL for many machines). Trial outcomes are stored as user attributes so the
leaderboard can be rebuilt from the storage alone.
"""
from __future__ import annotations

import os
import subprocess
import warnings

import optuna
from optuna.trial import TrialState

from cnnbench import runtime
from cnnbench.data import DataBundle
from cnnbench.deadline import Deadline, NotStarted
from cnnbench.engines.base import Progress, StudyPaths, TrialRecord, run_trial, wait_all
from cnnbench.space import ChoiceParam, FloatParam, IntParam, Space, SpaceError

NAME = "optuna"
_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "running"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def suggest(trial: optuna.Trial, space: Space) -> dict:
    """The searched values for one trial; conditional parameters only when their condition holds."""
    values: dict = {}
    for name, p in space.searched().items():
        if not p.condition_holds(space.complete(values)):
            continue
        if isinstance(p, IntParam):
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, ChoiceParam):
            values[name] = trial.suggest_categorical(name, p.choices)
    return values


def make_sampler(space: Space, algo: str | None = None) -> optuna.samplers.BaseSampler:
    kind, seed = algo or space.search.sampler, space.seed
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        grid = {}
        for name in space.searched():
            values = space.candidate_values(name)
            if values is None:
                raise SpaceError(f"{space.source}: params.{name}: the grid sampler needs a finite space, "
                                 "but this is a continuous float range (give it a step, or use choices)")
            grid[name] = values
        return optuna.samplers.GridSampler(grid, seed=seed)
    startup = max(3, min(10, space.budget.trials // 4))  # random trials before TPE/CMA-ES model the space
    with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True)
    if kind == "cmaes":  # CMA-ES takes the numeric parameters; TPE the categorical ones
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, independent_sampler=tpe,
                                            warn_independent_sampling=False)
    return tpe


# Trials report validation accuracy at tenths of their own schedule, not at epochs: a
# 20-epoch trial at epoch 5 is a quarter through its learning-rate decay, a 10-epoch one
# half, so pruners compare trials at the same share of their training.
PROGRESS_STEPS = 10


def progress_steps(epoch: int, epochs: int) -> range:
    """The tenths of the schedule first reached at the end of ``epoch`` (of ``epochs``)."""
    reached = lambda e: PROGRESS_STEPS * e // epochs  # noqa: E731
    return range(reached(epoch - 1) + 1, reached(epoch) + 1)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    kind, startup = space.search.pruner, space.search.prune_after_trials
    if kind == "median":  # from 30% of the schedule on, below the median of earlier trials there
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=2)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=PROGRESS_STEPS, reduction_factor=3)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def storage_for(paths: StudyPaths, url: str | None):
    if url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    paths.root.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(paths.root / "optuna.journal")))


def open_study(study: str, paths: StudyPaths, space: Space, storage: str | None = None,
               algo: str | None = None) -> optuna.Study:
    return optuna.create_study(study_name=study, storage=storage_for(paths, storage),
                               direction="maximize", sampler=make_sampler(space, algo),
                               pruner=make_pruner(space), load_if_exists=True)


def run(study: str, space: Space, data: DataBundle, paths: StudyPaths, trials: int,
        timeout_minutes: float | None, progress: Progress, on_record=None,
        storage: str | None = None, algo: str | None = None, workers: int = 0,
        worker_command: list[str] | None = None, deadline: Deadline | None = None) -> None:
    """Run trials until ``trials`` have finished in the study (earlier runs count) or time is up.

    With ``workers`` > 0, run that many worker processes on the shared storage instead.
    A trial that cannot finish before the ``deadline`` is recorded as failed ("not
    started: ...") and the study stops.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_study(study, paths, space, storage, algo)
    for known_good in space.start_with:  # tried before anything is sampled; once per study, also on resume
        st.enqueue_trial(known_good, skip_if_exists=True)
    if workers:
        run_workers(workers, worker_command or [])
        return

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)

        def should_stop(epoch: int, epochs: int, val_accuracy: float) -> bool:
            steps = progress_steps(epoch, epochs)
            for step in steps:
                trial.report(val_accuracy, step)
            return bool(steps) and trial.should_prune()

        try:
            record = run_trial(trial.number, NAME, params, space, data, paths, should_stop, progress,
                               deadline=deadline)
        except NotStarted as late:
            trial.set_user_attr("fail_reason", str(late))
            trial.study.stop()
            raise RuntimeError(str(late)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); the trial did not finish")
            raise
        for key, value in record.metrics().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("config", record.config)
        if on_record:
            on_record(record)
        if record.state == "pruned":
            raise optuna.TrialPruned(record.fail_reason or "pruned")
        if record.state == "failed":
            raise RuntimeError(record.fail_reason)
        return record.val_accuracy

    remaining = trials - len(st.get_trials(deepcopy=False, states=FINISHED))
    if remaining <= 0:
        return
    st.optimize(objective, n_trials=None, timeout=timeout_minutes * 60 if timeout_minutes else None,
                catch=(RuntimeError,),
                callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                           _stop_after_failures(space.search.max_consecutive_failures)])


def _stop_after_failures(limit: int):
    """Stop the study when the last ``limit`` finished trials all failed: the space is broken."""
    def callback(study: optuna.Study, _trial) -> None:
        finished = study.get_trials(deepcopy=False, states=FINISHED)[-limit:]
        if len(finished) == limit and all(t.state == TrialState.FAIL for t in finished):
            study.stop()
    return callback


def run_workers(workers: int, command: list[str]) -> None:
    """``workers`` processes of the same sweep on one storage; Optuna's storage coordinates them."""
    codes = wait_all([subprocess.Popen(command, env={**os.environ, "CNNBENCH_WORKER": str(i + 1),
                                                      **runtime.worker_environment(i, workers)})
                      for i in range(workers)])
    if any(codes):
        raise RuntimeError(f"optuna workers exited with codes {codes}")


def records(study: str, paths: StudyPaths, storage: str | None = None) -> list[TrialRecord]:
    """Every trial in the study as a leaderboard record, read back from the storage."""
    st = optuna.load_study(study_name=study, storage=storage_for(paths, storage))
    out = []
    for t in st.get_trials(deepcopy=False):
        attrs = dict(t.user_attrs)
        rec = TrialRecord(trial=t.number, state=_STATE.get(t.state, t.state.name.lower()), engine=NAME,
                          params=dict(t.params), config=attrs.pop("config", {}))
        for key, value in attrs.items():
            if hasattr(rec, key):
                setattr(rec, key, value)
        if rec.state == "pruned" and rec.val_accuracy is None and t.intermediate_values:
            rec.val_accuracy = max(t.intermediate_values.values())
        if rec.state == "failed" and not rec.fail_reason:
            rec.fail_reason = "process ended during the trial" if t.datetime_complete else "unknown"
        out.append(rec)
    return out


def exists(study: str, paths: StudyPaths, storage: str | None = None) -> bool:
    if not storage and not (paths.root / "optuna.journal").exists():
        return False
    try:
        optuna.load_study(study_name=study, storage=storage_for(paths, storage))
        return True
    except KeyError:
        return False
