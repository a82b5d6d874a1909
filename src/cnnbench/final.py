"""The final training: the search's best configuration trained once more on every training
image (train + validation: 50,000 on CIFAR-10), and that model exported.

Validation images choose the configuration; once it is chosen they are better spent as
training data, as every CIFAR-10 paper does. The final training has the best trial's
configuration (same epochs, same schedule) and a fresh seed, validates nothing (there is
nothing left to validate on) and ends at its last epoch; the test split then evaluates it
once. A space of a single configuration has nothing to choose, so its sweep goes straight
to this training.

Its record is ``<study>/final/record.json`` (a TrialRecord whose ``trial`` is the search
trial it came from, -1 for a single-configuration space) and its model
``<study>/final/model.keras``. A stop during it (Ctrl-C, SIGTERM) records it
``interrupted``; the sweep then exports the best trial's own model and says so, and the
next run of the same command does the final training. A finished final training whose
configuration is still the best is never repeated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from cnnbench import trials
from cnnbench.engines import cache
from cnnbench.engines.base import StudyJob
from cnnbench.forecast import FINAL_SAFETY, RESIZE_AFTER, stretch_limit
from cnnbench.engines.trial import log_throughput, signal_name
from cnnbench.training.isolation import ChildDied
from cnnbench.trials import NO_TRIAL, PruneTrial  # noqa: F401 (NO_TRIAL: re-exported)
from cnnbench.trials import Outcome, TrialRecord, State

FINAL_SEED_OFFSET = 1_000_000  # trials train with seed + trial number; the final with seed + this
clock = time.perf_counter  # times the final's epochs (tests state it: no test waits on a clock)
UNVALIDATED = ("history", "val_accuracy", "val_loss", "best_epoch")  # result fields a final record leaves out


@dataclass
class FinalOutcome:
    record: TrialRecord | None  # None: no final training was attempted
    message: str                # one line for the terminal and the model card
    source: str = ""            # what was trained: "trial N", "the space's only configuration", ...

    @property
    def complete(self) -> bool:
        return self.record is not None and self.record.state == State.COMPLETE


def read_final(job: StudyJob) -> TrialRecord | None:
    return trials.read_record(job.paths.final_record)


def _already_done(previous: TrialRecord | None, number: int, config: dict, job: StudyJob) -> bool:
    return (previous is not None and previous.state == State.COMPLETE and previous.trial == number
            and previous.config == config and job.paths.final_model.exists())


def run_final(job: StudyJob, best: TrialRecord | None, train_images: int, recipe: dict | None = None,
              recipe_name: str = "the start_with recipe") -> FinalOutcome:
    """Train ``best``'s configuration (or the space's only one, when ``best`` is None) on
    all ``train_images``; returns what happened. Raises Interrupted/KeyboardInterrupt after
    recording the final training as interrupted.

    ``recipe`` (a start_with entry, else the space's centre, called ``recipe_name``) is the
    fallback when no search trial could finish before the deadline beside its final training
    (a slow machine): it is trained on all images instead, with the most epochs that fit.
    """
    number = best.trial if best is not None else NO_TRIAL
    previous = read_final(job)
    config, values, shortened, stretch_to = _final_config(job, best, recipe, previous)
    if previous is not None and _already_done(previous, number, config, job):
        return FinalOutcome(previous, f"final training of trial {number} already done ({previous.train_images} "
                                      "images); exporting it")
    forecast = job.deadline.final_at_start(config)
    left = job.deadline.left()
    if forecast and forecast > left:
        fallback = "exported the best trial's own model" if best is not None else "nothing was trained to export"
        return FinalOutcome(None, f"no final training: forecast {forecast / 60:.1f} min, {max(left, 0) / 60:.1f} "
                                  f"min left before the deadline; {fallback}")
    seed = job.space.seed + FINAL_SEED_OFFSET
    source = (f"trial {number}{shortened}" if best is not None
              else f"the recipe alone (--recipe-only{shortened})" if job.recipe_only
              else "the space's only configuration" if recipe is None
              else f"{recipe_name} (no search trial fitted beside its final training" + shortened + ")")
    record = trials.started(number, job.engine, values, config,
                            f"final training of {source} on all {train_images:,} training images", seed=seed)
    record.train_images = train_images
    _train_final(job, record, config, seed, source, train_images, stretch_to)
    if record.config["epochs"] != config["epochs"]:
        source += f", re-sized to {record.config['epochs']} epochs after epoch {RESIZE_AFTER}"
    state, reason = record.state, record.reason
    log_throughput(job, record)
    if state != State.COMPLETE:
        return FinalOutcome(record, f"final training {state}: {reason}; exported the best trial's own model",
                            source)
    return FinalOutcome(record, f"final training of {source} done: {record.train_seconds} s on "
                                f"{train_images:,} images", source)


def _final_config(job: StudyJob, best: TrialRecord | None, recipe: dict | None,
                  previous: TrialRecord | None = None) -> tuple[dict, dict, str, int | None]:
    """(config, values, how it was shortened, the most epochs it may be re-sized to) of the
    final training. Every training image,
    whatever fidelity the search compared it at; a rung's schedule was a cheap fidelity too,
    so a configuration ranked at a rung trains the space's own, sized to the time left (as
    is a fallback recipe); a plain search trial's time was kept for it by the deadline.
    ``job.fill_final`` (--recipe-only, search.time_share): as many epochs as the time left
    holds, whatever the space's own, re-sized once it has timed its own epochs (up to
    STRETCH times them; an earlier run's size is kept)."""
    ranked_at_rung = best is not None and best.rung is not None
    if best is None:
        base = job.space.complete(recipe or {})
    else:
        base = job.space.complete(best.values) if ranked_at_rung else best.config
    config = {**base, "train_images": 0}
    values = dict(best.values) if best is not None else dict(recipe or {})
    shortened, stretch_to = "", None
    n_test = job.test_images
    number = best.trial if best is not None else NO_TRIAL
    if job.fill_final and previous is not None and previous.trial == number and previous.state != State.PRUNED \
            and _but_epochs(previous.config) == _but_epochs(config):
        # an earlier run of the command sized it: done, it is exported; stopped, it goes on
        # from its checkpoint with the schedule it started (a new size would start over).
        # One the deadline cut short kept no checkpoint: it is sized anew.
        config = {**config, "epochs": previous.config["epochs"]}
        shortened = f"; {config['epochs']} epochs, as an earlier run of this command sized it"
    elif job.fill_final:  # as many epochs as the time left holds
        _know_the_speed(job, config)
        # after a search this network's speed was just measured here: the smaller margin;
        # --recipe-only too once trainings of its size have run here
        margin = FINAL_SAFETY if best is not None else job.deadline.final_margin(config)
        config, shortened = job.deadline.fill_final(config, n_test, margin)
        if shortened:
            stretch_to = stretch_limit(config)
    elif recipe is not None or ranked_at_rung:
        config, shortened = job.deadline.fit_final(config, job.space.epoch_options(), n_test)
    return config, values, shortened, stretch_to


