"""The strategy comparison with real training instead of a table (``cnnbench compare
--live SPACE``): each strategy and seed is a sweep of some minutes on the space's data,
deadline included. No optimum is known, so it reports the best validation accuracy reached,
not regret; it costs strategies x seeds x minutes of the machine, which is why tables exist.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cnnbench.benchmarking.compare import choose
from cnnbench.trials import State


def compare_live(space_file: str, seeds: int, minutes: float, out: Path, names: list[str] | None = None,
                 results: Path | None = None) -> dict[str, Path]:
    """The same comparison with real training: each strategy and seed is a sweep of
    ``minutes`` (deadline included) on the space's data. No optimum is known, so the traces
    and summary give the best validation accuracy reached rather than regret."""
    import yaml

    from cnnbench.reports.report import markdown_table
    from cnnbench.reports.results import atomic_write
    from cnnbench.space import load_space
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    # before anything loads: a misspelt name is one line, not a KeyError later; the +sh
    # strategies are a table's (live, the space's own rungs, if any, are every strategy's)
    chosen = choose(names, multi_fidelity=False)
    base = load_space(space_file)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(results or folder)
        for strategy in chosen:
            for seed in range(seeds):
                doc = base.model_dump(mode="json", exclude_defaults=True)
                doc["seed"] = seed
                doc["final"] = False  # strategies are compared on what their search found
                doc["search"] = {**doc.get("search", {}), "pruner": strategy.pruner}
                if base.data.path:  # the variant lives elsewhere: keep the data where the space said
                    doc["data"]["path"] = str((Path(space_file).resolve().parent / base.data.path).resolve())
                variant = Path(folder) / f"{strategy.name}-{seed}.yaml"
                variant.write_text(yaml.safe_dump(doc))
                sweep = prepare(SweepRequest(space_file=str(variant), study=variant.stem, timeout_minutes=minutes,
                                             engine=strategy.engine, algo=strategy.algo, results=str(root),
                                             cache=False))  # every strategy pays for its own trainings
                summary_ = run_sweep(sweep, live=False)
                start = sweep.started
                best = -math.inf
                for r in sorted(summary_["records"], key=lambda r: r.finished_at or 0):
                    if r.state == State.COMPLETE:
                        best = max(best, r.val_accuracy)
                    rows.append({"strategy": strategy.name, "seed": seed, "trial": r.trial,
                                 "minutes": ((r.finished_at or start) - start) / 60, "state": r.state,
                                 "best": best if best > -math.inf else np.nan})
    traces = pd.DataFrame(rows)
    finals = traces.groupby(["strategy", "seed"])["best"].last().groupby("strategy").agg(["mean", "std", "count"])
    stats = finals.rename(columns={"mean": "best_val_accuracy_mean", "std": "best_val_accuracy_std",
                                   "count": "seeds"}).reset_index()
    atomic_write(out / "live_traces.csv", traces.to_csv(index=False))
    atomic_write(out / "live_summary.md", f"# Live comparison on `{space_file}`\n\n{seeds} seeds x {minutes} "
                 f"minutes per strategy, real training.\n\n" + markdown_table(stats))
    return {"traces": out / "live_traces.csv", "markdown": out / "live_summary.md"}
