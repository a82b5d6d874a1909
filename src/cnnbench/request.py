"""A sweep request and its validation: everything that can be wrong with the input (the
space, the arguments, the engine's algorithm, the storage, a study it does not match) is
found by ``prepare`` before anything is loaded or written; ``sweep.run_sweep`` then runs
the ``Sweep`` it returns.
"""
from __future__ import annotations

import errno
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbench import engines, provenance
from cnnbench.training.data import DataError
from cnnbench.engines.storage_url import masked, resolve, scrub
from cnnbench.training.isolation import DEFAULT_TRAINER, load_trainer
from cnnbench.files import read_json
from cnnbench.knobs import knob_defaults_hash
from cnnbench.space import Space, SpaceError, load_space, parse_space
from cnnbench.space.variants import at_fidelity, recipe_alone, with_settings
from cnnbench.trials import StudyPaths

GLOBAL_BOARD_TITLE = "# All studies, best first"  # results/leaderboard.md starts so: a folder of cnnbench's


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
    # --recipe-only: no search; the space's first start_with recipe (else its centre) is the
    # only training, on all training images, its epochs sized to fill the timeout (final.py)
    recipe_only: bool = False
    at_rung: int | None = None     # tabulate: every configuration at this rung's fidelity, no promotion
    export: bool = True            # False (tabulate): rank the trials, export and verify no best model
    cache: bool = True             # False (--no-cache): train every trial, even one already trained
    deterministic: bool = False    # --deterministic: TensorFlow's op determinism in every trial
    quantize: tuple[str, ...] = ()  # quantized LiteRT files the export adds (--quantize dynamic|int8)
    warm_start: tuple[str, ...] = ()  # earlier studies (same results folder) whose trials TPE starts from
    # "knob=value" (--set): that parameter fixed at that value, e.g. one ingredient of a
    # recipe taken out for an ablation; the value is read as YAML reads it (false, 0.2, 64-256-256).
    sets: tuple[str, ...] = ()
    command: str | None = None     # the command line that asked for it (the CLI sets it), for run.json
    # Who trains: "module:function" called as train.train_and_evaluate is (None: that one);
    # --trainer. in_process trains in this process instead of a child (a debugger, a notebook
    # with one GPU; a crash then takes the sweep with it).
    trainer: str | None = None
    in_process: bool = False
    # Set in a process another sweep (or a person) started to run trials only: its worker id
    # (KerasTuner's tuner id, or cnnbench's worker number) and, for Optuna's workers, that
    # number. The command line reads them from the environment (commands.worker_role).
    worker: str | None = None
    worker_index: int = 0
    # A Space given as an object (cnnbench.sweep(space)) instead of read from space_file,
    # which then only names it (run.json, the default study name, relative data paths).
    space: Any = None

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
        for setting in self.sets:
            args += ["--set", setting]
        if not self.start_with:
            args.append("--no-start-with")
        if self.recipe_only:
            args.append("--recipe-only")
        if self.at_rung is not None:
            args += ["--at-rung", str(self.at_rung)]
        if not self.cache:
            args.append("--no-cache")
        if self.deterministic:
            args.append("--deterministic")
        if self.trainer:
            args += ["--trainer", self.trainer]
        return args + (["--tensorboard"] if self.tensorboard else [])



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
    study_root = results / study
    folders = [study_root / name for name in ("trials", "best", "final")]
    # every entry of the study folder (optuna.journal, checkpoints/, kerastuner/, plots/, ...)
    inside = sorted(study_root.iterdir()) if study_root.is_dir() and not study_root.is_symlink() else []
    for part in dict.fromkeys([study_root, *folders, *inside]):
        if part.is_symlink() and root not in part.resolve().parents:
            raise SpaceError(f"{part}: a symbolic link to {part.resolve()}, outside the results folder {root}; "
                             "a study writes only inside its results folder")
        if part in folders and part.exists() and not part.is_dir():
            raise SpaceError(f"{part}: a file where the study keeps a folder; move it away")
    # A read-only folder (a mount, permissions) is found here, before TensorFlow and the data
    # load, not at the first write minutes later: OSError, which the CLI says in one line.
    # (the study's folder and the results folder, where the overall leaderboard goes; or the
    # nearest folder that exists, where they will be made)
    written = [p for p in (results / study, results) if p.exists()] or \
        [next(p for p in results.absolute().parents if p.exists())]
    for folder in written:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable, and a sweep writes its study there", str(folder))


