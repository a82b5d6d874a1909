"""What each thread setting gives: cnnbench's trial path on ref-net under several plans.

- intra-op threads = the usable cores, inter-op 1: cnnbench's plan on 2 cores;
- inter-op 2 beside it (ops side by side: a CNN's graph is mostly a chain);
- one intra-op thread (what a process gets when it does not size its pool to its cores);
- two workers, each pinned to its own core with one thread (``make sweep WORKERS=2``):
  both processes train at once and their images/s are added up.

Each setting runs in fresh processes (``CNNBENCH_INTRA_OP_THREADS`` / ``_INTER_OP_`` and
``CNNBENCH_CPUS``, the variables a sweep's workers get), at the precision ``auto`` resolves
to on this CPU, rounds interleaved. Used by ``benchmarks/run.py``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnbench.training import runtime  # noqa: E402


def _settings(n: int) -> dict[str, list[dict]]:
    """Setting name -> the environments of the processes that train at once, on ``n`` cores."""
    intra, inter = runtime.THREADS_ENV
    settings = {
        f"intra {n}, inter 1 (cnnbench on {n} cores)": [{intra: str(n), inter: "1"}],
        f"intra {n}, inter 2": [{intra: str(n), inter: "2"}],
        "intra 1, inter 1": [{intra: "1", inter: "1"}],
    }
    if n >= 2:
        settings[f"{n} workers x 1 core (WORKERS={n})"] = [
            {intra: "1", inter: "1", **runtime.worker_environment(i, n)} for i in range(n)]
    return settings


def _start(env: dict, policy: str, images: int, batch: int) -> subprocess.Popen:
    code = f"import arms, json; print(json.dumps(arms.cnnbench_trial({policy!r}, {images}, {batch})))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT / "benchmarks", text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def thread_settings(rounds: int, images: int, batch: int) -> dict:
    policy = runtime.resolve_precision("auto")
    settings = _settings(runtime.usable_cores())
    runs: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, envs in settings.items():
            processes = [_start(env, policy, images, batch) for env in envs]  # together, as workers train
            total = 0.0
            for process in processes:
                out, err = process.communicate()
                if process.returncode:
                    raise RuntimeError(f"thread setting {name!r} failed:\n{err[-3000:]}")
                total += json.loads(out.strip().splitlines()[-1])["images_per_s"]
            runs[name].append(round(total, 1))
    base = statistics.median(next(iter(runs.values())))
    rows = [{"setting": name, "images_per_s": round(statistics.median(v), 1), "rounds": v,
             "vs_cnnbench_plan": round(statistics.median(v) / base, 2)} for name, v in runs.items()]
    return {"precision": policy, "images": images, "rounds": rounds, "rows": rows}


if __name__ == "__main__":  # on its own: .venv/bin/python benchmarks/threads.py [rounds]
    import cnnbench

    cnnbench.prepare()  # oneDNN on, as in every cnnbench process

    measured = thread_settings(int(sys.argv[1]) if len(sys.argv) > 1 else 3, 4096, 128)
    print(json.dumps(measured, indent=2))
