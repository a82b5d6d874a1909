"""The Optuna study a ``Space`` becomes: distributions and suggest_* calls, the sampler, the
storage (a journal file in the study folder, or an RDB), the study opened on it, the checks a
shared study gets, and fANOVA importances for the report page. ``optuna_engine`` runs it.
"""
from __future__ import annotations

import hashlib
from typing import Any
import warnings

import optuna
from optuna.trial import TrialState

from cnnbench.engines.base import StudyJob
from cnnbench.engines.optuna.journal import named_backend, repair_journal
from cnnbench.engines.optuna.pruning import make_pruner
from cnnbench.engines.storage_url import masked, scrub
from cnnbench.space import ChoiceParam, FloatParam, IntParam, Space, SpaceError
from cnnbench.trials import State
from cnnbench.training.sources import DataError

UNCOUNTED = ("interrupted", "surplus", "not_started", "warm_start_from")  # user attributes of trials that are not results


def open_rdb(url: str, heartbeat: bool = False):
    """An Optuna RDBStorage for ``url``; SpaceError (one line, password masked) when it
    cannot be opened. With ``heartbeat``, running trials record heartbeats so a lost
    machine's trial is failed (and retried) by whoever looks next."""
    from cnnbench.trials import HEARTBEAT_SECONDS, STALE_SECONDS

    kwargs: dict[str, Any] = ({"heartbeat_interval": int(HEARTBEAT_SECONDS), "grace_period": int(STALE_SECONDS)}
                              if heartbeat else {})
    try:
        with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as e:  # driver missing, host unreachable, bad credentials, bad URL
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpaceError(f"--storage {masked(url)}: cannot open the database: {scrub(reason, url)}") from None


