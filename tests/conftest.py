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
