"""The Optuna engine: a ``Space`` becomes suggest_* calls; the study lives in a shared storage.

The default storage is a JournalStorage file in the study folder, which several processes
on one machine can append to at once; ``--storage`` takes an Optuna RDB URL instead
(PostgreSQL for many machines). The storage is Optuna's resume state; what each trial did
is in cnnbench's own trial records (``trials.py``).

Trials run in an ask/tell loop so that cnnbench decides, in every process, what counts:
interrupted, lost and surplus trials are told to Optuna as failed with a user attribute
saying which, and are not counted toward the budget. The budget holds exactly: after
``ask``, a trial whose rank among counted trials reaches the budget is surplus (another
worker got there first) and is not trained.
"""
from __future__ import annotations

import os
import socket
import subprocess
import warnings

import optuna
from optuna.trial import TrialState

from cnnbench import trials
from cnnbench.training import runtime
from cnnbench.deadline import NotStarted
from cnnbench.forecast import EXPORT_SECONDS
from cnnbench.engines import promotion
from cnnbench.engines.recovery import describe_exit
from cnnbench.engines.optuna.recovery import OWNER, recover_lost, tell_outcome
from cnnbench.engines.base import (StudyJob, TrialTaken, share_used_up, stop_rule_reason, wait_all,
                                   workers_finished)
from cnnbench.engines.trial import run_trial
from cnnbench.engines.optuna.study import _Grid, check_study, check_study_data, counted_trials, open_rdb, open_study, suggest
from cnnbench.training.isolation import worker_preexec
from cnnbench.engines.optuna.pruning import median_rule, progress_steps
from cnnbench.space import Space, SpaceError

NAME = "optuna"
ALGORITHMS = ("tpe", "random", "grid", "cmaes")
NOT_STARTED_TRIES = 5  # configurations asked for near the deadline before the sweep stops
__all__ = ["NAME", "ALGORITHMS", "validate", "run", "check_study", "check_study_data"]  # the engine protocol (engines/__init__.py)



def validate(space: Space, algo: str | None, storage: str | None) -> str:
    """The sampler that will run; raises SpaceError before anything is loaded or written."""
    algo = algo or space.search.sampler
    if algo not in ALGORITHMS:
        raise SpaceError(f"--algo: {algo!r} is not an Optuna sampler (one of {', '.join(ALGORITHMS)})")
    if algo == "grid" and (problem := space.grid_problem()):
        raise SpaceError(problem)
    if algo == "cmaes" and space.minimize:
        raise SpaceError(f"{space.source}: minimize: CMA-ES optimises one objective; use tpe, random or grid")
    if storage:
        open_rdb(storage)  # raises SpaceError naming the (masked) URL when it cannot be opened
    return algo


def run(job: StudyJob) -> None:
    """Run trials until ``job.trials`` counted trials exist in the study, time is up, the
    space keeps failing, or a signal stops it. With ``job.workers``, start that many worker
    processes on the shared storage instead, and wait for them."""
    study = open_study(job)
    recover_lost(job, study)
    new_study = not study.get_trials(deepcopy=False)
    if not job.worker_index:
        for known_good in job.space.start_with:  # tried before anything is sampled; once per study
            study.enqueue_trial(known_good, skip_if_exists=True)
    if job.warm_start and not job.worker_index and new_study:  # after start_with: its skip check sees them
        from cnnbench.engines.optuna import warm_start

        added = warm_start.add(study, job.space, job.warm_start)
        job.progress.say(f"warm start: {added} finished trial(s) of earlier studies added before sampling")
    if job.workers:
        run_workers(job, study)  # then finish here whatever dead workers left undone
        workers_finished(job)
    refused = 0  # configurations in a row that could not finish before the deadline
    while _should_continue(job, study):
        if job.space.search.rungs and not refused:
            # after a refusal, a new configuration's cheap first-rung run may still fit where
            # the promotion (a costlier rung) did not: asking for it again would only be refused
            _enqueue_promotion(job, study)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat ourselves
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        trial.set_user_attr(OWNER, f"{socket.gethostname()}:{os.getpid()}")  # for recover_unrecorded
        if sum(t.number < trial.number for t in counted_trials(study)) >= job.trials:
            trial.set_user_attr("surplus", True)  # another worker took the last place in the budget
            study.tell(trial, state=TrialState.FAIL)
            break
        try:
            _run_one(job, study, trial)
            refused = 0
        except NotStarted as late:
            # Near the deadline a big configuration may not fit while a smaller one would: ask
            # the sampler again a few times before giving the rest of the hour up.
            refused += 1
            if refused >= NOT_STARTED_TRIES:
                job.progress.say(f"stopped before trial {trial.number}: {late} (the last {refused} "
                                 "configurations asked for could not finish in time)")
                share_used_up(job)
                break
            job.progress.say(f"trial {trial.number} {late}; asking for another configuration")
        recover_lost(job, study)


