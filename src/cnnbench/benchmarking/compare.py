"""Which search strategy finds good CNNs fastest: replays against a table, many seeds each.

Each strategy runs through the real engines (Optuna, KerasTuner) and the real trial path
(``run_trial``, trial records, pruning on tenths of the schedule), with ``TableTrainer``
in place of training, in a throwaway folder. Simulated wall time is the table's measured
seconds of every epoch a strategy made a trial train. Regret is the true optimum minus the
best validation accuracy of a completed trial so far (what an export would pick).

``tpe+warm20`` is TPE started with ``--warm-start`` from a related earlier study: 20 random
configurations of the same space, scored as a study that trained them half as long saw
them (``related_study``); their cost is that earlier study's, not counted here.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cnnbench import engines
from cnnbench.engines.base import SilentProgress, StudyJob
from cnnbench.training.isolation import InProcessRunner
from cnnbench.benchmarking.tabular import Table, TableTrainer
from cnnbench.trials import StudyPaths, read_records, State


@dataclass(frozen=True)
class Strategy:
    name: str
    engine: str
    algo: str
    pruner: str = "none"
    warm: int = 0  # trials of a related study added before sampling (``--warm-start``; Optuna)


STRATEGIES = (
    Strategy("random", "optuna", "random"),
    Strategy("tpe", "optuna", "tpe"),
    Strategy("cmaes", "optuna", "cmaes"),
    Strategy("tpe+median", "optuna", "tpe", "median"),
    Strategy("tpe+hyperband", "optuna", "tpe", "hyperband"),
    Strategy("tpe+warm20", "optuna", "tpe", warm=20),
    Strategy("kt-random", "kerastuner", "random"),
    Strategy("kt-bayesian", "kerastuner", "bayesian"),
    Strategy("kt-hyperband", "kerastuner", "hyperband"),
)
BASELINE = "random"
WARM_EPOCH_SHARE = 0.5  # the related study trained its configurations half as long
REGRET_AFTER = (10, 30)  # trials after which the summary gives each strategy's regret


def related_study(table: Table, count: int, seed: int) -> list:
    """What ``--warm-start`` would add from a related earlier study: ``count`` configurations
    of the same space drawn at random (seeded) and scored as that study saw them, trained
    for half the table's epochs. (study, record) pairs, as ``warm_start.gather`` gives."""
    import json

    from cnnbench.trials import TrialRecord

    keys = sorted(table.curves)
    picked = np.random.default_rng(10_000 + seed).choice(len(keys), size=min(count, len(keys)), replace=False)
    pairs = []
    for i in sorted(picked):
        curve = table.curves[keys[i]]
        epoch = max(1, int(len(curve) * WARM_EPOCH_SHARE))
        pairs.append(("related", TrialRecord(trial=int(i), engine="optuna", values=json.loads(keys[i]),
                                             state="complete",
                                             val_accuracy=float(curve["val_accuracy"].iloc[:epoch].max()))))
    return pairs


def replay(table: Table, strategy: Strategy, seed: int, trials: int) -> pd.DataFrame:
    """One strategy, one seed: its trace, one row per finished trial in order."""
    search = table.space.search.model_copy(update={"pruner": strategy.pruner, "sampler": "tpe",
                                                   "prune_after_trials": 3})
    space = table.space.model_copy(update={"seed": seed, "search": search,
                                           "budget": table.space.budget.model_copy(update={"trials": trials})})
    engine = engines.get(strategy.engine)
    with tempfile.TemporaryDirectory() as folder:
        paths = StudyPaths(Path(folder) / "replay")
        paths.root.mkdir()
        job = StudyJob(study="replay", engine=strategy.engine, space=space, paths=paths, trials=trials,
                       progress=SilentProgress(), runner=InProcessRunner(None, TableTrainer(table)),
                       algo=engine.validate(space, strategy.algo, None),
                       warm_start=related_study(table, strategy.warm, seed) if strategy.warm else [])
        with warnings.catch_warnings():  # e.g. scikit-learn's GP fit under KerasTuner's Bayesian oracle
            warnings.simplefilter("ignore")
            engine.run(job)
        records = read_records(paths)
    minutes, best = 0.0, -math.inf
    rows: list[dict] = []
    for r in sorted(records, key=lambda r: r.trial):
        if r.state not in (State.COMPLETE, State.PRUNED):
            continue
        minutes += table.seconds(r.values, r.epochs_run or 0) / 60
        if r.state == State.COMPLETE and r.val_accuracy is not None:
            best = max(best, r.val_accuracy)
        rows.append({"strategy": strategy.name, "seed": seed, "trial": len(rows) + 1, "minutes": minutes,
                     "best": best if best > -math.inf else np.nan, "regret": table.best - best if best > -math.inf
                     else np.nan, "state": r.state})
    return pd.DataFrame(rows)


def run_comparison(table: Table, seeds: int, trials: int, strategies=STRATEGIES) -> pd.DataFrame:
    """Every strategy on seeds 0..seeds-1: all traces, concatenated."""
    return pd.concat([replay(table, s, seed, trials) for s in strategies for seed in range(seeds)],
                     ignore_index=True)


