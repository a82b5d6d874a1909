"""One sweep from start to finish: validate, load data, run an engine, rank, export.

Everything that can be wrong with the input is checked before anything is written. The
leaderboard is rewritten after every trial, so an interrupted or killed sweep loses at
most the trial that was running.
"""
from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnbench import provenance, runtime
from cnnbench.data import load_data
from cnnbench.deadline import DEADLINE_ENV, Deadline
from cnnbench.engines.base import StudyPaths
from cnnbench.export import export_best
from cnnbench.report import SweepProgress, markdown_table, study_markdown
from cnnbench.results import (atomic_write, json_text, leaderboard_frame, progress_frame, read_json,
                              studies_frame, write_study_leaderboard)
from cnnbench.space import Space, SpaceError, load_space

# The engines, by name. Each module has NAME, run(), records() and exists().
ENGINES = {"optuna": "cnnbench.engines.optuna_engine", "kerastuner": "cnnbench.engines.kerastuner_engine"}


def engine_module(name: str):
    return importlib.import_module(ENGINES[name])


@dataclass
class SweepRequest:
    space_file: str
    study: str | None = None
    trials: int | None = None
    timeout_minutes: float | None = None
    engine: str = "optuna"
    algo: str | None = None        # sampler (optuna) or tuner (kerastuner); default from the space
    storage: str | None = None     # Optuna RDB URL; default: a journal file in the study folder
    results: str = "results"
    workers: int = 0               # processes to start on this machine (KerasTuner: plus a chief)

    def worker_command(self) -> list[str]:
        """The command each worker process runs: this sweep, as a worker."""
        args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", self.space_file,
                "--engine", self.engine, "--results", self.results]
        for flag, value in (("--study", self.study), ("--trials", self.trials), ("--timeout", self.timeout_minutes),
                            ("--algo", self.algo), ("--storage", self.storage)):
            if value is not None:
                args += [flag, str(value)]
        return args


def worker_id() -> str | None:
    """This process's worker id when another sweep (or a person) started it to run trials only."""
    return os.environ.get("KERASTUNER_TUNER_ID") or os.environ.get("CNNBENCH_WORKER") or None


def is_worker() -> bool:
    return worker_id() is not None


@dataclass
class Sweep:
    """A validated request: the space, the study folder and the provenance, nothing written yet."""
    request: SweepRequest
    space: Space
    study: str
    paths: StudyPaths
    run: dict
    started: float  # Unix seconds: TIMEOUT counts from here, export included

    @property
    def trials(self) -> int:
        return self.request.trials or self.space.budget.trials

    @property
    def timeout(self) -> float | None:
        return self.request.timeout_minutes or self.space.budget.timeout_minutes


def prepare(request: SweepRequest) -> Sweep:
    """Validate the request. Raises SpaceError for a bad space or a study it does not match."""
    started = time.time()
    space = load_space(request.space_file)
    if request.trials is not None and request.trials < 1:
        raise SpaceError(f"--trials: must be at least 1, got {request.trials}")
    if request.timeout_minutes is not None and request.timeout_minutes <= 0:
        raise SpaceError(f"--timeout: must be above 0 minutes, got {request.timeout_minutes}")
    if request.workers < 0:
        raise SpaceError(f"--workers: must be 0 or more, got {request.workers}")
    if request.engine not in ENGINES:
        raise SpaceError(f"--engine: {request.engine!r} is not one of {', '.join(ENGINES)}")
    study = request.study or Path(request.space_file).stem
    if not study.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SpaceError(f"--study: {study!r} may hold only letters, digits, '-', '_' and '.'")
    paths = StudyPaths(Path(request.results) / study)
    earlier = read_json(paths.root / "run.json")
    if earlier and earlier.get("space_hash") != space.fingerprint():
        raise SpaceError(f"{request.space_file}: study {study!r} in {paths.root} was run with a different "
                         f"space (hash {earlier.get('space_hash')}, now {space.fingerprint()}); "
                         "use a new STUDY name, or the space it was made with")
    if earlier and earlier.get("engine") not in (None, request.engine):
        raise SpaceError(f"--engine: study {study!r} was run with {earlier.get('engine')}; "
                         "use a new STUDY name to compare engines")
    engine_module(request.engine)  # import errors surface before any work
    run = {
        "study": study, "engine": request.engine, "algo": request.algo or space.search.sampler,
        "space_file": request.space_file, "space_hash": space.fingerprint(),
        "space": space.model_dump(mode="json"), "seed": space.seed,
        "versions": provenance.versions(), "git_revision": provenance.git_revision(),
        "command": "cnnbench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "cnnbench sweep",
    }
    return Sweep(request, space, study, paths, run, started)


