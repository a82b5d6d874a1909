"""Resident memory of a real sweep: after its first and after its 30th smoke trial.

The sweep (``cnnbench sweep`` on search_spaces/smoke.yaml, real training) runs as a user
runs it; its memory is the sum over its process tree (the sweep and its trial child),
read from /proc whenever a trial record appears. Used by ``benchmarks/run.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss_mb(pid: int) -> float:
    """Resident MB of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def sweep_memory(trials: int = 30) -> dict:
    with tempfile.TemporaryDirectory() as results:
        args = [sys.executable, "-m", "cnnbench.cli", "sweep", "--space", str(ROOT / "search_spaces" / "smoke.yaml"),
                "--study", "memory", "--results", results, "--trials", str(trials)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        folder, seen, peak = Path(results) / "memory" / "trials", {}, 0.0
        while proc.poll() is None:
            done = sum(json.loads(p.read_text()).get("state") not in ("running", None)
                       for p in folder.glob("trial-*.json")) if folder.exists() else 0
            rss = _tree_rss_mb(proc.pid)
            peak = max(peak, rss)
            for mark in (1, trials):
                if done >= mark and mark not in seen:
                    seen[mark] = round(rss, 1)
            time.sleep(0.2)
        if proc.returncode:
            raise RuntimeError(proc.stderr.read()[-2000:])
    return {"trials": trials, "rss_after_first_mb": seen.get(1), "rss_after_last_mb": seen.get(trials),
            "growth_mb": round(seen.get(trials, 0) - seen.get(1, 0), 1), "peak_mb": round(peak, 1)}


if __name__ == "__main__":
    os.environ.setdefault("CNNBENCH_CIFAR10", str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    print(json.dumps(sweep_memory()))
