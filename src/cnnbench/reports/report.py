"""Everything people read: live sweep progress, leaderboard tables, markdown.

A terminal gets a rich progress display; anything else (a log file, CI) gets one plain
line per event, so ``make sweep > sweep.log`` stays readable.
"""
from __future__ import annotations

from collections.abc import Sequence

from typing import Any

import math
import sys
import time

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnbench.provenance import RunInfo
from cnnbench.trials import TrialRecord, State, finished_count

TERMINAL_COLUMNS = ["trial", "state", "val_accuracy", "val_loss", "epochs_run", "train_seconds",
                    "images_per_s", "parameter_count"]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [_fmt(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def study_markdown(study: str, frame: pd.DataFrame, run: RunInfo, final: TrialRecord | None = None) -> str:
    return (f"# Leaderboard: {study}\n\n"
            f"Space `{run.space_file}` (hash {run.space_hash}), engine {run.engine}, seed {run.seed}, code "
            f"{run.git_revision}. Made by `{run.command or 'cnnbench sweep'}`; see results/README.md for the columns.\n\n"
            + markdown_table(frame) + final_markdown(final))


def final_markdown(final: TrialRecord | None) -> str:
    """The final training, apart from the trials: it trained on other images (train +
    validation), so it has no validation score to rank beside theirs."""
    if final is None:
        return ""
    source = f"trial {final.trial}'s configuration" if final.trial >= 0 else "the space's only configuration"
    return (f"\n## Final training\n\n{source[0].upper() + source[1:]} trained once more on all "
            f"{final.train_images or 0:,} training images (seed {final.seed}): {final.state}"
            f"{', ' + final.reason if final.reason else ''}; {final.epochs_run or 0} epochs, "
            f"{_fmt(final.train_seconds)} s at {_fmt(final.images_per_s)} images/s. Its test accuracy is in "
            "best/model_card.md when it was exported.\n")


def rich_table(frame: pd.DataFrame, title: str, columns: list[str] | None = None, top: int | None = None) -> Table:
    columns = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if frame[c].dtype == object else "right")
    for row in frame.head(top).itertuples(index=False) if top else frame.itertuples(index=False):
        values = dict(zip(frame.columns, row))
        table.add_row(*(_fmt(values[c]) for c in columns))
    return table


def print_leaderboard(frame: pd.DataFrame, title: str, space_params: Sequence[str] = (), top: int | None = 10,
                      console: Console | None = None) -> None:
    # A terminal fits a handful of parameter columns; wider spaces are in leaderboard.md.
    shown = [p for p in space_params if p in frame.columns] if len(space_params) <= 6 else []
    # successive halving: which rung (and so which fidelity) each score is from
    rungs = ["rung", "train_images"] if "rung" in frame.columns and frame["rung"].notna().any() else []
    cols = TERMINAL_COLUMNS[:2] + rungs + TERMINAL_COLUMNS[2:3] + shown + TERMINAL_COLUMNS[3:]
    (console or wide_console()).print(rich_table(frame, title, cols, top))


def wide_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output goes to a file."""
    return Console() if sys.stdout.isatty() else Console(width=220)


class SweepProgress:
    """Trial n of N, current epoch, best so far, elapsed and ETA: live on a terminal, lines otherwise."""

    def __init__(self, study: str, total: int, done: int = 0, best: float | None = None,
                 timeout_minutes: float | None = None, live: bool | None = None):
        self.study, self.total, self.done, self.best = study, total, done, best
        self.done_here = 0  # finished in this run: the ETA's pace (earlier runs' trials took other time)
        self.phase = "search"  # "promotion" (a run at a higher rung), "final" (the final training)
        self.timeout = timeout_minutes * 60 if timeout_minutes else None
        self.started = time.monotonic()
        self.console = Console()
        self.live = sys.stdout.isatty() if live is None else live
        self.status: Any = None  # rich's Status while a live display runs
        self.current = ""
        self.terminal_gone = False  # set when printing failed (a closed terminal): say nothing more

    # -- the Progress protocol of engines.base -------------------------------------------------
    def trial_started(self, number: int, params: dict) -> None:
        self.current = f"trial {number}"
        self._say(f"start {self.current}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))

    def epoch_done(self, number: int, epoch: int, epochs: int, logs: dict) -> None:
        validated = f"val_accuracy {logs['val_accuracy']:.4f} " if "val_accuracy" in logs else ""
        self._say(f"trial {number} epoch {epoch}/{epochs}: {validated}loss {logs['loss']:.4f}", quiet_when_live=True)

    def trial_done(self, record: TrialRecord) -> None:
        if record.state == State.INTERRUPTED:  # not a result: it does not count
            self._say(f"trial {record.trial} interrupted")
            return
        self.done += 1
        self.done_here += 1
        if record.state == State.COMPLETE and record.val_accuracy is not None and (
                self.best is None or record.val_accuracy > self.best):
            self.best = record.val_accuracy
        detail = record.reason if record.state in (State.FAILED, State.INTERRUPTED) else \
            f"val_accuracy {_fmt(record.val_accuracy)}"
        self._say(f"trial {record.trial} {record.state}: {detail}")

    def say(self, message: str) -> None:
        """Something the sweep decided (a lost trial retried, a stop before the deadline)."""
        self._say(message)

    def caught_up(self, records: list[TrialRecord]) -> None:
        """Count and best from the study's records: those of earlier runs (a resumed study),
        or those its worker processes just finished, which this process did not see."""
        self.done = finished_count(records)
        self.best = max((r.val_accuracy for r in records if r.state == State.COMPLETE and r.val_accuracy is not None),
                        default=None)

    # -- rendering -----------------------------------------------------------------------------
    def _headline(self) -> str:
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.done_here and self.total > self.done and self.phase != "final":
            remaining = elapsed / self.done_here * (self.total - self.done)
            eta = _clock(min(remaining, max(0, self.timeout - elapsed)) if self.timeout else remaining)
        best = f"{self.best:.4f}" if self.best is not None else "-"
        where = (f"{self.phase}: {min(self.done + 1, self.total)} of {self.total}" if self.phase != "final"
                 else "final training")
        return (f"[{self.study}] {where} | best val_accuracy {best} | "
                f"elapsed {_clock(elapsed)}" + (f" | ETA {eta}" if eta else ""))

    def _say(self, message: str, quiet_when_live: bool = False) -> None:
        if self.terminal_gone:
            return
        try:
            self._print(message, quiet_when_live)
        except OSError:  # EIO once a closed terminal's hang-up arrived, EPIPE: the sweep goes on, silent
            self.terminal_gone = True
            self.close()  # the live display's refresh thread would write to it too

    def _print(self, message: str, quiet_when_live: bool) -> None:
        if self.live:
            if self.status is None:
                self.status = self.console.status("")
                self.status.start()
            # Text, not markup: "[study]" and parameter values must not be read as rich tags.
            self.status.update(Text(f"{self._headline()}\n  {message}"))
            if not quiet_when_live:
                self.console.print(Text(f"{time.strftime('%H:%M:%S')} {message}"))
        else:
            print(f"{time.strftime('%H:%M:%S')} {self._headline()} | {message}", flush=True)

    def close(self) -> None:
        if self.status is not None:
            status, self.status = self.status, None
            try:
                status.stop()  # its last refresh writes to the terminal
            except OSError:
                self.terminal_gone = True


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def check_summary(space) -> str:
    """What ``cnnbench check`` prints: each parameter with its range, the size of the space,
    and the range of parameter counts."""
    lines = [f"{space.source}: valid (hash {space.fingerprint()})"]
    if space.description:
        lines.append(f"  {space.description.strip()}")
    lines.append(f"  objective {space.objective}; budget {space.budget.trials} trials"
                 + (f", {space.budget.timeout_minutes} min" if space.budget.timeout_minutes else "")
                 + f"; sampler {space.search.sampler}; pruner {space.search.pruner}; seed {space.seed}")
    d = space.data
    lines.append(f"  data {d.dataset} ({d.path or 'CNNBENCH_CIFAR10 or keras download'}), validation "
                 f"{d.validation_fraction:.0%}, train subset {d.train_subset or 'all'}, image {d.image_size}px")
    lines.append("  parameters:")
    for name, p in space.params.items():
        lines.append(f"    {name:<18} {p.describe()}")
    size = space.size()
    lines.append(f"  configurations: {size:,}" if size is not None else "  configurations: infinite (continuous ranges)")
    low, high = space.param_range()
    lines.append(f"  model parameters: {low:,} .. {high:,}")
    lines.append(forecast_line(space))
    return "\n".join(lines)


def forecast_line(space, log=None) -> str:
    """How long one trial takes on this machine, from the training speed recent trials here
    reached (``cnnbench check --measure`` measures it when none is known)."""
    from cnnbench.training import runtime
    from cnnbench.forecast import trial_seconds
    from cnnbench.throughput import ThroughputLog
    from cnnbench.knobs import coerce
    from cnnbench.model import architecture_stats

    log = log or ThroughputLog()
    precision = runtime.resolve_precision(space.complete({})["precision"])
    n = space.data.train_subset or 50_000
    n_val = round(n * space.data.validation_fraction)
    seconds, rates = [], []
    for config in space.corners():
        rate = log.rate(precision, architecture_stats(config, space.data.image_size).flops)
        if not rate:
            continue
        rates.append(rate)
        for epochs in space.extremes("epochs"):
            for tta in space.extremes("tta"):
                cfg = {**config, "epochs": int(epochs), "tta": coerce("tta", tta)}
                seconds.append(trial_seconds(cfg, n - n_val, n_val, rate, space.data.image_size))
    if not seconds:
        return ("  time per trial: unknown on this machine until a trial of this size has run here "
                "(cnnbench check --measure measures it in about half a minute)")
    return (f"  time per trial on this machine: {min(seconds) / 60:.1f} .. {max(seconds) / 60:.1f} min "
            f"(at {min(rates) / 1e9:.0f}-{max(rates) / 1e9:.0f} GFLOP/s training, {precision}, "
            f"{runtime.cpu().model})")


# ---- reusing a model: predictions and evaluations ---------------------------------------------

def evaluation_table(result: dict, class_names: list[str]) -> Table:
    table = Table(title=f"{result['folder']}: accuracy {result['accuracy']:.4f} on {result['images']} images")
    table.add_column("class \\ predicted")
    for name in class_names:
        table.add_column(name[:8], justify="right")
    table.add_column("accuracy", justify="right")
    for name, row in zip(class_names, result["confusion_matrix"]):
        accuracy = result["per_class_accuracy"][name]
        table.add_row(name, *map(str, row), "-" if accuracy is None else f"{accuracy:.4f}")
    return table


class progress_bar:
    """A rich progress bar on a terminal for long jobs; nothing elsewhere. Use as
    ``with progress_bar(total, label, show) as advance: ... advance(n)``."""

    def __init__(self, total: int, label: str, show: bool):
        self.total, self.label, self.show = total, label, show
        self.bar: Any = None  # rich's Progress while shown

    def __enter__(self):
        if self.show:
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True))
            self.bar.start()
            task = self.bar.add_task(self.label, total=self.total)
            return lambda n: self.bar.advance(task, n)
        return lambda n: None

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