def run_sweep(sweep: Sweep, live: bool | None = None) -> dict:
    """Run the trials, keep the leaderboard current, export the best model. Returns a summary."""
    req, space, paths = sweep.request, sweep.space, sweep.paths
    engine = engine_module(req.engine)
    data = load_data(space.data, space.seed, Path(req.space_file).resolve().parent)
    run = {**sweep.run, "data": {"source": data.source, "fingerprint": data.fingerprint,
                                 "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sweep.started)),
           "started_unix": sweep.started, "timeout_minutes": sweep.timeout, "machine": runtime.machine()}
    # progress.csv counts minutes from the study's first start, across resumed runs
    run["first_started_unix"] = read_json(paths.root / "run.json").get("first_started_unix", sweep.started)
    deadline = Deadline.from_minutes(sweep.timeout, sweep.started)
    if deadline.end is not None:
        os.environ[DEADLINE_ENV] = repr(deadline.end)  # worker processes keep the same deadline
    paths.root.mkdir(parents=True, exist_ok=True)
    if not is_worker():  # the process that started the sweep describes it
        atomic_write(paths.root / "run.json", json_text(run))
        atomic_write(paths.root / "space.yaml", yaml.safe_dump(run["space"], sort_keys=False))

    before = engine.records(sweep.study, paths, req.storage) if engine.exists(sweep.study, paths, req.storage) else []
    finished = [r for r in before if r.state != "running"]
    best = max((r.val_accuracy for r in finished if r.state == "complete"), default=None)
    label = f"{sweep.study} worker {worker_id()}" if is_worker() else sweep.study
    progress = SweepProgress(label, sweep.trials, len(finished), best, sweep.timeout, live)

    def refresh(_record=None) -> list:
        records = engine.records(sweep.study, paths, req.storage)
        frame = leaderboard_frame(records, space)
        write_study_leaderboard(frame, paths.root, study_markdown(sweep.study, frame, run))
        atomic_write(paths.root / "progress.csv",
                     progress_frame(records, run["first_started_unix"]).to_csv(index=False))
        return records

    interrupted = False
    try:
        minutes_left = deadline.left() / 60 if deadline.end is not None else None
        engine.run(sweep.study, space, data, paths, sweep.trials, minutes_left, progress,
                   on_record=refresh, storage=req.storage, algo=req.algo,
                   workers=0 if is_worker() else req.workers, worker_command=req.worker_command(),
                   deadline=deadline)
    except KeyboardInterrupt:
        interrupted = True  # keep what finished: rank it and export it below
    finally:
        progress.close()
    records = refresh()
    if is_worker():  # the starting process ranks and exports once every worker is done
        return {"study": sweep.study, "records": records, "card": None, "interrupted": interrupted,
                "best_model": None, "worker": True}
    card = export_best(records, paths, data, run)
    write_global_leaderboard(Path(req.results))
    write_progress_plot(sweep, records, run, card)
    return {"study": sweep.study, "records": records, "card": card, "interrupted": interrupted,
            "best_model": str(paths.best / "model.keras") if card else None}


def write_progress_plot(sweep: Sweep, records: list, run: dict, card: dict | None) -> None:
    """progress.png: time to accuracy at a glance, with the exported model's test accuracy."""
    from cnnbench.plots import time_to_accuracy

    origin = run["first_started_unix"]
    cpu = run["machine"]["cpu"]
    time_to_accuracy(progress_frame(records, origin), sweep.paths.root / "progress.png",
                     f"{sweep.study}: {run['space_file']}, {cpu['model']} ({cpu['cores']} cores)",
                     test_accuracy=card["test"]["accuracy"] if card else None,
                     export_minutes=(time.time() - origin) / 60)


def write_global_leaderboard(results_root: Path) -> None:
    frame = studies_frame(results_root)
    atomic_write(results_root / "leaderboard.md",
                 "# All studies, best first\n\nOne row per study under results/: its best trial by validation "
                 "accuracy and that model's test accuracy. Rewritten by every `cnnbench sweep`.\n\n"
                 + markdown_table(frame))
