"""One sweep from start to finish: validate, load data, run an engine, rank, export.

Everything that can be wrong with the input (the space, the arguments, the engine's
algorithm, the storage) is checked before anything is written. Every trial keeps its own
record (``trials.py``), and the leaderboard and progress files are rewritten from those
records after every trial and once more at the end, so what is on disk after any stop
matches what was done.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnbench import engines, provenance, runtime, trials
from cnnbench import final as final_training
from cnnbench.data import DataError, load_data
from cnnbench.deadline import DEADLINE_ENV, Deadline
from cnnbench.engines.base import StudyJob
from cnnbench.export import export_best
from cnnbench.isolation import DEFAULT_TRAINER, TrialRunner
from cnnbench.pages import write_report
from cnnbench.report import SweepProgress, markdown_table, study_markdown
from cnnbench.results import (atomic_write, epoch_curves, json_text, leaderboard_frame, progress_frame,
                              read_json, studies_frame, write_study_leaderboard)
from cnnbench.space import Space, SpaceError, load_space
from cnnbench.engines.storage_url import masked, resolve, scrub
from cnnbench.trials import StudyPaths


@dataclass
class SweepRequest:
    space_file: str
    study: str | None = None
    trials: int | None = None
    timeout_minutes: float | None = None
    engine: str = "optuna"
    algo: str | None = None        # sampler (optuna) or tuner (kerastuner); default from the space
    storage: str | None = None     # Optuna RDB URL (or @file); default: a journal file in the study folder
    results: str = "results"
    workers: int = 0               # processes to start on this machine (KerasTuner: plus a chief)
    tensorboard: bool = False      # per-trial TensorBoard logs
    final: bool | None = None      # False: no final training (--no-final); None: as the space says
    seed: int | None = None        # replaces the space's seed (--seed): another run of the same recipe
    start_with: bool = True        # False (--no-start-with): the search on its own, as without a known recipe
    cache: bool = True             # False (--no-cache): train every trial, even one already trained
    deterministic: bool = False    # --deterministic: TensorFlow's op determinism in every trial
    warm_start: tuple[str, ...] = ()  # earlier studies (same results folder) whose trials TPE starts from
    command: str | None = None     # the command line that asked for it (the CLI sets it), for run.json

    def worker_command(self) -> list[str]:
        """The command each worker process runs: this sweep, as a worker. The storage URL
        travels in the environment, never on a command line that ``ps`` shows."""
        args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", self.space_file,
                "--engine", self.engine, "--results", self.results]
        for flag, value in (("--study", self.study), ("--trials", self.trials), ("--timeout", self.timeout_minutes),
                            ("--algo", self.algo)):
            if value is not None:
                args += [flag, str(value)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if not self.start_with:
            args.append("--no-start-with")
        if not self.cache:
            args.append("--no-cache")
        if self.deterministic:
            args.append("--deterministic")
        return args + (["--tensorboard"] if self.tensorboard else [])


class _CallableModule(types.ModuleType):
    """``import cnnbench.sweep`` binds this module to the name ``cnnbench.sweep``, which is
    also the API's function (cnnbench/__init__.py): calling the module calls the function,
    so a notebook's ``cnnbench.sweep(...)`` works whatever was imported before."""

    def __call__(self, *args, **kwargs):
        from cnnbench.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


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
    algo: str       # the algorithm that actually runs
    storage: str | None
    warm: list = field(default_factory=list)  # (study, record) pairs a new Optuna study starts from

    @property
    def trials(self) -> int:
        return self.request.trials or self.space.budget.trials

    @property
    def timeout(self) -> float | None:
        return self.request.timeout_minutes or self.space.budget.timeout_minutes

    @property
    def final(self) -> bool:
        """Whether the best configuration is trained once more on all training images."""
        return self.space.final if self.request.final is None else self.request.final and self.space.final

    @property
    def search_needed(self) -> bool:
        """False for a single-configuration space with the final training on: the final
        training is then the only training there is."""
        return not (self.final and self.space.size() == 1)


MAX_STUDY_NAME = 120