def prepare(request: SweepRequest) -> Sweep:
    """Validate the request. Raises SpaceError for a bad space, argument, algorithm or
    storage, or a study it does not match; nothing has been written when it does."""
    started = time.time()
    space = _space_as_asked(request)
    _check_arguments(request)
    engine = engines.get(request.engine)
    # the recipe alone is another space than the search's: a study of its own by default
    study = request.study or Path(request.space_file).stem + ("-recipe-only" if request.recipe_only else "")
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
    _check_resume(request, study, paths, space)
    storage = resolve(request.storage)
    algo = engine.validate(space, request.algo, storage)
    if storage and hasattr(engine, "check_study"):  # the storage may hold it from another machine
        engine.check_study(study, storage, space)
    warm: list = []
    warm_note = ""
    if request.warm_start:
        if request.engine != "optuna":
            raise SpaceError("--warm-start: KerasTuner's oracles take no earlier trials through their public API; "
                             "use the Optuna engine")
        from cnnbench.engines.optuna.warm_start import gather

        warm, warm_note = gather(Path(request.results), list(request.warm_start), space)
    # Only the CLI knows a command line; an in-process sweep (compare --live, tabulate, a
    # notebook) says what it was instead of quoting its host process's argv.
    command = request.command or (f"in-process sweep (python {shlex.quote(sys.argv[0] or '-')}): "
                                  f"{request.space_file}, study {study}")
    run = {
        "study": study, "engine": request.engine, "algo": algo, "storage": masked(storage),
        "space_file": request.space_file, "space_hash": space.fingerprint(), "knob_defaults_hash": knob_defaults_hash(),
        "space": space.model_dump(mode="json"), "seed": space.seed,
        "set": list(request.sets),  # parameters the command line fixed (--set), already in "space"
        "versions": provenance.versions(), "git_revision": provenance.git_revision(),
        "command": scrub(command, storage),
        "trainer": request.trainer or DEFAULT_TRAINER,
        "warm_start": {"studies": list(request.warm_start), "trials": len(warm), "note": warm_note}
        if request.warm_start else None,
    }
    return Sweep(request, space, study, paths, run, started, algo, storage, warm)


def _space_as_asked(request: SweepRequest) -> Space:
    """The space file, with what the command line replaces in it (seed, fixed parameters,
    start_with, determinism)."""
    if request.space is not None:  # validated again: model_copy(update=...) skips validation
        space = parse_space(request.space.model_dump(mode="json"), request.space_file)
    else:
        space = load_space(request.space_file)
    if request.sets:
        space = with_settings(space, request.sets)
    if request.seed is not None:
        if not 0 <= request.seed < 2**31:
            raise SpaceError(f"--seed: must be from 0 to {2**31 - 1}, got {request.seed}")
        space = space.model_copy(update={"seed": request.seed})
    if not request.start_with:
        space = space.model_copy(update={"start_with": []})
    if request.deterministic:
        space = space.model_copy(update={"deterministic": True})
    if request.recipe_only:
        space = recipe_alone(space, request.final)
    if request.at_rung is not None:
        space = at_fidelity(space, request.at_rung)
    return space


def _check_arguments(request: SweepRequest) -> None:
    if request.trials is not None and request.trials < 1:
        raise SpaceError(f"--trials: must be at least 1, got {request.trials}")
    if request.timeout_minutes is not None and request.timeout_minutes <= 0:
        raise SpaceError(f"--timeout: must be above 0 minutes, got {request.timeout_minutes}")
    if request.workers < 0:
        raise SpaceError(f"--workers: must be 0 or more, got {request.workers}")
    if request.trainer:
        from cnnbench.training.runtime import silenced_stderr

        try:
            with silenced_stderr():  # its module may import TensorFlow
                load_trainer(request.trainer)
        except (ImportError, AttributeError, ValueError) as error:
            raise SpaceError(f"--trainer: {request.trainer!r} is not an importable module:function ({error})") from None
    if request.space is not None and request.workers:
        raise SpaceError("--workers: worker processes read the space from its file; give cnnbench.sweep the "
                         "file's path rather than a Space object")
    if request.in_process and request.workers:
        raise SpaceError("--workers: worker processes train in processes of their own; in_process trains in this "
                         "one: choose one of them")


def _check_resume(request: SweepRequest, study: str, paths: StudyPaths, space: Space) -> None:
    """A study that exists continues only with the space, knob defaults and engine it was
    made with (run.json says which)."""
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
