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

A space with ``search.rungs`` makes a multi-fidelity table: every configuration trained
at every rung's fidelity (one grid study per rung, ``<study>-f<k>``), the rows marked with
their ``fidelity`` (the rung's index). Whether a cheap fidelity ranks configurations as the
largest does is then measured (``fidelity_agreement``: Spearman and top-k overlap), and
successive halving over the table's fidelities replays like any strategy (compare.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from cnnbench.provenance import RunInfo
from cnnbench.reports.results import atomic_write, json_text, read_json
from cnnbench.space import Space, SpaceError, parse_space
from cnnbench.trials import StudyPaths, best_epoch, read_records, State
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


def grid(space: Space) -> list[dict]:
    """Every configuration of a finite space, as a record's values (the searched parameters
    whose condition holds), each once."""
    import itertools

    names = space.searched()
    found: dict[str, dict] = {}
    for combination in itertools.product(*(space.candidate_values(n) or [] for n in names)):
        config = space.complete(dict(zip(names, combination)))
        values = {n: v for n, v in zip(names, combination) if space.params[n].condition_holds(config)}
        found.setdefault(key(values), values)
    return list(found.values())


def _rows(paths: StudyPaths, fidelity: int | None) -> list[dict]:
    rows, seen = [], set()
    for r in sorted(read_records(paths), key=lambda r: r.trial):
        if r.state != State.COMPLETE or key(r.values) in seen:  # workers may have drawn one twice
            continue
        seen.add(key(r.values))
        for h in r.history:
            rows.append({"config": key(r.values), **({} if fidelity is None else {"fidelity": fidelity}),
                         **{f"param_{k}": v for k, v in r.values.items()},
                         "epoch": h["epoch"], "val_accuracy": h.get("val_accuracy"), "val_loss": h.get("val_loss"),
                         "seconds": h["seconds"], "parameter_count": r.parameter_count, "flops": r.flops})
    return rows


def write_table(paths: StudyPaths | list[StudyPaths], folder: Path | None = None, space: Space | None = None) -> Path:
    """table.csv (and table.json, its provenance) from a tabulate study's trial records, or
    from one study per fidelity (a list, rung 0 first; ``space`` the space with its rungs)."""
    levels = paths if isinstance(paths, list) else [paths]
    run = RunInfo.read(levels[-1].root / "run.json").to_dict()
    rows = [row for k, level in enumerate(levels) for row in _rows(level, k if isinstance(paths, list) else None)]
    folder = folder or levels[0].root
    atomic_write(folder / TABLE, pd.DataFrame(rows).to_csv(index=False))
    about = {k: run.get(k) for k in ("study", "space_file", "space_hash", "space", "seed", "versions",
                                     "git_revision", "command", "data", "machine")}
    if space is not None:  # the space with its rungs (each study's own has one fidelity fixed)
        about.update(space=space.model_dump(mode="json"), space_hash=space.fingerprint(),
                     studies=[level.root.name for level in levels], fidelities=[dict(r) for r in space.search.rungs])
    atomic_write(folder / ABOUT, json_text({**about, "configurations": len({r["config"] for r in rows})}))
    if space is not None:
        agreement = fidelity_agreement(Table.load(folder / TABLE))
        atomic_write(folder / "fidelities.csv", agreement.to_csv(index=False))
    return folder / TABLE


@dataclass
class Table:
    """A loaded table: per configuration, its curve and per-epoch seconds; in a
    multi-fidelity table, per fidelity too (``curves`` are the largest fidelity's, the one
    regret is measured at)."""
    space: Space
    curves: dict[str, pd.DataFrame]   # config key -> rows by epoch (the largest fidelity)
    about: dict
    levels: dict[int, dict[str, pd.DataFrame]] = field(default_factory=dict)  # fidelity -> config -> rows

    @classmethod
    def load(cls, path: Path) -> "Table":
        path = Path(path)
        if not path.exists():
            raise SpaceError(f"{path}: no such table")
        about = read_json(path.with_name(ABOUT))
        if "space" not in about:
            raise SpaceError(f"{path.with_name(ABOUT)}: missing or not a cnnbench table description")
        frame = pd.read_csv(path)
        space = parse_space(about["space"], str(path.with_name(ABOUT)))
        multi = "fidelity" in frame.columns  # a plain table is one level, -1
        levels: dict[int, dict[str, pd.DataFrame]] = {
            int(level): {k: rows.sort_values("epoch").reset_index(drop=True) for k, rows in part.groupby("config")}
            for level, part in (frame.groupby("fidelity") if multi else [(-1, frame)])}
        if multi and sorted(levels) != list(range(len(space.search.rungs))):
            raise SpaceError(f"{path}: fidelities {sorted(levels)}, but its space has {len(space.search.rungs)} "
                             "rungs; build it again")
        size = space.size()
        for level, curves in levels.items():
            if size != len(curves):
                where = f" at fidelity {level}" if multi else ""
                raise SpaceError(f"{path}: {len(curves)} configurations{where}, but its space has {size}; "
                                 "build it again")
        return cls(space, levels[max(levels)], about, levels if multi else {})

    @property
    def fidelities(self) -> list[dict]:
        """The rung settings of a multi-fidelity table, cheapest first ([] for a plain table)."""
        return list(self.space.search.rungs) if self.levels else []

    @property
    def best(self) -> float:
        """The true optimum: the best validation accuracy any configuration reached (at the
        largest fidelity)."""
        return max(curve["val_accuracy"].max() for curve in self.curves.values())

    def curve(self, values: dict, fidelity: int | None = None) -> pd.DataFrame:
        return (self.curves if fidelity is None or not self.levels else self.levels[fidelity])[key(values)]

    def seconds(self, values: dict, epochs: int, fidelity: int | None = None) -> float:
        return float(self.curve(values, fidelity)["seconds"].iloc[:epochs].sum())

    def fidelity_of(self, config: dict) -> int | None:
        """Which of the table's fidelities ``config`` trains at (None: a plain table): the one
        it matches exactly, else the first whose other settings it has and whose epochs it
        does not exceed (Hyperband's shortened brackets: the first epochs of that curve)."""
        from cnnbench.knobs import coerce

        if not self.levels:
            return None
        own_epochs = self.space.complete({})["epochs"]
        for exact in (True, False):
            for k, rung in enumerate(self.fidelities):
                if not all(name in config and coerce(name, config[name]) == coerce(name, value)
                           for name, value in rung.items() if name != "epochs"):
                    continue
                epochs = int(rung.get("epochs", own_epochs))
                if config["epochs"] == epochs or (not exact and config["epochs"] < epochs):
                    return k
        raise SpaceError(f"a trial at train_images {config.get('train_images')}, epochs {config.get('epochs')}: "
                         "none of the table's fidelities")


def fidelity_agreement(table: Table, tops=(3, 5, 10)) -> pd.DataFrame:
    """How far each fidelity's ranking of the configurations holds at the largest: Spearman's
    rank correlation of their scores (a trial's best epoch, as a record scores it) with the
    largest fidelity's, and the share of the largest fidelity's top k found in its own top k;
    with the median minutes one configuration costs there."""
    from scipy.stats import spearmanr

    top = max(table.levels)
    truth = pd.Series({k: c["val_accuracy"].max() for k, c in table.levels[top].items()})
    rows = []
    for level, curves in sorted(table.levels.items()):
        score = pd.Series({k: c["val_accuracy"].max() for k, c in curves.items()})[truth.index]
        row = {"fidelity": level, "setting": table.space.rung_name(level),
               "spearman_with_largest": float(spearmanr(score, truth)[0]),
               "minutes_per_configuration": float(pd.Series([c["seconds"].sum() for c in curves.values()]).median() / 60)}
        for k in tops:
            if k < len(truth):
                row[f"top{k}_overlap"] = len(set(score.nlargest(k).index) & set(truth.nlargest(k).index)) / k
        rows.append(row)
    return pd.DataFrame(rows)


class TableTrainer:
    """A trainer (``train_and_evaluate``'s signature) that answers from the table."""

    def __init__(self, table: Table):
        self.table = table

    def __call__(self, config: dict, data, on_epoch, seed: int = 0, log_dir=None):
        from cnnbench.trials import TrialResult

        values = {k: config[k] for k in self.table.space.searched() if k in config
                  and self.table.space.params[k].condition_holds(config)}
        curve = self.table.curve(values, self.table.fidelity_of(config))
        history = []
        for epoch in range(1, min(config["epochs"], len(curve)) + 1):
            row = curve.iloc[epoch - 1]
            logs: dict = {"loss": 0.0}
            if pd.notna(row["val_accuracy"]):  # a table of rungs that validate their last epoch only has gaps
                logs.update(val_accuracy=float(row["val_accuracy"]), val_loss=float(row["val_loss"]))
            history.append({**logs, "epoch": epoch})
            on_epoch(epoch, logs)
        best = best_epoch(history)
        return TrialResult(val_accuracy=best.get("val_accuracy"), val_loss=best.get("val_loss"),
                           best_epoch=int(best["epoch"]),
                           epochs_run=len(history), train_seconds=float(curve["seconds"].iloc[:len(history)].sum()),
                           images_per_s=0.0, parameter_count=int(curve["parameter_count"].iloc[0]),
                           flops=int(curve["flops"].iloc[0]), history=history, model=None)


def tabulate(space_file: str, study: str | None, results: str, workers: int = 0, out: Path | None = None) -> Path:
    """Train every configuration of a finite space (a grid sweep: it resumes and takes
    workers; with rungs, one per fidelity) and write its table. Returns the table's path."""
    from cnnbench.space import load_space

    space = load_space(space_file)
    require_finite(space)
    name = study or f"table-{Path(space_file).stem}"
    if space.search.rungs:  # a multi-fidelity table: every configuration at every rung, one study each
        levels = [_tabulate_one(space, replace(_request(space_file, f"{name}-f{k}", space, results, workers),
                                               at_rung=k)) for k in range(len(space.search.rungs))]
        return write_table(levels, out or Path(results) / name, space)
    return write_table(_tabulate_one(space, _request(space_file, name, space, results, workers)), out)


def _request(space_file: str, study: str, space: Space, results: str, workers: int):
    from cnnbench.sweep import SweepRequest

    # A table is every configuration's own score: nothing to retrain, and no best model to
    # export and verify (that took minutes per level).
    return SweepRequest(space_file=space_file, study=study, trials=space.size(), engine="optuna", algo="grid",
                        results=results, workers=workers, final=False, export=False)


def _tabulate_one(space: Space, request) -> StudyPaths:
    """One grid study of every configuration (resumed if it exists); its folder."""
    from cnnbench.sweep import prepare, run_sweep

    # A grid study may lack configurations its sampler counts as visited (before 2026-12-06
    # each worker shuffled the grid with its own seed, so one grid id meant a different
    # configuration in each): the missing ones are queued by their values and trained.
    for _ in range(3):
        sweep = prepare(request)
        summary = run_sweep(sweep)
        if summary["stopped_by"]:
            raise KeyboardInterrupt(summary["stopped_by"])
        records = read_records(sweep.paths)
        failed = [r for r in records if r.state == State.FAILED]
        if failed:
            raise SpaceError(f"{request.space_file}: a table needs every configuration, but trial {failed[0].trial} "
                             f"({failed[0].values}) failed: {failed[0].reason}")
        done = {key(r.values) for r in records if r.state == State.COMPLETE}
        missing = [values for values in grid(space) if key(values) not in done]
        if not missing:
            break
        from cnnbench.engines.optuna.study import enqueue_configurations

        enqueue_configurations(sweep.paths.root, request.study, missing)
        finished = sum(r.state in (State.COMPLETE, State.PRUNED) for r in records)
        request = replace(request, trials=finished + len(missing))
    return sweep.paths