def distributions(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """Each searched parameter as an Optuna distribution."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, p in space.searched().items():
        if isinstance(p, IntParam):
            out[name] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, FloatParam):
            out[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, ChoiceParam):
            out[name] = optuna.distributions.CategoricalDistribution(p.choices)
    return out


def suggest(trial: optuna.Trial, space: Space) -> dict:
    """The searched values for one trial; conditional parameters only when their condition holds."""
    values: dict = {}
    for name, d in distributions(space).items():  # parents before the parameters they condition
        if not space.params[name].condition_holds(space.complete(values)):
            continue
        if isinstance(d, optuna.distributions.IntDistribution):
            values[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, optuna.distributions.FloatDistribution):
            values[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, optuna.distributions.CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, d.choices)
    return values


def process_seed(space_seed: int, worker: int, trials_in_study: int) -> int:
    """A sampler seed for this process: the space's seed on a fresh single-process study (so
    a sweep is repeatable), something else for every worker and every resumed run (so none
    of them replays a sequence another already sampled)."""
    if worker == 0 and trials_in_study == 0:
        return space_seed
    digest = hashlib.sha256(f"{space_seed}/{worker}/{trials_in_study}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(space: Space, algo: str, seed: int, trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler for ``algo``; TPE and CMA-ES sample at random for their first trials, a
    quarter of the trials asked for (``trials``: --trials, else the space's budget), 3 to 10."""
    if algo == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algo == "grid":
        # The grid's order is the shuffle of its seed, and a trial's grid id is a position in
        # it: every worker and every resumed run must share the order, or one grid id means
        # another configuration in each process (duplicates and holes). So the space's seed,
        # never the per-process one.
        return _Grid({n: space.candidate_values(n) or [] for n in space.searched()}, seed=space.seed)  # finite
    startup = max(3, min(10, (trials or space.budget.trials) // 4))  # random trials before TPE/CMA-ES model it
    with warnings.catch_warnings():  # `group` and `constant_liar` are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out
        tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                         constant_liar=True)
    if algo == "cmaes":  # CMA-ES takes the numeric parameters; TPE the categorical ones
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, independent_sampler=tpe,
                                            warn_independent_sampling=False)
    return tpe


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, which in an ask/tell loop must not call ``study.stop`` (only
    ``optimize`` allows it): the loop asks ``is_exhausted`` before every trial instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def enqueue_configurations(study_root, study_name: str, configurations: list[dict], say=print) -> None:
    """Queue these configurations in a study of the results folder (its journal): what a
    grid study still lacks after its sampler has visited every grid id (tabulate's top-up)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_journal(study_root, study_name, say))
    for values in configurations:
        study.enqueue_trial(values, skip_if_exists=True)


def open_journal(root, study: str, say):
    """The journal storage of the study folder ``root`` (created if missing), its torn last
    entry (a writer killed mid-line) cut first and reported through ``say``."""
    from optuna.storages import JournalStorage

    root.mkdir(parents=True, exist_ok=True)
    journal = root / "optuna.journal"
    if cut := repair_journal(journal, torn_tail_only=True):
        say(f"{journal}: {cut}")
    try:
        return JournalStorage(named_backend(journal))
    except ValueError:  # an unreadable entry inside the file (Optuna reads no further)
        raise SpaceError(f"{journal}: an unreadable entry inside the journal; `cnnbench repair {study}"
                         f"{'' if root.parent.name == 'results' else ' --results ' + str(root.parent)}"
                         "` repairs it, keeping every complete entry it can") from None


def storage_for(job: StudyJob):
    if job.storage:
        return open_rdb(job.storage, heartbeat=True)
    return open_journal(job.paths.root, job.study, job.progress.say)


def counted_trials(study: optuna.Study) -> list:
    """Trials that count toward the budget: finished or running real results. Interrupted,
    surplus and not-started trials do not; nor does a lost trial whose retry is queued."""
    every = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in every}
    return [t for t in every if t.state != TrialState.WAITING and t.number not in retried
            and not any(t.user_attrs.get(k) for k in UNCOUNTED)]


def directions(space: Space) -> list[Any]:  # "maximize" / "minimize", as Optuna's Literal takes them
    """Validation accuracy up, then each cost in ``minimize`` down."""
    return ["maximize"] + ["minimize"] * len(space.minimize)


def open_study(job: StudyJob) -> optuna.Study:
    storage = storage_for(job)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study(study_name=job.study, storage=storage, directions=directions(job.space),
                                load_if_exists=True)
    seed = process_seed(job.space.seed, job.worker_index, len(probe.get_trials(deepcopy=False)))
    study = optuna.load_study(study_name=job.study, storage=storage,
                              sampler=make_sampler(job.space, job.algo, seed, job.trials), pruner=make_pruner(job.space))
    if "space_hash" not in study.user_attrs:  # so another machine's edited space is refused (check_study)
        study.set_user_attr("space_hash", job.space.fingerprint())
    if job.data_fingerprint and "data_fingerprint" not in study.user_attrs:  # and other data (check_study_data)
        study.set_user_attr("data_fingerprint", job.data_fingerprint)
    if job.storage:  # Optuna's own heartbeat, so every machine sees a lost trial
        job.heartbeat_hook = lambda number: _rdb_heartbeat(study, number)
    return study


def _rdb_heartbeat(study: optuna.Study, number: int) -> None:
    trial = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == number),
                 None)
    if trial is not None:
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]  # an RDBStorage here


def check_study(study: str, storage: str, space: Space) -> None:
    """A study in a shared storage was made with this space, whichever results folder the
    first machine used; raises SpaceError before anything is written when it was not."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        found = optuna.load_study(study_name=study, storage=open_rdb(storage)).user_attrs.get("space_hash")
    except KeyError:
        return  # a new study
    if found not in (None, space.fingerprint()):
        raise SpaceError(f"{space.source}: study {study!r} in the storage was made with a different space "
                         f"(hash {found}, now {space.fingerprint()}); use a new STUDY name, or the space it was "
                         "made with")




def check_study_data(study: str, storage: str, fingerprint: str) -> None:
    """A study in a shared storage trains on the data it was made with, whichever results
    folder (and run.json) the first machine used; DataError before anything is written."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        found = optuna.load_study(study_name=study, storage=open_rdb(storage)).user_attrs.get("data_fingerprint")
    except KeyError:
        return  # a new study
    if found not in (None, fingerprint):
        raise DataError(f"study {study!r} in the storage was made with other data (fingerprint {found}, now "
                        f"{fingerprint}); point CNNBENCH_CIFAR10 (or the space's data path) at the data it was made "
                        "with, or use a new STUDY name")


def importances(space: Space, records: list) -> dict[str, float] | None:
    """Optuna's fANOVA importances of the searched parameters for validation accuracy, from
    the completed trials (at the first rung with successive halving: one fidelity), or None
    with fewer than 3 or nothing varied. For the report page (pages.py)."""
    done = [r for r in records if r.state == State.COMPLETE and r.val_accuracy is not None]
    if any(r.rung is not None for r in done):
        done = [r for r in done if r.rung == 0]
    dists = distributions(space)
    if len(done) < 3 or not dists:
        return None
    study = optuna.create_study(direction="maximize")
    for r in done:
        params = {k: v for k, v in r.values.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=r.val_accuracy))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
