"""Progress lines and tables: what people read."""
from __future__ import annotations

import pandas as pd
from rich.console import Console

from cnnbench.trials import TrialRecord
from cnnbench.reports.report import SweepProgress, markdown_table


def test_plain_progress_lines_name_trial_of_total_best_and_epoch(capsys):
    progress = SweepProgress("my-study", total=3, live=False)
    progress.trial_started(0, {"learning_rate": 0.001234567})
    progress.epoch_done(0, 2, 5, {"val_accuracy": 0.5, "loss": 1.25})
    progress.trial_done(TrialRecord(trial=0, state="complete", engine="optuna", values={}, val_accuracy=0.61))
    progress.trial_done(TrialRecord(trial=1, state="failed", engine="optuna", values={}, reason="ValueError: x"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert "[my-study] search: 1 of 3 | best val_accuracy - |" in lines[0] and "learning_rate=0.001235" in lines[0]
    assert "trial 0 epoch 2/5: val_accuracy 0.5000" in lines[1]
    assert "[my-study] search: 2 of 3 | best val_accuracy 0.6100" in lines[2] and "ETA" in lines[2]
    assert lines[3].endswith("trial 1 failed: ValueError: x")


def test_an_epoch_that_was_not_validated_shows_its_loss_alone(capsys):
    # a rung run with validate: last_epoch reports its earlier epochs without val_accuracy
    SweepProgress("s", total=1, live=False).epoch_done(3, 1, 2, {"loss": 2.5})
    assert capsys.readouterr().out.strip().endswith("trial 3 epoch 1/2: loss 2.5000")


def test_a_closed_terminal_silences_the_progress_and_the_sweep_goes_on(monkeypatch):
    """After a hang-up (ssh dropped, terminal closed) every write to the terminal fails with
    EIO: before, the first progress line after it ended the sweep as a write failure (exit 74)
    instead of the signal's graceful stop."""
    import errno
    import sys

    class GoneTerminal:
        writes = 0

        def write(self, text):
            GoneTerminal.writes += 1
            raise OSError(errno.EIO, "Input/output error")

        def flush(self):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sys, "stdout", GoneTerminal())
    progress = SweepProgress("s", total=3, live=False)
    progress.say("the terminal is gone")  # no exception
    progress.trial_started(0, {"learning_rate": 0.01})
    assert progress.terminal_gone and GoneTerminal.writes == 1  # tried once, then silent
    progress.close()

    class BrokenStatus:  # the live display, whose last refresh at stop() writes to the terminal
        def stop(self):
            raise OSError(errno.EIO, "Input/output error")

    live = SweepProgress("s", total=3, live=True)
    live.status = BrokenStatus()
    live.close()  # the sweep's finally: no exception either
    assert live.terminal_gone and live.status is None


def test_live_progress_shows_brackets_literally():
    progress = SweepProgress("[study]", total=2, live=True)
    progress.console = Console(record=True, force_terminal=True, width=200)
    progress.trial_started(0, {"optimizer": "[adam]"})
    progress.close()
    assert "start trial 0: optimizer=[adam]" in progress.console.export_text()


def test_markdown_table_escapes_pipes_and_blanks_missing():
    frame = pd.DataFrame([{"a": "x|y", "b": None, "c": 0.123456}])
    text = markdown_table(frame)
    assert text.splitlines()[2] == "| x\\|y |  | 0.1235 |"


def test_progress_frame_orders_by_finish_and_tracks_the_best_completed_trial(tmp_path):
    from cnnbench.reports.plots import time_to_accuracy
    from cnnbench.reports.results import progress_frame

    t0 = 1000.0
    recs = [TrialRecord(trial=0, state="complete", engine="optuna", values={}, val_accuracy=0.80, finished_at=t0 + 600),
            TrialRecord(trial=2, state="pruned", engine="optuna", values={}, val_accuracy=0.90, finished_at=t0 + 660),
            TrialRecord(trial=1, state="complete", engine="optuna", values={}, val_accuracy=0.85, finished_at=t0 + 900),
            TrialRecord(trial=3, state="running", engine="optuna", values={})]
    frame = progress_frame(recs, t0)
    assert list(frame["trial"]) == [0, 2, 1]
    assert list(frame["minutes"]) == [10.0, 11.0, 15.0]
    assert list(frame["best_val_accuracy"]) == [0.80, 0.80, 0.85]  # a pruned trial is never exported
    png = time_to_accuracy(frame, tmp_path / "progress.png", "test", test_accuracy=0.84, export_minutes=16.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_resumed_sweeps_eta_is_paced_by_this_runs_trials_and_the_final_phase_is_named(capsys, monkeypatch):
    import cnnbench.reports.report as report

    clock = [100.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    # resumed: 8 of 10 trials finished in earlier runs; this run's first takes 60 s
    progress = SweepProgress("s", total=10, done=8, live=False)
    clock[0] += 60
    progress.trial_done(TrialRecord(trial=8, state="complete", engine="optuna", values={}, val_accuracy=0.5))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "10 of 10" in line and "ETA 0:01:00" in line  # one more trial at this run's pace: 60 s, not 60/9
    progress.phase = "final"
    progress.say("final training epoch 1/2")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "[s] final training | best val_accuracy" in line and "ETA" not in line


def test_progress_png_shades_the_search_and_the_final_training(tmp_path):
    from cnnbench.reports.plots import time_to_accuracy
    from cnnbench.reports.results import phase_spans, progress_frame

    t0 = 1000.0
    recs = [TrialRecord(trial=0, state="complete", engine="optuna", values={}, val_accuracy=0.5, started_at=t0 + 60,
                        finished_at=t0 + 120),
            TrialRecord(trial=1, state="complete", engine="optuna", values={}, val_accuracy=0.6, started_at=t0 + 120,
                        finished_at=t0 + 240),
            TrialRecord(trial=2, state="running", engine="optuna", values={})]  # no end yet: not counted
    final = TrialRecord(trial=1, state="interrupted", engine="optuna", values={}, started_at=t0 + 240,
                        heartbeat_at=t0 + 2640)  # stopped: it ends at its last sign of life
    spans = phase_spans(recs, final, t0)
    assert spans == {"search": (1.0, 4.0), "final training": (4.0, 44.0)}
    assert phase_spans([], None, t0) == {}
    png = time_to_accuracy(progress_frame(recs, t0), tmp_path / "progress.png", "t", 0.9, 45.0, phases=spans)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_json_reads_as_a_type_and_writes_back_unchanged(tmp_path):
    import json

    from conftest import ROOT
    from cnnbench.provenance import RunInfo

    raw = json.loads((ROOT / "docs/measured/airbench94-amx/cnnbench-seed0/run.json").read_text())
    info = RunInfo.from_dict({**raw, "a_key_from_a_later_version": 1})
    assert info.to_dict() == {**raw, "a_key_from_a_later_version": 1}
    assert info.cpu["model"] == raw["machine"]["cpu"]["model"] and info.searched() == []  # one configuration
    old = tmp_path / "run.json"
    old.write_text(json.dumps({"study": "s", "space": {"params": {"epochs": {"type": "int", "low": 1, "high": 3},
                                                                  "dropout": {"type": "fixed", "value": 0.1}}}}))
    read = RunInfo.read(old)  # an older, smaller file: defaults, never a KeyError
    assert read.searched() == ["epochs"] and read.first_started_unix == 0.0 and read.cpu == {}
    assert RunInfo.read(tmp_path / "none.json").study == ""


def test_a_model_card_reads_as_a_type_and_writes_back_unchanged(tmp_path):
    import json

    from conftest import ROOT
    from cnnbench.provenance import ModelCard
    from cnnbench.reports.export import card_markdown

    path = ROOT / "docs/measured/airbench94-amx/cnnbench-seed0/model_card.json"
    raw = json.loads(path.read_text())
    card = ModelCard.read(path)
    assert card.to_dict() == raw and ModelCard.from_dict({**raw, "later": 1}).to_dict() == {**raw, "later": 1}
    assert card.test_accuracy == raw["test"]["accuracy"] and card.final_train_images == 50_000
    assert card.classes[0] == "airplane" and card.trial is None and card.machine["cpu"]["model"]
    assert f"**{raw['test']['accuracy']:.4f}**" in card_markdown(card)
    small = tmp_path / "model_card.json"
    small.write_text(json.dumps({"study": "s", "test": {"accuracy": 0.5}}))  # an older, smaller card
    assert ModelCard.read(small).final_train_images is None and ModelCard.read(small).chosen
    assert ModelCard.read(tmp_path / "none.json") is None  # nothing exported
    small.write_text("[1, 2]")
    assert ModelCard.read(small) is None