def _resized(job: StudyJob, record: TrialRecord, stretch_to: int, done: int, seconds: float) -> int:
    """The epochs the final training now has in all: as many as the time left holds at the
    speed of the epoch it just timed (up to ``stretch_to``), written into its record, so a
    stopped final goes on with this schedule at the next run of the command."""
    planned = record.config["epochs"]
    epochs = min(job.deadline.refill_final(record.config, job.test_images, done, seconds), stretch_to)
    if epochs != planned:
        record.config = {**record.config, "epochs": epochs}
        record.note += (f"; re-sized from {planned} to {epochs} epochs after epoch {done} "
                        f"({seconds:.0f} s an epoch here)")
        trials.write_record(job.paths, record, job.paths.final_record)
        job.progress.say(f"final training re-sized from {planned} to {epochs} epochs: epoch {done} took "
                         f"{seconds:.0f} s")
    return epochs


def _but_epochs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "epochs"}


def _know_the_speed(job: StudyJob, config: dict) -> None:
    """Filling the time left needs this machine's speed for networks of this size: on a
    machine that has not trained one yet, half a minute of training on random images
    measures it (as ``cnnbench check --measure`` does)."""
    from cnnbench.plan import measure

    if job.deadline.end is None or job.deadline.log is None or job.deadline.final_seconds(config):
        return
    job.progress.say("this machine's training speed for the recipe is unknown: measuring it (about half a minute)")
    measure(job.space, log=job.deadline.log)


