"""Pictures of a study, as PNG files (matplotlib, no display or browser needed).

Computing stays in ``results``; this module only draws what it is given. ``study_plots``
writes every picture of a study into ``results/<study>/plots/``; ``cnnbench plots STUDY``
remakes them from the trial records, run.json and the model card.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from cnnbench.files import temporary_name
from cnnbench.provenance import ModelCard
from cnnbench.trials import State



def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, keep_suffix=True)
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    except BaseException:  # a full disk, a signal: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


PHASE_COLOURS = {"search": "tab:blue", "final training": "tab:green"}


def time_to_accuracy(progress: pd.DataFrame, path: Path, title: str, test_accuracy: float | None = None,
                     export_minutes: float | None = None,
                     curves: dict[int, tuple[list[float], list[float]]] | None = None,
                     phases: dict[str, tuple[float, float]] | None = None) -> Path:
    """Validation accuracy against elapsed minutes: each trial's epochs as a thin line
    (``curves``: trial -> minutes, accuracies), the best completed trial so far as a step,
    every finished trial as a point, and the exported model's test accuracy when exported;
    ``phases`` (``results.phase_spans``) shade the search and the final training."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, (start, end) in (phases or {}).items():
        ax.axvspan(start, end, color=PHASE_COLOURS.get(name, "tab:gray"), alpha=0.08, label=name)
    for i, (trial, (minutes, accuracy)) in enumerate(sorted((curves or {}).items())):
        ax.plot(minutes, accuracy, color="tab:blue", alpha=0.35, linewidth=1,
                label="each trial, epoch by epoch" if i == 0 else None)
    best = progress.dropna(subset=["best_val_accuracy"])
    if len(best):  # from the first completed trial on: before it there is nothing to export
        end = max(progress["minutes"].max(), export_minutes or 0)
        ax.step([*best["minutes"], end], [*best["best_val_accuracy"], best["best_val_accuracy"].iloc[-1]],
                where="post", color="tab:blue", linewidth=2, label="best completed trial so far")
    for state, style in ((State.COMPLETE, dict(marker="o", color="tab:blue")),
                         (State.PRUNED, dict(marker="o", mfc="none", color="tab:gray")),
                         (State.FAILED, dict(marker="x", color="tab:red"))):
        rows = progress[(progress["state"] == state) & progress["val_accuracy"].notna()]
        if len(rows):
            ax.plot(rows["minutes"], rows["val_accuracy"], linestyle="none", label=f"{state} trial", **style)
    if test_accuracy is not None and export_minutes is not None:
        ax.plot([export_minutes], [test_accuracy], marker="*", markersize=14, color="tab:green", linestyle="none",
                label=f"exported model, test accuracy {test_accuracy:.4f}")
    ax.set_xlabel("minutes since the study started")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def best_so_far(progress: pd.DataFrame, path: Path, title: str) -> Path:
    """Best completed validation accuracy against trials finished and against minutes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    best = progress["best_val_accuracy"]
    axes[0].step(np.arange(1, len(progress) + 1), best, where="post")
    axes[0].set_xlabel("trials finished")
    axes[1].step(progress["minutes"], best, where="post")
    axes[1].set_xlabel("minutes since the study started")
    axes[0].set_ylabel("best validation accuracy so far")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def importances(scores: dict[str, float], path: Path, title: str, evaluator: str) -> Path:
    plt = _pyplot()
    names = sorted(scores, key=lambda name: scores[name])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5), dpi=110)
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for validation accuracy ({evaluator})")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def parallel_coordinates(board: pd.DataFrame, params: list[str], path: Path, title: str) -> Path:
    """Each completed trial a line across the searched parameters, coloured by accuracy."""
    plt = _pyplot()
    done = board[board["state"] == State.COMPLETE].dropna(subset=["val_accuracy"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(params)), 4.5), dpi=110)
    axes_values = []
    for p in params:
        column = done[p]
        present = column.notna()  # a conditional parameter is empty where its condition failed
        numeric = pd.to_numeric(column, errors="coerce")
        if (numeric.notna() == present).all() and present.any() \
                and not column[present].map(lambda v: isinstance(v, (bool, np.bool_, str))).any():
            low, high = numeric.min(), numeric.max()  # NaN stays NaN: a gap in that trial's line
            axes_values.append(((numeric - low) / (high - low) if high > low else numeric * 0 + 0.5).to_numpy())
        else:
            labels = column.map(lambda v: str(v) if pd.notna(v) else "(inactive)")
            levels = sorted(labels.unique())
            axes_values.append(labels.map(lambda v: (levels.index(v) + 0.5) / len(levels)).to_numpy())
    cmap = plt.get_cmap("viridis")
    accuracy = done["val_accuracy"].to_numpy()
    span = (accuracy.max() - accuracy.min()) or 1.0
    for i in range(len(done)):
        ax.plot(range(len(params)), [a[i] for a in axes_values], color=cmap((accuracy[i] - accuracy.min()) / span),
                alpha=0.8)
    ax.set_xticks(range(len(params)), params, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"{title} (colour: validation accuracy, yellow best)", fontsize=10)
    return _save(fig, path)


def learning_curves(histories: dict[int, list[dict]], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for trial, history in histories.items():
        history = [h for h in history if "val_accuracy" in h]  # a rung run validates its last epoch only
        ax.plot([h["epoch"] for h in history], [h["val_accuracy"] for h in history], marker=".",
                label=f"trial {trial}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion(card: ModelCard, path: Path) -> Path:
    plt = _pyplot()
    names, matrix = card.classes, np.array(card.test["confusion_matrix"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    left.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        left.text(j, i, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > matrix.max() / 2 else "black")
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    left.set_yticks(range(len(names)), names, fontsize=8)
    left.set_xlabel("predicted")
    left.set_ylabel("true class")
    per_class = card.test["per_class_accuracy"]
    right.barh(names[::-1], [per_class[n] or 0 for n in names[::-1]], color="tab:blue")
    right.set_xlim(0, 1)
    right.set_xlabel("test accuracy per class")
    fig.suptitle(f"exported model (trial {card.trial}): test accuracy {card.test_accuracy:.4f}", fontsize=10)
    return _save(fig, path)


def fronts(board: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy against parameters and against CPU latency per image; each cost's Pareto
    front (no other trial both more accurate and cheaper) marked and labelled."""
    from cnnbench.reports.results import pareto_mask

    plt = _pyplot()
    done = board[board["state"] == State.COMPLETE].dropna(subset=["val_accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharey=True)
    for ax, cost, label in zip(axes, ("parameter_count", "latency_ms"), ("parameters", "CPU latency, ms per image")):
        rows = done.dropna(subset=[cost])
        ax.scatter(rows[cost], rows["val_accuracy"], color="tab:gray", label="trials")
        front = rows[pareto_mask(rows["val_accuracy"].to_numpy(), rows[cost].to_numpy())].sort_values(cost)
        ax.step(front[cost], front["val_accuracy"], where="post", color="tab:red", marker="o", label="Pareto front")
        for _, r in front.iterrows():
            ax.annotate(str(int(r["trial"])), (r[cost], r["val_accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if len(rows) and rows[cost].min() > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation accuracy")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
