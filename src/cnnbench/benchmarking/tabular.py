"""Tabular benchmarks: every configuration of a finite space trained once, then replayed.

Comparing search strategies with real training needs many seeds times many trials, which a
2-core CPU cannot afford. HPO research answers this with tabular benchmarks (NAS-Bench-201,
LCBench, HPOBench): train every configuration once, keep its per-epoch learning curve and
time, then replay any strategy against the table in seconds, with the true optimum known.

``cnnbench tabulate SPACE`` is a grid sweep (so it resumes and runs on workers like any
sweep) whose trial records become ``table.csv``: one row per configuration and epoch.
``TableTrainer`` stands in for training during a replay: it answers from the table, and
a pruned or shortened trial sees the first epochs of the full run's curve (the usual
tabular approximation: a run stopped at epoch 3 of 8 is not a 3-epoch run).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from cnnbench.provenance import RunInfo
from cnnbench.reports.results import atomic_write, json_text, read_json
from cnnbench.space import Space, SpaceError, parse_space
from cnnbench.trials import StudyPaths, read_records, State
from cnnbench.trials import config_key as key  # a configuration's identity in the table

TABLE = "table.csv"
ABOUT = "table.json"


def require_finite(space: Space) -> None:
    """A table trains every configuration fully: a finite grid, no pruning."""
    if problem := space.grid_problem():
        raise SpaceError(problem.replace("a grid search needs", "a table needs"))
    if space.search.sampler != "grid" or space.search.pruner != "none":
        raise SpaceError(f"{space.source}: search: a table trains every configuration once and fully; "
                         "set search.sampler: grid and search.pruner: none")


def write_table(paths: StudyPaths, folder: Path | None = None) -> Path:
    """table.csv (and table.json, its provenance) from a tabulate study's trial records."""
    run = RunInfo.read(paths.root / "run.json").to_dict()
    rows, seen = [], set()
    for r in sorted(read_records(paths), key=lambda r: r.trial):
        if r.state != State.COMPLETE or key(r.values) in seen:  # workers may have drawn one twice
            continue
        seen.add(key(r.values))
        for h in r.history:
            rows.append({"config": key(r.values), **{f"param_{k}": v for k, v in r.values.items()},
                         "epoch": h["epoch"], "val_accuracy": h["val_accuracy"], "val_loss": h.get("val_loss"),
                         "seconds": h["seconds"], "parameter_count": r.parameter_count, "flops": r.flops})
    folder = folder or paths.root
    atomic_write(folder / TABLE, pd.DataFrame(rows).to_csv(index=False))
    about = {k: run.get(k) for k in ("study", "space_file", "space_hash", "space", "seed", "versions",
                                     "git_revision", "command", "data", "machine")}
    atomic_write(folder / ABOUT, json_text({**about, "configurations": len({r["config"] for r in rows})}))
    return folder / TABLE


@dataclass
class Table:
    """A loaded table: per configuration, its curve and per-epoch seconds."""
    space: Space
    curves: dict[str, pd.DataFrame]   # config key -> rows by epoch
    about: dict

    @classmethod
    def load(cls, path: Path) -> "Table":
        path = Path(path)
        if not path.exists():
            raise SpaceError(f"{path}: no such table")
        about = read_json(path.with_name(ABOUT))
        if "space" not in about:
            raise SpaceError(f"{path.with_name(ABOUT)}: missing or not a cnnbench table description")
        frame = pd.read_csv(path)
        curves = {k: rows.sort_values("epoch").reset_index(drop=True) for k, rows in frame.groupby("config")}
        space = parse_space(about["space"], str(path.with_name(ABOUT)))
        size = space.size()
        if size != len(curves):
            raise SpaceError(f"{path}: {len(curves)} configurations, but its space has {size}; build it again")
        return cls(space, curves, about)

    @property
    def best(self) -> float:
        """The true optimum: the best validation accuracy any configuration reached."""
        return max(curve["val_accuracy"].max() for curve in self.curves.values())

    def seconds(self, values: dict, epochs: int) -> float:
        return float(self.curves[key(values)]["seconds"].iloc[:epochs].sum())


class TableTrainer:
    """A trainer (``train_and_evaluate``'s signature) that answers from the table."""

    def __init__(self, table: Table):
        self.table = table

    def __call__(self, config: dict, data, on_epoch, seed: int = 0, log_dir=None):
        from cnnbench.trials import TrialResult

        values = {k: config[k] for k in self.table.space.searched() if k in config
                  and self.table.space.params[k].condition_holds(config)}
        curve = self.table.curves[key(values)]
        history = []
        for epoch in range(1, min(config["epochs"], len(curve)) + 1):
            row = curve.iloc[epoch - 1]
            logs = {"loss": 0.0, "val_accuracy": float(row["val_accuracy"]), "val_loss": float(row["val_loss"])}
            history.append({**logs, "epoch": epoch})
            on_epoch(epoch, logs)
        best = max(history, key=lambda h: h["val_accuracy"])
        return TrialResult(val_accuracy=best["val_accuracy"], val_loss=best["val_loss"], best_epoch=int(best["epoch"]),
                           epochs_run=len(history), train_seconds=float(curve["seconds"].iloc[:len(history)].sum()),
                           images_per_s=0.0, parameter_count=int(curve["parameter_count"].iloc[0]),
                           flops=int(curve["flops"].iloc[0]), history=history, model=None)


def tabulate(space_file: str, study: str | None, results: str, workers: int = 0, out: Path | None = None) -> Path:
    """Train every configuration of a finite space (a grid sweep: it resumes and takes
    workers) and write its table. Returns the table's path."""
    from cnnbench.space import load_space
    from cnnbench.sweep import SweepRequest, prepare, run_sweep

    space = load_space(space_file)
    require_finite(space)
    request = SweepRequest(space_file=space_file, study=study or f"table-{Path(space_file).stem}",
                           trials=space.size(), engine="optuna", algo="grid", results=results, workers=workers,
                           final=False)  # a table is every configuration's own score: nothing to retrain
    # Parallel workers can draw one grid point twice (Optuna's grid sampler only avoids
    # points already finished or running), leaving another untrained: top those up.
    for _ in range(3):
        sweep = prepare(request)
        summary = run_sweep(sweep)
        if summary["stopped_by"]:
            raise KeyboardInterrupt(summary["stopped_by"])
        records = read_records(sweep.paths)
        failed = [r for r in records if r.state == State.FAILED]
        if failed:
            raise SpaceError(f"{space_file}: a table needs every configuration, but trial {failed[0].trial} "
                             f"({failed[0].values}) failed: {failed[0].reason}")
        missing = (space.size() or 0) - len({key(r.values) for r in records if r.state == State.COMPLETE})
        if not missing:
            break
        finished = sum(r.state in (State.COMPLETE, State.PRUNED) for r in records)
        request = replace(request, trials=finished + missing)
    return write_table(sweep.paths, out)
