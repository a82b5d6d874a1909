"""Shared fixtures: the offline CIFAR-10 copy, a private decode cache, and the smoke space."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """The smoke space swept once per session and engine, as a user runs it: 3 trials (its
    budget), then the same study resumed to 4. Shared by the contract and end-to-end tests."""
    from types import SimpleNamespace

    import pandas as pd

    if engine not in _SMOKE_STUDIES:
        results = tmp_path_factory.mktemp(f"results-{engine}")
        env = {"CNNBENCH_CIFAR10": str(jpeg_root)}
        args = ["sweep", "--space", str(SPACES / "smoke.yaml"), "--study", "smoke", "--results", str(results),
                "--engine", engine]
        first = run_cli(*args, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        before = pd.read_csv(results / "smoke" / "leaderboard.csv")
        second = run_cli(*args, "--trials", "4", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        _SMOKE_STUDIES[engine] = SimpleNamespace(results=results, folder=results / "smoke", first=first,
                                                 second=second, before=before, env=env)
    return _SMOKE_STUDIES[engine]
