"""Every use of KerasTuner's internals, in one place: a mixin over each algorithm's oracle.

KerasTuner's documented extension point is a subclass of an oracle that overrides
``create_trial`` / ``populate_space`` (decorated with ``kt.synchronized``). cnnbench needs
three things KerasTuner has no option for:

- **start_with**: known configurations are handed out before sampling. Random search,
  Bayesian optimisation's initial points and Hyperband's new brackets all draw from
  ``_random_values``; an entry already tried (a resumed study) is skipped by the oracle's own
  duplicate check. Grid search enumerates its grid and takes no start list.
- **lost trials** (``kerastuner_recovery``): released before every trial is created, their
  configurations handed out first.
- **state files written whole**: KerasTuner writes ``oracle.json``, ``trial.json`` and
  ``tuner0.json`` in place, so a kill or a full disk in the middle leaves a torn file that
  stops every later run with a JSON traceback. Here they go through ``files.atomic_write``.

Each algorithm's tuner builds its own oracle, so ``adopt`` swaps the built oracle's class for
the mixed one (no attribute of a live object is replaced). ``REQUIRED`` lists what is relied
on; ``adopt`` checks it and tests pin the KerasTuner version, so an upgrade that renames one
fails loudly instead of silently turning start_with or recovery off.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import keras_tuner as kt
from keras_tuner.src.engine.trial import TrialStatus

from cnnbench.files import atomic_write
from cnnbench.space import SpaceError

PINNED = "1.4.8"  # pyproject.toml's pin; what REQUIRED was read from
REQUIRED = ("_random_values", "_duplicate", "_retry_queue", "_save_trial", "_get_oracle_fname", "_get_trial_dir",
            "populate_space", "create_trial", "end_order", "ongoing_trials", "tuner_ids", "trials",
            "hyperparameters", "max_trials", "get_state", "_check_consecutive_failures")


if TYPE_CHECKING:  # for the type checker, the mixins stand on what they are mixed into
    from keras_tuner import Oracle as _OracleBase
    from keras_tuner import Tuner as _TunerBase
else:
    _OracleBase = _TunerBase = object


class CnnbenchOracle(_OracleBase):
    """Mixed in front of an algorithm's oracle by ``adopt``."""

    cnnbench_first: list = []   # start_with entries, in order
    cnnbench_lost = None        # kerastuner_recovery.LostTrials, once installed

    def values_of(self, entry: dict) -> dict:
        """The oracle's values for a configuration: its active hyperparameters only."""
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                value = entry[hp.name]
                hps.values[hp.name] = int(value) if isinstance(value, bool) else value  # KerasTuner's booleans: 0/1
        return hps.values

    def _random_values(self):
        for entry in self.cnnbench_first:
            values = self.values_of(entry)
            if not self._duplicate(values):
                return values
        return super()._random_values()

    def _check_consecutive_failures(self):
        try:
            super()._check_consecutive_failures()
        except RuntimeError:
            # KerasTuner raises from end_trial before it saves the trial that just failed:
            # save it (and free its tuner's place) first, or a later run of the study would
            # find it running and hand it out again
            ended = self.trials[self.end_order[-1]]
            self._save_trial(ended)
            for tuner_id, ongoing in list(self.ongoing_trials.items()):
                if ongoing.trial_id == ended.trial_id:
                    self.ongoing_trials.pop(tuner_id)
            self.save()
            raise

    @kt.synchronized
    def create_trial(self, tuner_id):
        if self.cnnbench_lost is not None:
            self.cnnbench_lost.release()  # before the budget check inside create_trial: it may grow
        return super().create_trial(tuner_id)

    def populate_space(self, trial_id):
        values = self.cnnbench_lost.next_retry() if self.cnnbench_lost is not None else None
        if values:
            return {"status": TrialStatus.RUNNING, "values": self.values_of(values)}
        return super().populate_space(trial_id)

    def end_as_failed(self, number: int, reason: str) -> None:
        """Trial ``number`` failed with ``reason``: no longer ongoing, its worker forgotten (the
        chief must not wait for it), not retried under its old id, saved."""
        trial = next((t for t in self.trials.values() if int(t.trial_id) == number), None)
        if trial is None or trial.status == TrialStatus.FAILED:
            return
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial.trial_id:
                del self.ongoing_trials[tuner_id]
                self.tuner_ids.discard(tuner_id)
        if trial.trial_id in self._retry_queue:  # a reloaded oracle would run it again under its old id
            self._retry_queue.remove(trial.trial_id)
        trial.status, trial.message = TrialStatus.FAILED, reason
        self.end_order.append(trial.trial_id)
        self._save_trial(trial)

    def save(self):
        atomic_write(Path(self._get_oracle_fname()), json.dumps(self.get_state()))

    def _save_trial(self, trial):
        atomic_write(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", json.dumps(trial.get_state()))


class AtomicTunerSave(_TunerBase):
    """Mixed into the tuner: its own state file (``tuner0.json``) written whole too."""

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        atomic_write(Path(self._get_tuner_fname()), json.dumps(self.get_state()))


def is_the_oracle(oracle) -> bool:
    """True in the oracle's own process (a single search, or the chief); a worker holds a
    client of the chief's oracle, which has none of the oracle's own methods."""
    return hasattr(oracle, "_random_values")


def adopt(oracle, start_with: list[dict]):
    """Make the tuner's ``oracle`` a CnnbenchOracle of its own algorithm, handing out
    ``start_with`` first. Only the oracle's own process has one (workers hold a client)."""
    missing = [name for name in REQUIRED if not hasattr(oracle, name)]
    if missing:
        raise RuntimeError(f"KerasTuner {kt.__version__}'s {type(oracle).__name__} lacks {', '.join(missing)}: "
                           f"cnnbench relies on them as in KerasTuner {PINNED} (the version pyproject.toml pins)")
    base = type(oracle)
    oracle.__class__ = type(f"Cnnbench{base.__name__}", (CnnbenchOracle, base), {})
    oracle.cnnbench_first = list(start_with)
    return oracle


def check_state_files(project: Path) -> None:
    """KerasTuner's own files must parse before a tuner reloads them: a torn one (written
    by an older cnnbench or cut by hand) is one line naming it, not a JSON traceback."""
    for path in [*sorted(project.glob("*.json")), *sorted(project.glob("trial_*/trial.json"))]:  # oracle, tuners
        try:
            json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (ValueError, OSError, RecursionError) as error:
            raise SpaceError(f"{path}: KerasTuner's state is torn or unreadable ({type(error).__name__}: "
                             f"{str(error)[:80]}); restore the file, or continue in a new --study (this study's "
                             "trial records and models stay readable)") from None