def knob_defaults_hash() -> str:
    """A short hash of every knob's default: a space names only what it sets, so a changed
    default changes what a resumed study's new trials would train."""
    import hashlib
    import json

    from cnnbench.knobs import default_config

    return hashlib.sha256(json.dumps(default_config(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_fingerprint(data) -> str:
    """The data and its split into training and validation: a score is only reusable
    (engines/cache.py) on the very images it was trained and validated on."""
    import hashlib

    digest = hashlib.sha256(f"{data.fingerprint}/{len(data.y_train)}/{len(data.y_test)}".encode())
    digest.update(data.x_val.tobytes())
    digest.update(data.y_val.tobytes())
    return f"{data.fingerprint}/{digest.hexdigest()[:12]}"


def check_same_data(paths: StudyPaths, data) -> None:
    """A resumed study trains on the data it was made with (CNNBENCH_CIFAR10 or the space's
    path may point elsewhere now); DataError before anything is written otherwise."""
    earlier = (read_json(paths.root / "run.json").get("data") or {}).get("fingerprint")
    if earlier and earlier != data.fingerprint:
        raise DataError(f"{data.source}: study {paths.root.name!r} was made with other data (fingerprint {earlier}, "
                        f"now {data.fingerprint}); point CNNBENCH_CIFAR10 at the data it was made with, or use a "
                        "new STUDY name")


def check_results_folder(results: Path, study: str) -> None:
    """The results folder and the study's folders in it are folders (or do not exist yet),
    and none is a symbolic link leading out of the results folder: nothing a sweep writes
    may land anywhere else. Raises SpaceError naming the path."""
    if results.exists() and not results.is_dir():
        raise SpaceError(f"--results: {results} is a file, not a folder")
    root = results.resolve()
    for part in (results / study, results / study / "trials", results / study / "best", results / study / "final"):
        if part.is_symlink() and root not in part.resolve().parents:
            raise SpaceError(f"{part}: a symbolic link to {part.resolve()}, outside the results folder {root}; "
                             "a study writes only inside its results folder")
        if part.exists() and not part.is_dir():
            raise SpaceError(f"{part}: a file where the study keeps a folder; move it away")


def prepare(request: SweepRequest) -> Sweep:
    """Validate the request. Raises SpaceError for a bad space, argument, algorithm or
    storage, or a study it does not match; nothing has been written when it does."""
    started = time.time()
    space = load_space(request.space_file)
    if request.seed is not None:
        if not 0 <= request.seed < 2**31:
            raise SpaceError(f"--seed: must be from 0 to {2**31 - 1}, got {request.seed}")
        space = space.model_copy(update={"seed": request.seed})
    if not request.start_with:
        space = space.model_copy(update={"start_with": []})
    if request.deterministic:
        space = space.model_copy(update={"deterministic": True})
    if request.trials is not None and request.trials < 1:
        raise SpaceError(f"--trials: must be at least 1, got {request.trials}")
    if request.timeout_minutes is not None and request.timeout_minutes <= 0:
        raise SpaceError(f"--timeout: must be above 0 minutes, got {request.timeout_minutes}")
    if request.workers < 0:
        raise SpaceError(f"--workers: must be 0 or more, got {request.workers}")
    engine = engines.get(request.engine)
    study = request.study or Path(request.space_file).stem
    if not study.replace("-", "").replace("_", "").replace(".", "").isalnum() or study.strip(".") == "":
        raise SpaceError(f"--study: {study!r} may hold only letters, digits, '-', '_' and '.'")
    if len(study) > MAX_STUDY_NAME:  # file names (trial-NNNN.json.<pid>.tmp inside it) stay under 255 bytes
        raise SpaceError(f"--study: {len(study)} characters; a study name is at most {MAX_STUDY_NAME}")
    check_results_folder(Path(request.results), study)
    paths = StudyPaths(Path(request.results) / study)
    board = Path(request.results) / "leaderboard.md"
    if board.exists() and not board.read_text(errors="replace").startswith(GLOBAL_BOARD_TITLE):
        raise SpaceError(f"--results: {board} exists and was not written by cnnbench; "
                         "choose a results folder of its own")
    earlier = read_json(paths.root / "run.json")
    if not earlier and (paths.root / "run.json").exists():  # unreadable: the resume check would be off
        raise SpaceError(f"{paths.root / 'run.json'}: unreadable (not JSON); it says which space this study "
                         "was made with: restore it, or use a new STUDY name")
    if earlier and earlier.get("space_hash") != space.fingerprint():
        raise SpaceError(f"{request.space_file}: study {study!r} in {paths.root} was run with a different "
                         f"space (hash {earlier.get('space_hash')}, now {space.fingerprint()}); "
                         "use a new STUDY name, or the space it was made with")
    if earlier and earlier.get("knob_defaults_hash") not in (None, knob_defaults_hash()):
        raise SpaceError(f"{request.space_file}: study {study!r} in {paths.root} was made when the knobs' "
                         f"defaults were different (code {earlier.get('git_revision') or 'unknown'}): its trials "
                         "trained other configurations than this code would; use a new STUDY name")
    if earlier and earlier.get("engine") not in (None, request.engine):
        raise SpaceError(f"--engine: study {study!r} was run with {earlier.get('engine')}; "
                         "use a new STUDY name to compare engines")
    storage = resolve(request.storage)
    algo = engine.validate(space, request.algo, storage)
    if storage and hasattr(engine, "check_study"):  # the storage may hold it from another machine
        engine.check_study(study, storage, space)
    warm, warm_note = [], ""
    if request.warm_start:
        if request.engine != "optuna":
            raise SpaceError("--warm-start: KerasTuner's oracles take no earlier trials through their public API; "
                             "use the Optuna engine")
        from cnnbench.engines.warm_start import gather

        warm, warm_note = gather(Path(request.results), list(request.warm_start), space)
    # Only the CLI knows a command line; an in-process sweep (compare --live, tabulate, a
    # notebook) says what it was instead of quoting its host process's argv.
    command = request.command or (f"in-process sweep (python {shlex.quote(sys.argv[0] or '-')}): "
                                  f"{request.space_file}, study {study}")
    run = {
        "study": study, "engine": request.engine, "algo": algo, "storage": masked(storage),
        "space_file": request.space_file, "space_hash": space.fingerprint(), "knob_defaults_hash": knob_defaults_hash(),
        "space": space.model_dump(mode="json"), "seed": space.seed,
        "versions": provenance.versions(), "git_revision": provenance.git_revision(),
        "command": scrub(command, storage),
        "warm_start": {"studies": list(request.warm_start), "trials": len(warm), "note": warm_note}
        if request.warm_start else None,
    }
    return Sweep(request, space, study, paths, run, started, algo, storage, warm)


def run_sweep(sweep: Sweep, live: bool | None = None) -> dict:
    """Run the trials, keep the leaderboard current, export the best model. Returns a summary."""
    req, space, paths = sweep.request, sweep.space, sweep.paths
    engine = engines.get(req.engine)
    space_dir = Path(req.space_file).resolve().parent
    data = load_data(space.data, space.seed, space_dir)
    check_same_data(paths, data)
    run = {**sweep.run, "data": {"source": data.source, "fingerprint": data.fingerprint,
                                 "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test),
                                 "skipped_unreadable": data.skipped},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sweep.started)),
           "started_unix": sweep.started, "timeout_minutes": sweep.timeout, "machine": runtime.machine()}
    # progress.csv counts minutes from the study's first start, across resumed runs
    run["first_started_unix"] = read_json(paths.root / "run.json").get("first_started_unix", sweep.started)
    deadline = Deadline.from_minutes(sweep.timeout, sweep.started)
    deadline.image_size, deadline.num_classes = int(data.x_train.shape[1]), len(data.class_names)
    if sweep.final:  # keep time for the best configuration's final training
        deadline.final_images = len(data.y_train) + len(data.y_val)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not is_worker():  # the process that started the sweep describes it
        atomic_write(paths.root / "run.json", json_text(run))
        atomic_write(paths.root / "space.yaml", yaml.safe_dump(run["space"], sort_keys=False))
    before = trials.read_records(paths)
    best = max((r.val_accuracy for r in before if r.state == "complete"), default=None)
    if (known := final_training.best_trial(before)) is not None:  # a rung's own fidelity is not its final's
        deadline.note_complete(space.complete(known.values) if known.rung is not None else known.config,
                               known.val_accuracy, known.rung)
    label = f"{sweep.study} worker {worker_id()}" if is_worker() else sweep.study
    progress = SweepProgress(label, sweep.trials, trials.finished_count(before), best, sweep.timeout, live)
    if data.skipped and not is_worker():
        shown = "; ".join(data.skipped[:5]) + (f"; and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else "")
        progress.say(f"skipped {len(data.skipped)} unreadable image(s) (listed in run.json): {shown}")

    reported: set[str] = set()

    def refresh(_record=None) -> list:
        unreadable: list[str] = []
        records = trials.read_records(paths, unreadable)
        for problem in sorted(set(unreadable) - reported):  # said once, never dropped silently
            progress.say(f"unreadable trial record, left out of the leaderboard: {problem}")
            reported.add(problem)
        frame = leaderboard_frame(records, space)
        final = trials.read_record(paths.final_record)
        write_study_leaderboard(frame, paths.root, study_markdown(sweep.study, frame, run, final))
        atomic_write(paths.root / "progress.csv",
                     progress_frame(records, run["first_started_unix"]).to_csv(index=False))
        return records

    # CNNBENCH_TRAINER names another trainer (module:function): the tests' stand-ins use it.
    runner = TrialRunner((space.data, space.seed, space_dir), os.environ.get("CNNBENCH_TRAINER") or DEFAULT_TRAINER)
    job = StudyJob(study=sweep.study, engine=req.engine, space=space, paths=paths, trials=sweep.trials,
                   progress=progress, runner=runner, algo=sweep.algo,
                   data_sizes=(len(data.y_train), len(data.y_val), len(data.y_test)), deadline=deadline,
                   storage=sweep.storage, workers=0 if is_worker() else req.workers,
                   worker_command=req.worker_command(), worker_index=int(os.environ.get("CNNBENCH_WORKER", 0)),
                   on_record=refresh, tensorboard=req.tensorboard, data_fingerprint=split_fingerprint(data),
                   cache=req.cache, warm_start=sweep.warm)
    stopped_by, final = None, None
    # Worker processes keep the same deadline; only while this sweep runs, so that a later
    # sweep in the same process (compare --live, tabulate, tests) does not inherit it.
    inherited = os.environ.get(DEADLINE_ENV)
    if deadline.end is not None:
        os.environ[DEADLINE_ENV] = repr(deadline.end)
    try:
        if sweep.search_needed:
            engine.run(job)
            if job.ended_by and not is_worker():  # a stop rule ended the search: say so where it lasts
                run["search_ended_by"] = job.ended_by
                atomic_write(paths.root / "run.json", json_text(run))
        if sweep.final and not is_worker():
            best_trial = final_training.best_trial(trials.read_records(paths))
            if best_trial is not None or not sweep.search_needed:
                final = final_training.run_final(job, best_trial, deadline.final_images)
            elif deadline.end is not None and not trials.finished_count(trials.read_records(paths)):
                # The hour held no search trial beside a final training (a slow machine: every
                # one was refused, none failed): rather than nothing, the known recipe (else
                # the space's centre) on all images, sized to the time left.
                recipe = space.start_with[0] if space.start_with else space.centre()
                final = final_training.run_final(job, None, deadline.final_images, recipe=recipe,
                                                 recipe_name="the start_with recipe" if space.start_with
                                                 else "the space's centre (no start_with recipe)")
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM: keep what finished, rank it, export it
        stopped_by = getattr(stop, "signum", 2)
        interrupted = trials.read_record(paths.final_record)
        if interrupted is not None and interrupted.state == "interrupted" and \
                (interrupted.started_at or 0) >= sweep.started:  # this run's final training, not an earlier one
            final = final_training.FinalOutcome(interrupted, "the final training was interrupted; exported the "
                                                "best trial's own model; run the same command again to do it")
    finally:
        if inherited is None:
            os.environ.pop(DEADLINE_ENV, None)
        else:
            os.environ[DEADLINE_ENV] = inherited
        runner.close(kill=stopped_by is not None)
        progress.close()
    records = refresh()
    summary = {"study": sweep.study, "records": records, "card": None, "stopped_by": stopped_by,
               "best_model": None, "worker": is_worker()}
    if is_worker():  # the starting process ranks and exports once every worker is done
        return summary
    card = export_best(records, paths, data, run, final=final)
    write_global_leaderboard(Path(req.results))
    write_progress_plot(sweep, records, run, card)
    report = write_report(paths)
    return {**summary, "card": card, "best_model": str(paths.best / "model.keras") if card else None,
            "report": str(report), "final": final}


def write_progress_plot(sweep: Sweep, records: list, run: dict, card: dict | None) -> None:
    """progress.png: time to accuracy at a glance, with the exported model's test accuracy."""
    from cnnbench.plots import time_to_accuracy

    origin = run["first_started_unix"]
    cpu = run["machine"]["cpu"]
    time_to_accuracy(progress_frame(records, origin), sweep.paths.root / "progress.png",
                     f"{sweep.study}: {run['space_file']}, {cpu['model']} ({cpu['cores']} cores)",
                     test_accuracy=card["test"]["accuracy"] if card else None,
                     export_minutes=(time.time() - origin) / 60, curves=epoch_curves(records, origin))


GLOBAL_BOARD_TITLE = "# All studies, best first"


def write_global_leaderboard(results_root: Path) -> None:
    frame = studies_frame(results_root)
    atomic_write(results_root / "leaderboard.md",
                 f"{GLOBAL_BOARD_TITLE}\n\nOne row per study under results/: its best trial by validation "
                 "accuracy and that model's test accuracy. Rewritten by every `cnnbench sweep`.\n\n"
                 + markdown_table(frame))
