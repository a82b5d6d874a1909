"""Where a result came from: library versions, the code's git revision, a study's run.json
(RunInfo) and an exported model's model_card.json (ModelCard) as types."""
from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing.Self is Python 3.11's; annotations are strings here (3.10 runs this)
    from typing import Self

PACKAGES = ("cnnbench", "tensorflow", "keras", "optuna", "keras-tuner", "numpy", "pandas", "pillow")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    """HEAD of the repository holding this code, with '-dirty' when files are modified."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


class _JsonFile:
    """A JSON file as a dataclass: defaults for what an older or hand-edited file lacks, one
    place to read it, and keys the type does not know kept in ``extra`` (a file read and
    written back loses nothing)."""

    extra: dict

    @classmethod
    def from_dict(cls, raw: dict) -> Self:
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in raw.items() if k in known},  # type: ignore[call-arg]
                   extra={k: v for k, v in raw.items() if k not in known})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}  # type: ignore[arg-type]
        out = {k: v for k, v in out.items() if k not in _OMITTED_WHEN_UNSET or v}
        return {**out, **self.extra}


@dataclass(frozen=True)
class RunInfo(_JsonFile):
    """A study's run.json: what it was made with. ``request.py`` and ``sweep.py`` write it;
    the reports, the API and the commands read it through this type instead of by key, so
    a field missing from an older or hand-edited file has one default here, not a ``?`` in
    one module and a KeyError in another. Keys it does not know are kept (``extra``), so a
    file read and written back loses nothing."""
    study: str = ""
    engine: str = ""
    algo: str | None = None
    storage: str | None = None
    space_file: str = ""
    space_hash: str = ""
    knob_defaults_hash: str | None = None
    space: dict = field(default_factory=dict)     # the resolved space (space.Space's JSON)
    seed: int | None = None
    set: list = field(default_factory=list)       # --set KNOB=VALUE settings, already in space
    versions: dict = field(default_factory=dict)
    git_revision: str | None = None
    command: str | None = None
    trainer: str | None = None
    warm_start: dict | None = None
    data: dict = field(default_factory=dict)      # source, fingerprint, split sizes
    started: str | None = None
    started_unix: float | None = None
    timeout_minutes: float | None = None
    machine: dict = field(default_factory=dict)   # runtime.machine(): cpu, threads, oneDNN, ...
    first_started_unix: float = 0.0               # the study's first run, across resumed ones
    search_ended_by: str | None = None            # a stop rule's reason, when one ended the search
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "RunInfo":
        """The run.json at ``path`` (every field at its default when there is none)."""
        from cnnbench.files import read_json

        return cls.from_dict(read_json(path))

    @property
    def cpu(self) -> dict:
        """The machine's CPU as runtime.machine() described it (model, cores, flags)."""
        return self.machine.get("cpu") or {}

    def searched(self) -> list[str]:
        """The parameters the space searched (not fixed)."""
        return [n for n, p in (self.space.get("params") or {}).items() if p.get("type") != "fixed"]


# Written only when they happened: a to_dict of a file without them leaves them out.
_OMITTED_WHEN_UNSET = ("search_ended_by", "runtimes")  # newer keys: an older file writes back as it was


@dataclass(frozen=True)
class ModelCard(_JsonFile):
    """An exported model's model_card.json (``reports/export.model_card`` makes it): what the
    model is, how it was chosen and trained, its test figures once, and the provenance of
    its study. The sections (test, validation, training, final, data) stay dicts: they are
    the figures, written as they were measured."""
    study: str | None = None
    engine: str = ""
    trial: int | None = None                      # the search trial it came from (None: nothing searched)
    classes: list = field(default_factory=list)   # output order
    input: str = ""
    image_size: int = 32
    output: str = ""
    hyperparameters: dict = field(default_factory=dict)  # the searched values
    config: dict = field(default_factory=dict)           # every knob it trained with
    validation: dict | None = None                # the search trial's: accuracy, loss, best_epoch, images
    test: dict = field(default_factory=dict)      # images, accuracy, per_class_accuracy, confusion_matrix
    parameter_count: int | None = None
    flops_per_image: int | None = None
    latency_ms: float | None = None
    chosen: str = "best validation accuracy"      # how it was chosen
    training: dict = field(default_factory=dict)  # of the exported model: epochs, seconds, images, seed, ...
    final: dict | None = None                     # the final training, when the model is its
    final_note: str | None = None                 # why there is none, or what happened to it
    data: dict = field(default_factory=dict)      # source, fingerprint
    space_file: str = ""
    space_hash: str = ""
    space: dict = field(default_factory=dict)
    seed: int | None = None
    versions: dict = field(default_factory=dict)
    git_revision: str | None = None
    command: str | None = None
    trainer: str | None = None
    machine: dict = field(default_factory=dict)
    # model.onnx, model.tflite, ...: status, agreement with model.keras, accuracy, size, latency
    # (cnnbench.deploy.verify); empty when the export predates them
    runtimes: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "ModelCard | None":
        """The card at ``path``, or None where there is none (nothing exported yet) or it is
        not a JSON object."""
        from cnnbench.files import read_json

        raw = read_json(path)
        return cls.from_dict(raw) if raw and isinstance(raw, dict) else None

    @property
    def test_accuracy(self) -> float | None:
        return self.test.get("accuracy")

    @property
    def final_train_images(self) -> int | None:
        return (self.final or {}).get("train_images")
