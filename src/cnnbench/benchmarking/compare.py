"""Which search strategy finds good CNNs fastest: replays against a table, many seeds each.

Each strategy runs through the real engines (Optuna, KerasTuner) and the real trial path
(``run_trial``, trial records, pruning on tenths of the schedule), with ``TableTrainer``
in place of training, in a throwaway folder. Simulated wall time is the table's measured
seconds of every epoch a strategy made a trial train. Regret is the true optimum minus the
best validation accuracy of a completed trial so far (what an export would pick).

``tpe+warm20`` is TPE started with ``--warm-start`` from a related earlier study: 20 random
configurations of the same space, scored as a study that trained them half as long saw
them (``related_study``); their cost is that earlier study's, not counted here.

On a multi-fidelity table (tabular.py), every plain strategy trains at the largest
fidelity, and the ``+sh`` strategies run cnnbench's successive halving (engines/
promotion.py) over some of the table's fidelities, ending at the largest; regret is always
measured at the largest. Strategies are compared at equal simulated time: the regret each
has reached by a common number of minutes, with a paired test against random search
corrected for the number of comparisons (Holm).
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
    # successive halving over these of a multi-fidelity table's fidelities ("all", "last two",
    # "first and last"), ending at the largest; None: every trial at the largest
    rungs: str | None = None

    def fidelities(self, count: int) -> list[int]:
        """Indices of the table's ``count`` fidelities this strategy's rungs train at."""
        last = count - 1
        return {"all": list(range(count)), "last two": [last - 1, last], "first and last": [0, last]}[self.rungs or ""]


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
    Strategy("tpe+sh", "optuna", "tpe", rungs="all"),
    Strategy("tpe+sh-last2", "optuna", "tpe", rungs="last two"),
    Strategy("tpe+sh-first-last", "optuna", "tpe", rungs="first and last"),
    Strategy("random+sh", "optuna", "random", rungs="all"),
)
MULTI_FIDELITY = tuple(s.name for s in STRATEGIES if s.rungs)  # only on a multi-fidelity table
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
        scores = curve["val_accuracy"].iloc[:epoch].dropna()  # none where only the last epoch was validated
        if scores.empty:
            continue
        pairs.append(("related", TrialRecord(trial=int(i), engine="optuna", values=json.loads(keys[i]),
                                             state=State.COMPLETE, val_accuracy=float(scores.max()))))
    return pairs


def strategy_space(table: Table, strategy: Strategy):
    """The space a strategy searches the table with: on a multi-fidelity table, fixed at
    the largest fidelity, or with the strategy's rungs (successive halving)."""
    from cnnbench.space.variants import at_fidelity, with_fixed

    rungs = table.fidelities
    if not rungs:
        return table.space
    if strategy.rungs is None:
        return at_fidelity(table.space, len(rungs) - 1)
    return with_fixed(table.space, {}, f"successive halving over fidelities {strategy.fidelities(len(rungs))}",
                      rungs=[rungs[k] for k in strategy.fidelities(len(rungs))])


def replay(table: Table, strategy: Strategy, seed: int, trials: int) -> pd.DataFrame:
    """One strategy, one seed: its trace, one row per finished trial (a run at any rung)
    in order; ``best`` and ``regret`` count only runs at the largest fidelity."""
    if strategy.rungs and not table.fidelities:
        from cnnbench.space import SpaceError

        raise SpaceError(f"{strategy.name}: successive halving over fidelities needs a multi-fidelity table")
    base = strategy_space(table, strategy)
    search = base.search.model_copy(update={"pruner": strategy.pruner, "sampler": "tpe", "prune_after_trials": 3})
    space = base.model_copy(update={"seed": seed, "search": search,
                                    "budget": base.budget.model_copy(update={"trials": trials})})
    top_rung = len(space.search.rungs) - 1 if space.search.rungs else None
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
        minutes += table.seconds(r.values, r.epochs_run or 0, table.fidelity_of(r.config)) / 60
        if r.state == State.COMPLETE and r.val_accuracy is not None and r.rung == top_rung:
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


