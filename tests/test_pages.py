"""A study's pictures and its one-page report, made from the study's own files; the report
opened in a real headless Chromium."""
from __future__ import annotations

import json
import shutil

import pytest

from cnnbench.deploy.verify import runtimes_markdown
from cnnbench.reports.pages import write_plots, write_report
from cnnbench.reports.results import atomic_write, json_text
from cnnbench.space import parse_space
from stand_in import run

PNG = b"\x89PNG\r\n\x1a\n"


def study(tmp_path, minimize=()):
    """A finished stand-in study with a run.json and a model card, as a sweep leaves them."""
    space = parse_space({"seed": 1, "budget": {"trials": 8}, "minimize": list(minimize),
                         "search": {"sampler": "random", "pruner": "none"}, "params": {
                             "optimizer": {"type": "choice", "choices": ["adam", "adamw"]},
                             "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                             "epochs": {"type": "fixed", "value": 4}}})
    records = run(space, tmp_path, "s", trials=8)
    root = tmp_path / "s"
    atomic_write(root / "run.json", json_text({
        "study": "s", "engine": "optuna", "algo": "random", "space_file": "s.yaml", "space_hash": "x", "seed": 1,
        "space": space.model_dump(mode="json"), "command": "cnnbench sweep --study s", "git_revision": "abc",
        "first_started_unix": min(r.started_at for r in records), "machine": {"cpu": {"model": "CPU", "cores": 2}}}))
    names = [f"c{i}" for i in range(10)]
    atomic_write(root / "best" / "model_card.json", json_text({
        "trial": 0, "classes": names, "test": {"accuracy": 0.5, "per_class_accuracy": {n: 0.5 for n in names},
                                               "confusion_matrix": [[5] * 10 for _ in range(10)]}}))
    (root / "best" / "model_card.md").write_text(
        "# Model card: s (trial 0, optuna)\n\n- Test accuracy: **0.5000** on 10 images (`synthetic`)\n"
        + "\n".join(runtimes_markdown(RUNTIMES)) +
        "\n\n## Hyperparameters\n\n| knob | value |\n|---|---|\n| learning_rate | 0.01 |\n")
    return root, records


# a model card's runtimes block as cnnbench.deploy.verify writes it (figures made up for layout)
RUNTIMES = {"images": 10, "checked_on": "the first 10 test images",
            "keras": {"file": "model.keras", "status": "reference", "size_bytes": 2_000_000, "accuracy": 0.5,
                      "latency_ms": {"batch_1": 3.0, "batch_64": 0.5}, "threads": 2},
            "onnx": {"file": "model.onnx", "status": "ok", "size_bytes": 1_900_000, "agreement": 1.0,
                     "max_prob_diff": 2e-6, "accuracy": 0.5, "latency_ms": {"batch_1": 1.25, "batch_64": 0.4}},
            "litert": {"status": "skipped", "reason": "not installed: ai_edge_litert"}}


def _importances(root):
    """What the glue passes the report: the engines' importances of the study's trials."""
    from cnnbench import engines
    from cnnbench.api import load_study

    study = load_study(root)
    return engines.importances(study.space, study.records)


def test_every_picture_is_written_and_is_a_png(tmp_path):
    root, _ = study(tmp_path)
    from cnnbench.trials import StudyPaths

    written = {p.name for p in write_plots(StudyPaths(root), _importances(root))}
    assert written == {"best_so_far.png", "importances.png", "parallel_coordinates.png", "learning_curves.png",
                       "confusion_matrix.png", "accuracy_vs_cost.png"}
    for name in written:
        data = (root / "plots" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_report_is_one_self_contained_page(tmp_path):
    root, records = study(tmp_path)
    from cnnbench.trials import StudyPaths

    page = write_report(StudyPaths(root), _importances(root)).read_text()
    board = page.split('id="leaderboard"')[1].split("</table>")[0]
    assert board.count("<tr>") == len(records) + 1  # header + one row per trial
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page  # opens with no network
    assert "cnnbench sweep --study s" in page and "Model card: s (trial 0, optuna)</h3>" in page
    assert "<strong>0.5000</strong>" in page and "<td>learning_rate</td><td>0.01</td>" in page
    # the time-to-accuracy curve and the runtimes table come before the leaderboard
    assert page.index('alt="best_so_far"') < page.index("<h4>Runtimes</h4>") < page.index('id="leaderboard"')
    assert "<td>model.onnx</td><td>onnxruntime</td><td>ok</td><td>1.90</td><td>1.0000</td>" in page
    assert "skipped: not installed: ai_edge_litert" in page


def test_multi_objective_leaderboard_marks_the_pareto_front(tmp_path):
    from cnnbench.reports.results import leaderboard_frame, pareto_mask

    assert list(pareto_mask([0.9, 0.8, 0.7, 0.85], [10, 5, 6, 10])) == [True, True, False, False]
    root, records = study(tmp_path, minimize=["latency_ms"])
    space = parse_space(json.loads((root / "run.json").read_text())["space"])
    for i, r in enumerate(records):  # the stand-in has no latency: give them some
        r.latency_ms = float(10 - i)
    board = leaderboard_frame(records, space)
    front = board[board["pareto"]]
    assert len(front) >= 1
    for _, row in front.iterrows():  # nothing beats a front member on both
        assert not ((board["val_accuracy"] > row["val_accuracy"]) & (board["latency_ms"] < row["latency_ms"])).any()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's chromium)")
def test_the_report_renders_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    root, records = study(tmp_path)
    from cnnbench.trials import StudyPaths

    page_path = write_report(StudyPaths(root), _importances(root))
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#leaderboard tbody tr").count()
        text = page.inner_text("body")
        headers = page.evaluate("[...document.querySelectorAll('#leaderboard th')].map(th => "
                                "[th.textContent, th.getBoundingClientRect().right])")
        loaded = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        curve_top = page.locator("img[alt=best_so_far]").bounding_box()["y"]
        runtimes_top = page.get_by_text("onnxruntime", exact=True).bounding_box()["y"]
        board_top = page.locator("#leaderboard").bounding_box()["y"]
        page.locator("#leaderboard th").first.click()  # sorting runs without errors
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert rows == len(records)
    assert "Test accuracy: 0.5000 on 10 images" in text and "**" not in text  # the card as HTML, not source
    right = dict(headers)
    assert right["val_accuracy"] <= 1400 and right["optimizer"] <= 1400 and right["learning_rate"] <= 1400
    assert "epochs" not in right and "Fixed in this space: epochs=4" in text  # folded into one line
    assert loaded and all(loaded)
    assert curve_top < runtimes_top < board_top  # what a reader looks for first, first
    assert "model.onnx\tonnxruntime\tok" in text  # the runtimes table rendered as a table
    assert errors == []
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG


def test_epoch_curves_place_each_epoch_at_its_wall_clock_minute():
    from cnnbench.reports.results import epoch_curves
    from cnnbench.trials import TrialRecord

    timed = TrialRecord(trial=0, state="complete", engine="optuna", values={}, config={}, started_at=60.0,
                        finished_at=300.0, history=[{"epoch": 1, "val_accuracy": 0.5, "seconds": 60.0},
                                                    {"epoch": 2, "val_accuracy": 0.6, "seconds": 120.0}])
    untimed = TrialRecord(trial=1, state="pruned", engine="optuna", values={}, config={}, started_at=300.0,
                          finished_at=420.0, history=[{"epoch": 1, "val_accuracy": 0.4},
                                                      {"epoch": 2, "val_accuracy": 0.45}])
    curves = epoch_curves([timed, untimed], origin=0.0)
    assert curves[0] == ([2.0, 4.0], [0.5, 0.6])  # started at minute 1, epochs of 1 and 2 minutes
    assert curves[1] == ([6.0, 7.0], [0.4, 0.45])  # no timings: its 2 minutes shared evenly


def test_epoch_curves_leave_out_the_epochs_a_rung_run_did_not_validate():
    """validate: last_epoch: the progress picture of the NO_START_WITH hour of 2026-12-07 ended
    the sweep with a KeyError after the export, on a record whose first epoch had no score."""
    from cnnbench.reports.results import epoch_curves
    from cnnbench.trials import TrialRecord

    rung_run = TrialRecord(trial=0, state="complete", engine="optuna", values={}, config={}, started_at=60.0,
                           finished_at=180.0, history=[{"epoch": 1, "loss": 2.0, "seconds": 30.0},
                                                       {"epoch": 2, "val_accuracy": 0.55, "seconds": 30.0}])
    assert epoch_curves([rung_run], origin=0.0) == {0: ([2.0], [0.55])}  # started at minute 1
