"""Shared fixtures: the offline CIFAR-10 copy, a private decode cache, and the smoke space."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnnbench

cnnbench.prepare()  # as the cnnbench command does first: oneDNN on, a quiet TensorFlow

ROOT = Path(__file__).resolve().parents[1]
JPEG_ROOT = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
SPACES = ROOT / "search_spaces"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests never read or write the user's decode cache, and choose their data themselves
    (`make` exports CNNBENCH_CIFAR10, which would override every test's data path)."""
    os.environ["CNNBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("CNNBENCH_CIFAR10", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # ONNX and LiteRT files only where a test asks for them (test_deploy.py, the optuna smoke
    # sweep): converting and checking them takes seconds every export would pay
    os.environ["CNNBENCH_DEPLOY_FILES"] = "0"
    os.environ["CNNBENCH_LATENCY_SECONDS"] = "0.05"  # their latency figures: present, not precise


@pytest.fixture(scope="session")
def jpeg_root() -> Path:
    assert (JPEG_ROOT / "train").is_dir(), f"the offline CIFAR-10 copy is missing at {JPEG_ROOT}"
    return JPEG_ROOT


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600):
    """Run the installed ``cnnbench`` command as a user would; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cnnbench.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on loopback for the session (initdb into a temporary
    folder, pg_ctl on a free port, stopped at the end), or CNNBENCH_TEST_POSTGRES if set."""
    import glob
    import shutil
    import socket

    if os.environ.get("CNNBENCH_TEST_POSTGRES"):
        yield os.environ["CNNBENCH_TEST_POSTGRES"]
        return
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found[-1]:
        pytest.skip("PostgreSQL is not installed here (no initdb)")
    import tempfile

    bindir = Path(found[-1]).parent
    # not under pytest's own temporary folder: that one is private to us, and as root the
    # server runs as the postgres account, which must be able to reach its folder
    data = Path(tempfile.mkdtemp(prefix="cnnbench-postgres-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(data, account.pw_uid, account.pw_gid)
        as_user = lambda: (os.setgid(account.pw_gid), os.setuid(account.pw_uid))  # noqa: E731
    run = lambda *args: subprocess.run([str(bindir / args[0]), *args[1:]], check=True, capture_output=True,  # noqa: E731
                                       preexec_fn=as_user, cwd=data, timeout=120)
    run("initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")
    run("pg_ctl", "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://postgres:secret-pw@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


_SMOKE_STUDIES: dict = {}


def smoke_study(engine: str, tmp_path_factory, jpeg_root):
    """The smoke space swept once per session, as a user runs it (``cnnbench sweep``, the
    real trainer in its child process): 3 trials, its budget. Resuming is the contract
    tests' (both engines, in-process)."""
    from types import SimpleNamespace

    import pandas as pd

    if engine not in _SMOKE_STUDIES:
        results = tmp_path_factory.mktemp(f"results-{engine}")
        # the optuna sweep also writes and checks the deployment files, as `make sweep` does
        env = {"CNNBENCH_CIFAR10": str(jpeg_root), "CNNBENCH_DEPLOY_FILES": "1" if engine == "optuna" else "0"}
        args = ["sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "smoke", "--results", str(results),
                "--engine", engine]
        first = run_cli(*args, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        before = pd.read_csv(results / "smoke" / "leaderboard.csv")
        _SMOKE_STUDIES[engine] = SimpleNamespace(results=results, folder=results / "smoke", first=first,
                                                 before=before, env=env)
    return _SMOKE_STUDIES[engine]


_STAND_IN_STUDIES: dict = {}


def stand_in_study(engine: str, tmp_path_factory, jpeg_root):
    """The smoke space swept as a notebook would (``cnnbench.sweep``), in this process, by the
    gated stand-in trainer (no training; each trial hands back one tiny real model): 3
    trials, then the same study resumed to 4. The engines' contract, in seconds: the
    search, records, leaderboards, resume and export are all real."""
    import cnnbench
    from stand_in import stand_in_model_env

    if engine not in _STAND_IN_STUDIES:
        results = tmp_path_factory.mktemp(f"stand-in-{engine}")
        gate = results / "gate"
        gate.mkdir()
        (gate / "go").touch()
        env = {"CNNBENCH_STAND_IN_DIR": str(gate), "CNNBENCH_CIFAR10": str(jpeg_root), **stand_in_model_env()}
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            kw = dict(study="smoke", results=results, engine=engine, progress=False, trainer="stand_in:gated_train",
                      in_process=True)
            cnnbench.sweep(SPACES / "smoke.yaml", **kw)
            import pandas as pd

            before = pd.read_csv(results / "smoke" / "leaderboard.csv")
            cnnbench.sweep(SPACES / "smoke.yaml", trials=4, **kw)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        from types import SimpleNamespace

        _STAND_IN_STUDIES[engine] = SimpleNamespace(results=results, folder=results / "smoke", before=before)
    return _STAND_IN_STUDIES[engine]


def quick_sweep(space_file, results: Path, monkeypatch, jpeg_root, trainer: str | None = "stand_in:gated_train",
                **kw):
    """``cnnbench.sweep`` in this process with the gated stand-in (its gates open, so it
    trains at once): the whole sweep (search, final training, export, report) in seconds.
    ``trainer=None``: cnnbench's own, in this process. Returns the Study."""
    import cnnbench
    from stand_in import stand_in_model_env

    gate = Path(results) / "gate"
    gate.mkdir(parents=True, exist_ok=True)
    (gate / "go").touch()
    (gate / "go-final").touch()
    for name, value in {"CNNBENCH_STAND_IN_DIR": str(gate), "CNNBENCH_CIFAR10": str(jpeg_root),
                        **stand_in_model_env()}.items():
        monkeypatch.setenv(name, value)
    return cnnbench.sweep(space_file, results=results, progress=False, trainer=trainer, in_process=True, **kw)