def _regret_at(trace: pd.DataFrame, minutes: float) -> float:
    seen = trace[trace["minutes"] <= minutes]["regret"].dropna()
    return float(seen.iloc[-1]) if len(seen) else math.nan


def summary(traces: pd.DataFrame, table: Table, targets=(0.01, 0.005)) -> pd.DataFrame:
    """Per strategy: final regret mean and std over seeds, simulated minutes to come within
    each target of the optimum (median over seeds; inf when never), its rank, and a paired
    Wilcoxon signed-rank test of its final regret against random search on the same seeds."""
    from scipy.stats import wilcoxon

    finals = traces.groupby(["strategy", "seed"])["regret"].last().unstack("seed")
    rows = []
    for name, final in finals.iterrows():
        row = {"strategy": name, "final_regret_mean": final.mean(), "final_regret_std": final.std(ddof=1),
               "simulated_minutes_mean": traces[traces["strategy"] == name].groupby("seed")["minutes"].last().mean()}
        for target in targets:
            reached = []
            for _, trace in traces[traces["strategy"] == name].groupby("seed"):
                hit = trace[trace["regret"] <= target]
                reached.append(float(hit["minutes"].iloc[0]) if len(hit) else math.inf)
            row[f"minutes_to_within_{target:g}"] = float(np.median(reached))
        for n in REGRET_AFTER:
            at = traces[(traces["strategy"] == name) & (traces["trial"] <= n)].groupby("seed")["regret"].last()
            row[f"regret_after_{n}_mean"] = float(at.mean()) if len(at) else math.nan
        if name != BASELINE and BASELINE in finals.index:
            diff = (final - finals.loc[BASELINE]).dropna()
            row["p_vs_random"] = float(wilcoxon(diff).pvalue) if (diff != 0).any() else 1.0
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values("final_regret_mean").reset_index(drop=True)
    frame.insert(1, "rank", range(1, len(frame) + 1))
    return frame


def plot(traces: pd.DataFrame, path: Path, title: str) -> Path:
    """Regret against simulated minutes and against trials: mean over seeds, with a band from
    the 25th to the 75th percentile (regret is skewed and never below 0: no std band)."""
    from cnnbench.reports.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    horizon = traces["minutes"].max()
    grid = np.linspace(0, horizon, 200)
    for name, group in traces.groupby("strategy", sort=False):
        by_time = np.array([[_regret_at(t, m) for m in grid] for _, t in group.groupby("seed")])
        by_trial = group.pivot(index="trial", columns="seed", values="regret")
        for ax, x, values in ((axes[0], grid, by_time.T), (axes[1], by_trial.index, by_trial.to_numpy())):
            with warnings.catch_warnings():  # before a seed's first completed trial: all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values, axis=1)
                low, high = np.nanpercentile(values, 25, axis=1), np.nanpercentile(values, 75, axis=1)
            line, = ax.plot(x, mean, label=name)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.10)
    axes[0].set_xlabel("simulated minutes (the table's measured training time)")
    axes[1].set_xlabel("trials finished")
    axes[0].set_ylabel("regret: optimum - best validation accuracy so far")
    for ax in axes:
        ax.set_yscale("symlog", linthresh=1e-3)  # regret reaches 0 when the optimum is found
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def choose(names: list[str] | None) -> list[Strategy]:
    """The strategies named (all when None); an unknown name is one SpaceError line."""
    unknown = set(names or []) - {s.name for s in STRATEGIES}
    if unknown:
        from cnnbench.space import SpaceError

        raise SpaceError(f"--strategies: unknown {', '.join(sorted(unknown))} (known: "
                         f"{', '.join(s.name for s in STRATEGIES)})")
    return [s for s in STRATEGIES if not names or s.name in names]


def compare_table(table_path: Path, seeds: int, trials: int, out: Path | None = None,
                  names: list[str] | None = None) -> dict[str, Path]:
    """Replay strategies against a table; write traces.csv, summary.csv/.md and regret.png."""
    from cnnbench.reports.report import markdown_table
    from cnnbench.reports.results import atomic_write

    table = Table.load(table_path)
    chosen = choose(names)
    traces = run_comparison(table, seeds, trials, chosen)
    stats = summary(traces, table)
    out = Path(out or Path(table_path).parent / "compare")
    atomic_write(out / "traces.csv", traces.to_csv(index=False))
    atomic_write(out / "summary.csv", stats.to_csv(index=False))
    atomic_write(out / "summary.md", f"# Strategies against `{table_path}`\n\n{len(table.curves)} configurations, "
                 f"optimum {table.best:.4f}; {seeds} seeds x {trials} trials per strategy.\n\n"
                 + markdown_table(stats))
    png = plot(traces, out / "regret.png", f"{len(table.curves)} configurations, {seeds} seeds, {trials} trials each")
    return {"traces": out / "traces.csv", "summary": out / "summary.csv", "markdown": out / "summary.md",
            "plot": png}


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

    chosen = choose(names)  # before anything loads: a misspelt name is one line, not a KeyError later
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