def _enqueue_promotion(job: StudyJob, study: optuna.Study) -> None:
    """Successive halving (engines/promotion.py): when a configuration has earned the next
    rung, queue its values for that rung before the sampler is asked for a new one."""
    every = study.get_trials(deepcopy=False)
    # handed out and not yet recorded; a promotion that ended (even unrecorded: interrupted,
    # not started before the deadline) may be handed out again
    claimed = {(t.user_attrs["promoted_from"], t.user_attrs["rung"]) for t in every
               if t.user_attrs.get("promoted_from") is not None and t.state in (TrialState.WAITING, TrialState.RUNNING)}
    promoted = promotion.next_promotion(job.space, trials.read_records(job.paths), claimed)
    waiting = any(t.state == TrialState.WAITING for t in every)  # start_with and retries go first
    if promoted is not None and not waiting:
        study.enqueue_trial(promoted.values, user_attrs={"rung": promoted.rung,
                                                         "promoted_from": promoted.source.trial})


def _queued(job: StudyJob, study: optuna.Study) -> bool:
    """A run is queued (a configuration tabulate tops up) or earned by successive halving: a
    grid is not done while one is."""
    if job.space.search.rungs:
        _enqueue_promotion(job, study)
    return any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _should_continue(job: StudyJob, study: optuna.Study) -> bool:
    every = counted_trials(study)
    if len(every) >= job.trials:
        return False
    if isinstance(study.sampler, _Grid) and study.sampler.is_exhausted(study) and not _queued(job, study):
        return False
    if job.deadline.left() <= EXPORT_SECONDS:
        job.progress.say("stopped: the deadline is here; what finished is ranked and exported")
        return False
    finished = [t for t in every if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    limit = job.space.search.max_consecutive_failures
    last = finished[-limit:]
    if len(last) == limit and all(t.state == TrialState.FAIL for t in last):
        job.progress.say(f"stopped: the last {limit} trials failed; the space is probably broken")
        return False
    if reason := stop_rule_reason(job):
        job.progress.say(f"search stopped by {reason}")
        return False
    return True


def _run_one(job: StudyJob, study: optuna.Study, trial: optuna.Trial) -> None:
    """Train one asked trial and tell Optuna how it ended (NotStarted: it could not finish
    before the deadline and was not trained)."""
    values = suggest(trial, job.space)
    rung = trial.user_attrs.get("rung", 0) if job.space.search.rungs else None
    job.progress.phase = "promotion" if rung else "search"

    def should_stop(epoch: int, epochs: int, val_accuracy: float) -> bool:
        if job.paths.lost_marker(trial.number).exists():
            return True  # declared lost while this process was paused: stop; run_trial drops the result
        steps = progress_steps(epoch, epochs)
        if job.space.minimize:  # Optuna's pruners are single-objective: the median rule, ours, on accuracy
            return bool(steps) and median_rule(job, steps[-1], val_accuracy)
        try:
            for step in steps:
                trial.report(val_accuracy, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            return True  # failed meanwhile by the process that took it over (the marker came a moment later)
        return bool(steps) and trial.should_prune()

    try:
        # with rungs, promotion is the pruning: a rung run is a whole small training
        record = run_trial(job, trial.number, values, None if rung is not None else should_stop,
                           attempt=trial.user_attrs.get("attempt", 1), rung=rung,
                           promoted_from=trial.user_attrs.get("promoted_from"))
    except NotStarted as late:
        trial.set_user_attr("not_started", str(late))
        study.tell(trial, state=TrialState.FAIL)
        raise
    except KeyboardInterrupt:
        if job.paths.lost_marker(trial.number).exists():
            raise  # declared lost while paused: already failed in the study, nothing to tell
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except TrialTaken:
        return  # recovery failed it in the study and queued its retry
    tell_outcome(job, study, trial, record)
    if job.on_record:
        job.on_record(record)


def run_workers(job: StudyJob, study: optuna.Study) -> None:
    """``job.workers`` processes of the same sweep on one storage; Optuna coordinates them.
    A worker that dies does not stop the others: its trial is recovered at once."""
    env = {**os.environ, **job.deadline.worker_environment(),
           **({"CNNBENCH_STORAGE": job.storage} if job.storage else {})}
    processes = [subprocess.Popen(job.worker_command, env={**env, "CNNBENCH_WORKER": str(i + 1),
                                                            **runtime.worker_environment(i, job.workers)},
                                  preexec_fn=worker_preexec())
                 for i in range(job.workers)]
    codes = wait_all(processes, on_exit=lambda _process, code: code and recover_lost(job, study))
    for i, code in enumerate(codes):
        if code:
            job.progress.say(f"worker {i + 1} {describe_exit(code)}; the others finished the study")