def _train_final(job: StudyJob, record: TrialRecord, config: dict, seed: int, source: str,
                 train_images: int, stretch_to: int | None = None) -> None:
    """Train it (validating nothing: nothing is held out), its end written into the final
    record; a signal is recorded as interrupted and propagates. With ``stretch_to`` it is
    re-sized once (``_resized``)."""
    last, first = [clock()], [0]  # the last report's time; the first epoch this run reported

    def on_epoch(epoch: int, logs: dict) -> int | None:
        now = clock()
        seconds, last[0] = now - last[0], now
        first[0] = first[0] or epoch
        record.history.append({**{k: v for k, v in logs.items() if k != "epoch"}, "epoch": epoch,
                               "seconds": round(seconds, 2)})
        record.epochs_run = epoch
        planned = record.config["epochs"]
        job.progress.say(f"final training epoch {epoch}/{planned}: loss {logs.get('loss', float('nan')):.4f} "
                         f"({seconds:.0f} s)")
        wanted = None
        if stretch_to and epoch == RESIZE_AFTER and first[0] == 1:  # epoch 2 of a fresh start: untraced
            wanted = planned = _resized(job, record, stretch_to, epoch, seconds)
        # a re-size keeps at least one more epoch: this stops it when even that one would overrun
        if epoch < planned and job.deadline.epoch_would_overrun(seconds, keep_final=False):
            raise PruneTrial(f"stopped after epoch {epoch} of {planned}: the deadline is near")
        return wanted

    job.progress.phase = "final"  # the progress line says which phase the sweep is in
    job.paths.final_model.parent.mkdir(parents=True, exist_ok=True)
    trials.write_record(job.paths, record, job.paths.final_record)
    job.progress.say(f"final training: {source} on {train_images:,} images, {config['epochs']} epochs, seed {seed}")
    # A stopped final training goes on from its last epoch at the next run of the command
    # (the key is what it trains: a changed best configuration is a new training).
    # Filling the time, its epochs are the time's, not the configuration's: the record keeps
    # them (re-sized or not) and an earlier run's are taken from it (_final_config); the
    # checkpoint says its schedule's length, and one of another length is not resumed.
    version = cache.trainer_version(job.trainer_name) if job.data_fingerprint else None
    trained = _but_epochs(config) if job.fill_final else config
    checkpoint = job.paths.checkpoint("final-" + trials.checkpoint_key(trained, seed, job.data_fingerprint, version))
    try:
        outcome = job.runner.run(config, seed, job.paths.final_model, on_epoch, final=True, checkpoint=checkpoint,
                                 stretch_to=stretch_to)
    except ChildDied as died:  # kept: the next run goes on from the checkpoint
        outcome = Outcome(State.FAILED, str(died), None)
    except KeyboardInterrupt as stop:
        record.state, record.reason, record.finished_at = State.INTERRUPTED, f"interrupted by {signal_name(stop)}", time.time()
        trials.write_record(job.paths, record, job.paths.final_record)
        raise
    else:
        checkpoint.unlink(missing_ok=True)
    metrics = outcome.metrics or {}
    kept = metrics.get("epochs_run") or record.config["epochs"]
    if stretch_to and outcome.state == State.COMPLETE and kept != record.config["epochs"]:
        # a trainer of one's own that does not take stretch_to kept its own epochs
        record.config = {**record.config, "epochs": kept}
        record.note += f"; the trainer kept {kept} epochs"
    if metrics.get("resumed_from_epoch"):
        job.progress.say(f"final training went on from epoch {metrics['resumed_from_epoch'][-1]} of an earlier run")
    record.state, record.reason, record.finished_at = outcome.state, outcome.reason, time.time()
    trials.take_metrics(record, metrics, skip=UNVALIDATED)  # no validation figures: nothing was held out
    trials.write_record(job.paths, record, job.paths.final_record)
