"""Where a result came from: library versions, the code's git revision, and a study's
run.json as a type (RunInfo)."""
from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path

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


@dataclass(frozen=True)
class RunInfo:
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
    def from_dict(cls, raw: dict) -> "RunInfo":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> "RunInfo":
        """The run.json at ``path`` (every field at its default when there is none)."""
        from cnnbench.files import read_json

        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if k not in _OMITTED_WHEN_UNSET or v is not None}
        return {**out, **self.extra}

    @property
    def cpu(self) -> dict:
        """The machine's CPU as runtime.machine() described it (model, cores, flags)."""
        return self.machine.get("cpu") or {}

    def searched(self) -> list[str]:
        """The parameters the space searched (not fixed)."""
        return [n for n, p in (self.space.get("params") or {}).items() if p.get("type") != "fixed"]


# Written only when they happened: a to_dict of a file without them leaves them out.
_OMITTED_WHEN_UNSET = ("search_ended_by",)
