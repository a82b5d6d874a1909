"""Trial records -> leaderboard DataFrames and the files under ``results/``.

Computing only: this module returns DataFrames and writes files atomically; ``report``
renders them for people.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cnnbench.files import atomic_write, json_text, read_json  # noqa: F401 (callers import them from here too)
from cnnbench.knobs import coerce
from cnnbench.provenance import ModelCard, RunInfo
from cnnbench.space import FixedParam, Space
from cnnbench.trials import RESULT_COLUMNS, TrialRecord, State

PROGRESS_COLUMNS = ["trial", "state", "minutes", "val_accuracy", "best_val_accuracy"]
_STATE_RANK = {State.COMPLETE: 0, State.PRUNED: 1, State.RUNNING: 2, State.INTERRUPTED: 3, State.FAILED: 4}


def leaderboard_frame(records: list[TrialRecord], space: Space) -> pd.DataFrame:
    """One row per trial, best first: completed by validation accuracy, then pruned, then failed.

    There is a column for every parameter of the space; a conditional one that was not
    active in a trial is left empty.
    """
    # A knob that is also a result (precision: ``auto`` in the space, what it resolved to in
    # the record) gets one column, the result: what the trial really trained with.
    param_names = [name for name in space.params if name not in RESULT_COLUMNS]
    rows = []
    for r in records:
        row = {"trial": r.trial, "state": r.state, "engine": r.engine}
        for name, p in space.params.items():
            # Fixed values are not chosen by the engine but were trained with: show them.
            active_fixed = isinstance(p, FixedParam) and p.condition_holds(r.config)
            row[name] = coerce(name, p.value) if isinstance(p, FixedParam) and active_fixed else r.values.get(name)
        row.update({column: getattr(r, column) for column in RESULT_COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["trial", "state", "engine", *param_names, *RESULT_COLUMNS])
    if frame.empty:
        return frame
    frame["_rank"] = frame["state"].map(_STATE_RANK).fillna(9)
    # Ranked within a data fidelity, the largest first: a score on 5,000 images is never
    # placed among scores on 45,000 (an unknown size is the whole split).
    # Successive-halving rungs first: the top rung (its scores on the most data) leads.
    frame["_rung"] = pd.to_numeric(frame["rung"], errors="coerce").fillna(float("inf"))
    frame["_images"] = pd.to_numeric(frame["train_images"], errors="coerce").fillna(float("inf"))
    frame = frame.sort_values(["_rank", "_rung", "_images", "val_accuracy", "trial"],
                              ascending=[True, False, False, False, True], na_position="last", kind="stable")
    frame = frame.drop(columns=["_rank", "_rung", "_images"]).reset_index(drop=True)
    if space.minimize:  # a multi-objective study: which trials no other beats on every objective
        frame.insert(2, "pareto", pareto_frame(frame, list(space.minimize)))
    return frame


def progress_frame(records: list[TrialRecord], origin: float) -> pd.DataFrame:
    """Finished trials in the order they finished: minutes since ``origin`` (Unix seconds,
    the study's first start) and the best validation accuracy of a completed trial so far
    (what an export at that moment would have picked)."""
    done = sorted((r for r in records if r.state in (State.COMPLETE, State.PRUNED, State.FAILED) and r.finished_at),
                  key=lambda r: r.finished_at or 0.0)
    rows, best = [], None
    for r in done:
        if r.state == State.COMPLETE and r.val_accuracy is not None:
            best = r.val_accuracy if best is None else max(best, r.val_accuracy)
        rows.append({"trial": r.trial, "state": r.state, "minutes": round(((r.finished_at or origin) - origin) / 60, 2),
                     "val_accuracy": r.val_accuracy, "best_val_accuracy": best})
    return pd.DataFrame(rows, columns=PROGRESS_COLUMNS)


def epoch_curves(records: list[TrialRecord], origin: float) -> dict[int, tuple[list[float], list[float]]]:
    """Per trial, its validation accuracy after each validated epoch against minutes since ``origin``:
    from the wall seconds of each epoch where the record has them, else the trial's span
    shared evenly among its epochs (records written before epochs were timed)."""
    curves = {}
    for r in records:
        if not r.history or not r.started_at:
            continue
        if all("seconds" in h for h in r.history):
            ends = np.cumsum([h["seconds"] for h in r.history]) + (r.started_at - origin)
        elif r.finished_at:
            ends = np.linspace(0, r.finished_at - r.started_at, len(r.history) + 1)[1:] + (r.started_at - origin)
        else:
            continue
        # a rung run with validate: last_epoch has a score at its last epoch only
        scored = [(float(t) / 60, h["val_accuracy"]) for t, h in zip(ends, r.history) if "val_accuracy" in h]
        if scored:
            curves[r.trial] = ([minutes for minutes, _ in scored], [score for _, score in scored])
    return curves


def write_study_leaderboard(frame: pd.DataFrame, study_dir: Path, markdown: str) -> None:
    atomic_write(study_dir / "leaderboard.csv", frame.to_csv(index=False))
    atomic_write(study_dir / "leaderboard.md", markdown)


def read_study_leaderboard(study_dir: Path) -> pd.DataFrame:
    return pd.read_csv(study_dir / "leaderboard.csv", keep_default_na=True)


def studies_frame(results_root: Path) -> pd.DataFrame:
    """One row per study under ``results_root``: its counts, best trial and exported test accuracy."""
    rows = []
    for csv in sorted(results_root.glob("*/leaderboard.csv")):
        study_dir = csv.parent
        board = read_study_leaderboard(study_dir)
        run = RunInfo.read(study_dir / "run.json")
        card = ModelCard.read(study_dir / "best" / "model_card.json")
        done = board[board["state"] == State.COMPLETE]
        best = done.iloc[0] if len(done) else None
        rows.append({
            "study": study_dir.name,
            "engine": run.engine or (board["engine"].iloc[0] if len(board) else ""),
            "space": run.space_file,
            "trials": len(board),
            "complete": int((board["state"] == State.COMPLETE).sum()),
            "pruned": int((board["state"] == State.PRUNED).sum()),
            "failed": int((board["state"] == State.FAILED).sum()),
            "interrupted": int((board["state"] == State.INTERRUPTED).sum()),
            "best_trial": None if best is None else int(best["trial"]),
            "val_accuracy": None if best is None else float(best["val_accuracy"]),
            "test_accuracy": card.test_accuracy if card else None,
            "final_train_images": card.final_train_images if card else None,
            "parameter_count": None if best is None else int(best["parameter_count"]),
            "flops": None if best is None else int(best["flops"]),
        })
    frame = pd.DataFrame(rows, columns=["study", "engine", "space", "trials", "complete", "pruned", "failed",
                                        "interrupted", "best_trial", "val_accuracy", "test_accuracy",
                                        "final_train_images", "parameter_count", "flops"])
    return frame.sort_values(["test_accuracy", "val_accuracy"], ascending=False,
                             na_position="last").reset_index(drop=True)


def pareto_mask(accuracy, *costs) -> np.ndarray:
    """True where no other point is at least as accurate and at most as costly in every
    cost, and strictly better in one (maximise accuracy, minimise each cost)."""
    acc = np.asarray(accuracy, float)
    cost = np.column_stack([np.asarray(c, float) for c in costs]) if costs else np.zeros((len(acc), 0))
    keep = np.ones(len(acc), bool)
    for i in range(len(acc)):
        covers = (acc >= acc[i]) & (cost <= cost[i]).all(axis=1)
        strictly = (acc > acc[i]) | (cost < cost[i]).any(axis=1)
        keep[i] = not (covers & strictly).any()
    return keep


def pareto_frame(frame: pd.DataFrame, costs: list[str]) -> pd.Series:
    """For each leaderboard row: whether the trial is Pareto-optimal for validation accuracy
    against all of ``costs`` together (completed trials only)."""
    out = pd.Series(False, index=frame.index)
    done = frame[frame["state"] == State.COMPLETE].dropna(subset=["val_accuracy", *costs])
    if len(done):
        out.loc[done.index] = pareto_mask(done["val_accuracy"], *(done[c] for c in costs))
    return out


def phase_spans(records: list[TrialRecord], final: TrialRecord | None, origin: float) -> dict[str, tuple[float, float]]:
    """Minutes (since ``origin``) the search and the final training took, for progress.png:
    the search from its first trial's start to its last trial's end, the final training from
    its start to its end (or its last epoch). Phases without times are left out."""
    spans = {}
    timed = [r for r in records if r.started_at and r.finished_at]
    if timed:
        spans["search"] = (round((min(r.started_at or 0 for r in timed) - origin) / 60, 2),
                           round((max(r.finished_at or 0 for r in timed) - origin) / 60, 2))
    if final is not None and final.started_at:
        end = final.finished_at or final.heartbeat_at or final.started_at
        spans["final training"] = (round((final.started_at - origin) / 60, 2), round((end - origin) / 60, 2))
    return spans
