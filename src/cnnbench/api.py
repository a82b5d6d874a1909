"""The Python API, for notebooks and scripts: the same sweeps as the CLI, and studies read
back without TensorFlow.

    import cnnbench
    space = cnnbench.load_space("search_spaces/smoke.yaml")
    study = cnnbench.sweep("search_spaces/smoke.yaml", study="nb", trials=3, progress=False)
    study.leaderboard()            # a DataFrame, best first
    study.best_trial.val_accuracy  # the record of the best trial
    study.card.test_accuracy
    model = study.best_model()     # keras.Model (imports TensorFlow only here)
    cnnbench.studies("results")    # one row per study

``cnnbench.load_study(path)`` reads a finished or running study; nothing in it imports
TensorFlow until ``best_model()``. A notebook that wants cnnbench's TensorFlow settings
(oneDNN, threads) calls ``cnnbench.prepare()`` before it imports TensorFlow itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cnnbench import trials
from cnnbench.provenance import ModelCard, RunInfo
from cnnbench.reports.results import leaderboard_frame, progress_frame, studies_frame
from cnnbench.space import Space, load_space, parse_space
from cnnbench.trials import StudyPaths, TrialRecord


@dataclass
class Study:
    """A study folder (``results/<study>``) read from its files: records, leaderboard, card."""
    path: Path

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.path)

    @property
    def run(self) -> RunInfo:
        """run.json as a ``provenance.RunInfo``: the space, seed, versions, machine, command
        (``.to_dict()`` gives the file's JSON)."""
        return RunInfo.read(self.path / "run.json")

    @property
    def space(self) -> Space:
        return parse_space(self.run.space, str(self.path / "run.json"))

    @property
    def records(self) -> list[TrialRecord]:
        return trials.read_records(self.paths)

    @property
    def final(self) -> TrialRecord | None:
        """The final training's record (the best configuration on all training images)."""
        return trials.read_record(self.paths.final_record)

    def leaderboard(self) -> pd.DataFrame:
        """Every trial, best first, ranked within a data fidelity, as in leaderboard.csv."""
        return leaderboard_frame(self.records, self.space)

    def progress(self) -> pd.DataFrame:
        """Finished trials in the order they finished, with the best so far (progress.csv)."""
        return progress_frame(self.records, self.run.first_started_unix)

    @property
    def best_trial(self) -> TrialRecord | None:
        from cnnbench.trials import best_trial

        return best_trial(self.records)

    @property
    def card(self) -> ModelCard | None:
        """The exported model's card (None before anything was exported); ``.to_dict()``
        for the JSON."""
        return ModelCard.read(self.paths.best / "model_card.json")

    def best_model(self):
        """The exported model as a ``keras.Model`` (loaded in safe mode)."""
        import keras

        return keras.models.load_model(self.paths.best / "model.keras", compile=False)

    def write_report(self) -> Path:
        """(Re)write plots/ and report.html; returns the page's path."""
        from cnnbench.reports.pages import write_report

        from cnnbench import engines

        return write_report(self.paths, engines.importances(self.space, self.records))


def load_study(path: str | Path) -> Study:
    """The study in ``path`` (a ``results/<study>`` folder). Raises SpaceError if it is none."""
    from cnnbench.space import SpaceError

    path = Path(path)
    if not (path / "run.json").is_file():
        raise SpaceError(f"{path}: no study here (no run.json)")
    return Study(path)


def studies(results: str | Path = "results") -> pd.DataFrame:
    """One row per study under ``results``: counts, best trial, exported test accuracy."""
    return studies_frame(Path(results))


def sweep(space: str | Path | Space, study: str | None = None, trials: int | None = None,
          timeout_minutes: float | None = None, engine: str = "optuna", results: str | Path = "results",
          progress: bool | None = None, final: bool | None = None, seed: int | None = None,
          trainer: str | None = None, in_process: bool = False, recipe_only: bool = False,
          quantize: tuple[str, ...] = ()) -> Study:
    """Run (or continue) a sweep of ``space`` (a space file's path, or a ``Space`` from
    ``load_space``, perhaps changed with ``model_copy``) in this process, as ``cnnbench
    sweep`` does (trials in child processes, export at the end); returns the study. A Space
    object is recorded under its source file's name (study name and run.json).
    ``progress=False`` keeps it quiet (None: live on a terminal). Ctrl-C stops it as on
    the command line: what finished is ranked and exported, then KeyboardInterrupt.
    ``trainer="module:function"`` trains with a function of your own; ``in_process=True``
    trains in this process (a debugger reaches the trainer; a crash ends the sweep).
    ``recipe_only=True``: no search, the space's first start_with recipe trained on all
    training images for as many epochs as ``timeout_minutes`` holds (``--recipe-only``).
    ``quantize=("int8",)``: the export adds that quantized LiteRT file (``--quantize``); its
    check, like model.onnx's and model.tflite's, is in ``study.card.runtimes``."""
    from cnnbench.training import runtime
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    runtime.prepare_environment()  # oneDNN and a quiet start, unless TensorFlow is loaded already
    given = space if isinstance(space, Space) else None
    named = given is not None and given.source and Path(given.source).is_file()  # else: from parse_space
    request = SweepRequest(space_file=(given.source if named else "space.yaml") if given is not None else str(space),
                           space=given, study=study, trials=trials, timeout_minutes=timeout_minutes,
                           engine=engine, results=str(results), final=final, seed=seed, trainer=trainer,
                           in_process=in_process, recipe_only=recipe_only, quantize=tuple(quantize))
    prepared = prepare(request)
    summary = run_sweep(prepared, live=progress)
    if summary["stopped_by"]:
        raise KeyboardInterrupt(summary["stopped_by"])
    return Study(prepared.paths.root)


__all__ = ["Study", "load_space", "load_study", "studies", "sweep"]