def horizon_of(traces: pd.DataFrame) -> float:
    """The equal simulated time strategies are compared at: the median of every strategy
    and seed's total. A trace that ended sooner (its trials used up, or a Hyperband that
    stops by itself) counts what it had found by then; a longer one is cut there. (The
    shortest total would let the strategy that stops first decide: on the shipped table,
    4 minutes, where every strategy is still in its random start.)"""
    return float(traces.groupby(["strategy", "seed"])["minutes"].last().median())


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down correction of p-values for their number (family-wise error)."""
    ordered = sorted(pvalues.items(), key=lambda item: item[1])
    adjusted, running = {}, 0.0
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - i) * p))
        adjusted[name] = running
    return adjusted


def summary(traces: pd.DataFrame, table: Table, targets=(0.01, 0.005), horizon: float | None = None) -> pd.DataFrame:
    """Per strategy, at equal simulated time (``horizon`` minutes, default ``horizon_of``):
    the regret reached by then (mean and std over seeds; a seed with no run at the largest
    fidelity yet counts the worst configuration's regret), its rank, and a paired Wilcoxon
    signed-rank test of it against random search on the same seeds, Holm-corrected for the
    number of strategies compared. Also: the regret after all trials, simulated minutes to
    come within each target of the optimum (median over seeds; inf when never), and the
    regret after 10 and 30 trials."""
    from scipy.stats import wilcoxon

    horizon = horizon_of(traces) if horizon is None else horizon
    worst = table.best - min(curve["val_accuracy"].max() for curve in table.curves.values())
    finals = traces.groupby(["strategy", "seed"])["regret"].last().unstack("seed")
    at = pd.DataFrame({name: {seed: _regret_at(trace, horizon) for seed, trace in group.groupby("seed")}
                       for name, group in traces.groupby("strategy")}).T.fillna(worst)
    rows, pvalues = [], {}
    for name, final in finals.iterrows():
        row = {"strategy": name, f"regret_at_{horizon:.3g}_min_mean": at.loc[name].mean(),
               f"regret_at_{horizon:.3g}_min_std": at.loc[name].std(ddof=1),
               "final_regret_mean": final.mean(), "final_regret_std": final.std(ddof=1),
               "simulated_minutes_mean": traces[traces["strategy"] == name].groupby("seed")["minutes"].last().mean()}
        for target in targets:
            reached = []
            for _, trace in traces[traces["strategy"] == name].groupby("seed"):
                hit = trace[trace["regret"] <= target]
                reached.append(float(hit["minutes"].iloc[0]) if len(hit) else math.inf)
            row[f"minutes_to_within_{target:g}"] = float(np.median(reached))
        for n in REGRET_AFTER:
            after = traces[(traces["strategy"] == name) & (traces["trial"] <= n)].groupby("seed")["regret"].last()
            row[f"regret_after_{n}_mean"] = float(after.mean()) if len(after) else math.nan
        if name != BASELINE and BASELINE in at.index:
            diff = (at.loc[name] - at.loc[BASELINE]).dropna()
            if len(diff) >= 2:  # a paired test needs two seeds at least
                pvalues[name] = float(wilcoxon(diff).pvalue) if (diff != 0).any() else 1.0
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["p_vs_random"] = frame["strategy"].map(pvalues)
    frame["p_vs_random_holm"] = frame["strategy"].map(holm(pvalues))
    frame = frame.sort_values(f"regret_at_{horizon:.3g}_min_mean", kind="stable").reset_index(drop=True)
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


def choose(names: list[str] | None, multi_fidelity: bool = True) -> list[Strategy]:
    """The strategies named (all that apply when None: the ``+sh`` ones only on a
    multi-fidelity table); an unknown or inapplicable name is one SpaceError line."""
    from cnnbench.space import SpaceError

    unknown = set(names or []) - {s.name for s in STRATEGIES}
    if unknown:
        raise SpaceError(f"--strategies: unknown {', '.join(sorted(unknown))} (known: "
                         f"{', '.join(s.name for s in STRATEGIES)})")
    if not multi_fidelity and (wrong := sorted(set(names or []) & set(MULTI_FIDELITY))):
        raise SpaceError(f"--strategies: {', '.join(wrong)} run successive halving over a table's fidelities, "
                         "so they need a multi-fidelity table (cnnbench tabulate on a space with search.rungs)")
    return [s for s in STRATEGIES if (s.name in names if names else multi_fidelity or not s.rungs)]


def compare_table(table_path: Path, seeds: int, trials: int, out: Path | None = None,
                  names: list[str] | None = None, horizon: float | None = None) -> dict[str, Path]:
    """Replay strategies against a table; write traces.csv, summary.csv/.md and regret.png."""
    from cnnbench.reports.report import markdown_table
    from cnnbench.reports.results import atomic_write

    table = Table.load(table_path)
    chosen = choose(names, multi_fidelity=bool(table.fidelities))
    traces = run_comparison(table, seeds, trials, chosen)
    horizon = horizon_of(traces) if horizon is None else horizon
    stats = summary(traces, table, horizon=horizon)
    out = Path(out or Path(table_path).parent / "compare")
    atomic_write(out / "traces.csv", traces.to_csv(index=False))
    atomic_write(out / "summary.csv", stats.to_csv(index=False))
    levels = ""
    if table.fidelities:
        from cnnbench.benchmarking.tabular import fidelity_agreement

        levels = ("\n\nHow each fidelity ranks the configurations against the largest (regret is measured "
                  "there):\n\n" + markdown_table(fidelity_agreement(table)))
    atomic_write(out / "summary.md", f"# Strategies against `{table_path}`\n\n{len(table.curves)} configurations, "
                 f"optimum {table.best:.4f}; {seeds} seeds x {trials} trials per strategy, compared at "
                 f"{horizon:.3g} simulated minutes; "
                 "p-values: paired Wilcoxon against random search, Holm-corrected." + levels + "\n\n"
                 + markdown_table(stats))
    png = plot(traces, out / "regret.png", f"{len(table.curves)} configurations, {seeds} seeds, {trials} trials each")
    return {"traces": out / "traces.csv", "summary": out / "summary.csv", "markdown": out / "summary.md",
            "plot": png}
