"""A study's pictures and its one-page report: what ``cnnbench plots`` and ``cnnbench report``
write, and what every sweep leaves behind.

Made from the study's own files only (trial records, run.json, the model card), so they can
be remade at any time, on any machine, without the engine that ran the study.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pandas as pd

from cnnbench.provenance import ModelCard, RunInfo
from cnnbench.reports import plots
from cnnbench.reports.results import atomic_write, leaderboard_frame, progress_frame
from cnnbench.space import parse_space
from cnnbench.trials import StudyPaths, read_records, State

TOP_CURVES = 5  # learning curves drawn for this many best trials


def write_plots(paths: StudyPaths, importances: dict[str, float] | None = None) -> list[Path]:
    """Every picture of the study into ``plots/``; returns the files written. ``importances``
    (each searched parameter's share, e.g. ``engines.importances``) is drawn when given."""
    run = RunInfo.read(paths.root / "run.json")
    card = ModelCard.read(paths.best / "model_card.json")
    space = parse_space(run.space, str(paths.root / "run.json"))
    records = read_records(paths)
    board = leaderboard_frame(records, space)
    progress = progress_frame(records, run.first_started_unix)
    folder, name = paths.root / "plots", run.study or paths.root.name
    out = []
    if len(progress):
        out.append(plots.best_so_far(progress, folder / "best_so_far.png", f"{name}: best validation accuracy so far"))
    if importances:
        out.append(plots.importances(importances, folder / "importances.png", f"{name}: what mattered",
                                     "Optuna fANOVA"))
    searched = [p for p in space.searched() if p in board.columns]
    if searched and (board["state"] == State.COMPLETE).sum() >= 2:
        out.append(plots.parallel_coordinates(board, searched, folder / "parallel_coordinates.png", name))
    top = sorted((r for r in records if r.state == State.COMPLETE and r.history), key=lambda r: -(r.val_accuracy or 0.0))
    if top:
        out.append(plots.learning_curves({r.trial: r.history for r in top[:TOP_CURVES]},
                                         folder / "learning_curves.png", f"{name}: the best trials, epoch by epoch"))
    if card:
        out.append(plots.confusion(card, folder / "confusion_matrix.png"))
    if (board["state"] == State.COMPLETE).sum() >= 1:
        out.append(plots.fronts(board, folder / "accuracy_vs_cost.png", f"{name}: accuracy against cost"))
    return out


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(path.stem.replace('_', ' '))}</figcaption></figure>"


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td>{'' if pd.isna(v) else html.escape(str(round(v, 5) if isinstance(v, float) else v))}</td>"
                        for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _inline(text: str) -> str:
    """The card's inline Markdown (``**bold**``, ```code```) as HTML, the rest escaped."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def card_html(markdown: str) -> str:
    """The model card (export.card_markdown: headings, bullets, pipe tables, paragraphs) as
    HTML, so the page shows it as a person reads it, not as Markdown source."""
    out: list[str] = []
    table: list[str] = []
    bullets: list[str] = []

    def flush() -> None:
        if bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if table:
            head, *body = table
            out.append("<table class='card'><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row)
                                                        + "</tr>" for row in body) + "</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # the |---| rule under a table's head
                table.append(cells)  # type: ignore[arg-type]  # rows of cells
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)  # under the page's own h1/h2
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def searched_first(board: pd.DataFrame, space) -> tuple[pd.DataFrame, str]:
    """The leaderboard with what a person looks for on the left (trial, state, rung, the
    score, the searched parameters), the columns a space fixes folded into one line, and
    empty columns dropped."""
    fixed = [n for n in space.params if n not in space.searched() and n in board.columns]
    folded = ", ".join(f"{n}={board[n].dropna().iloc[0]}" for n in fixed if board[n].notna().any())
    lead = [c for c in ("trial", "state", "rung", "train_images", "val_accuracy") if c in board.columns]
    searched = [n for n in space.searched() if n in board.columns]
    rest = [c for c in board.columns if c not in lead + searched + fixed]
    shown = board[lead + searched + rest]
    return shown.loc[:, shown.notna().any() | (shown.columns == "trial")], folded


SORT_SCRIPT = """
document.querySelectorAll('#leaderboard th').forEach((th, column) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], up = th.dataset.order !== 'up';
  const key = tr => { const t = tr.children[column].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
    .forEach(tr => body.appendChild(tr));
  th.dataset.order = up ? 'up' : 'down';
}));
"""
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
font-size:12px}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{cursor:pointer;background:#eee;
position:sticky;top:0}figure{display:inline-block;margin:1em}img{max-width:640px}pre{background:#f6f6f6;padding:1em;
overflow:auto}.scroll{overflow:auto;max-height:32em}"""


def write_report(paths: StudyPaths, importances: dict[str, float] | None = None) -> Path:
    """``report.html``: one self-contained file (images inlined, no network) with the
    study's summary and provenance, a sortable leaderboard, the plots and the model card."""
    run = RunInfo.read(paths.root / "run.json")
    space = parse_space(run.space, str(paths.root / "run.json"))
    board, fixed = searched_first(leaderboard_frame(read_records(paths), space), space)
    images = write_plots(paths, importances)
    card_md = paths.best / "model_card.md"
    machine, study = run.cpu, html.escape(run.study or paths.root.name)
    summary = (f"<p>Space <code>{html.escape(run.space_file)}</code> (hash {run.space_hash}), "
               f"engine {run.engine} ({run.algo}), seed {run.seed}, code "
               f"{run.git_revision}; {len(board)} trials; machine {html.escape(str(machine.get('model')))} "
               f"({machine.get('cores')} cores). Made by <code>{html.escape(str(run.command))}</code>; "
               f"this page by <code>cnnbench report {study}</code>.</p>")
    # the time-to-accuracy curve at the top, beside the card (which holds the runtimes table)
    curve = [p for p in images if p.stem == "best_so_far"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cnnbench: {study}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Study {study}</h1>", summary, *(_image(p) for p in curve),
             "<h2>Model card</h2>",
             card_html(card_md.read_text()) if card_md.exists() else "<p>No model exported.</p>",
             "<h2>Leaderboard</h2><p>The searched parameters first; click a column to sort.</p>",
             f"<p class='fixed'>Fixed in this space: {html.escape(fixed)}</p>" if fixed else "",
             f"<div class='scroll'>{_table(board)}</div>",
             "<h2>Pictures</h2>", *(_image(p) for p in images if p not in curve),
             "<h2>Provenance (run.json)</h2>", f"<pre>{html.escape(json.dumps(run.to_dict(), indent=1))}</pre>",
             f"<script>{SORT_SCRIPT}</script></body></html>"]
    target = paths.root / "report.html"
    atomic_write(target, "\n".join(parts))
    return target
