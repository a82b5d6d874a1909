"""Pictures of a study, as PNG files (matplotlib, no display or browser needed).

Computing stays in ``results``; this module only draws the frames it is given.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def time_to_accuracy(progress: pd.DataFrame, path: Path, title: str, test_accuracy: float | None = None,
                     export_minutes: float | None = None) -> Path:
    """Best-so-far validation accuracy of completed trials against elapsed minutes, every
    finished trial as a point, and the exported model's test accuracy where it was exported."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    best = progress.dropna(subset=["best_val_accuracy"])
    if len(best):
        ax.step([0.0, *best["minutes"]], [best["best_val_accuracy"].iloc[0], *best["best_val_accuracy"]],
                where="post", color="tab:blue", label="best validation accuracy so far")
        ax.plot([], [])  # keep colours stable
    for state, style in (("complete", dict(marker="o", color="tab:blue")),
                         ("pruned", dict(marker="o", mfc="none", color="tab:gray")),
                         ("failed", dict(marker="x", color="tab:red"))):
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
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
