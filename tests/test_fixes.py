"""Bugs found by a full read of the code (the layout issue's list), each with the test that
failed before its fix."""
from __future__ import annotations

import optuna
import pytest

from cnnbench.engines.optuna.study import make_sampler
from cnnbench.engines.optuna.pruning import make_pruner
from cnnbench.space import parse_space

SPACE = parse_space({"budget": {"trials": 100}, "search": {"pruner": "median", "prune_after_trials": 2},
                     "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1}}})


def test_the_median_pruner_starts_at_three_tenths_of_the_schedule():
    study = optuna.create_study(direction="maximize", pruner=make_pruner(SPACE))
    for _ in range(2):  # two good trials to compare with
        good = study.ask()
        for step in range(1, 11):
            good.report(0.9, step)
        study.tell(good, 0.9)
    bad = study.ask()
    bad.report(0.1, 1)
    bad.report(0.1, 2)
    assert not bad.should_prune()  # 2 tenths: still warming up
    bad.report(0.1, 3)
    assert bad.should_prune()


def test_tpe_start_up_follows_the_trials_asked_for_not_the_spaces_budget():
    assert make_sampler(SPACE, "tpe", 0, trials=8)._n_startup_trials == 3
    assert make_sampler(SPACE, "tpe", 0, trials=40)._n_startup_trials == 10
    assert make_sampler(SPACE, "tpe", 0)._n_startup_trials == 10  # no --trials: the budget's 100


def test_image_decoding_uses_the_cores_this_process_may_use(tmp_path, monkeypatch):
    from PIL import Image

    import cnnbench.training.sources as data
    import cnnbench.training.runtime as runtime

    seen = []

    class Recorder(data.ThreadPoolExecutor):
        def __init__(self, workers):
            seen.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(data, "ThreadPoolExecutor", Recorder)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    data._decode_cached([str(path)], 8)
    assert seen == [1]


def test_predict_keeps_the_input_order_when_a_file_is_given_twice(tmp_path):
    from PIL import Image

    from cnnbench.reports.predict import expand

    (tmp_path / "photos").mkdir()
    for name in ("b.png", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / name)
    given = [str(tmp_path / "photos" / "b.png"), str(tmp_path / "photos"), str(tmp_path / "photos" / "*.png")]
    assert expand(given) == [str(tmp_path / "photos" / "b.png"), str(tmp_path / "photos" / "a.png")]


def test_compare_live_with_a_misspelt_strategy_is_one_line(tmp_path, capsys):
    from cnnbench.cli import main
    from conftest import SPACES

    code = main(["compare", str(SPACES / "smoke.yaml"), "--live", "--strategies", "tpe,rnadom",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown rnadom" in err and "Traceback" not in err


def test_the_deadline_prices_trials_at_the_datas_image_size(tmp_path):
    import time

    from cnnbench.deadline import Deadline, NotStarted
    from cnnbench.forecast import trial_seconds
    from cnnbench.throughput import ThroughputLog
    from cnnbench.knobs import default_config
    from cnnbench.model import architecture_stats

    config = {**default_config(), "epochs": 4, "precision": "float32"}
    log = ThroughputLog(tmp_path / "t.json")
    for size in (32, 64):
        log.add("float32", 1e10, architecture_stats(config, size).flops)  # the same speed at both sizes
    small = trial_seconds(config, 5_000, 500, 1e10, 32)
    large = trial_seconds(config, 5_000, 500, 1e10, 64)
    assert large > 3 * small  # four times the pixels
    end = time.time() + 2 * small + 60
    assert Deadline(end, log).admit(config, 5_000, 500, 1_000, "float32", [])[0] == config
    with pytest.raises(NotStarted):
        Deadline(end, log, image_size=64).admit(config, 5_000, 500, 1_000, "float32", [])


def test_the_plan_prices_trials_at_the_datas_class_count(tmp_path, monkeypatch):
    """Bug 2's other half: `cnnbench check --timeout` assumed 10 classes where the sweep
    counts the data's (an image folder of other classes)."""
    monkeypatch.delenv("CNNBENCH_CIFAR10", raising=False)  # it names the data before a space's path
    from cnnbench.throughput import ThroughputLog
    from cnnbench.model import architecture_stats
    from cnnbench.plan import plan
    from cnnbench.space import parse_space
    from cnnbench.training.data import DataSpec, class_count

    for split in ("train", "test"):
        for name in ("a", "b", "c"):
            (tmp_path / "folder" / split / name).mkdir(parents=True)
    assert class_count(DataSpec(path=str(tmp_path / "folder"))) == 3
    assert class_count(DataSpec(path="folder"), tmp_path) == 3  # relative to the space file
    assert class_count(DataSpec(path=str(tmp_path / "nothing"))) == 10  # CIFAR-10's download
    space = parse_space({"params": {"epochs": {"type": "fixed", "value": 4},
                                    "precision": {"type": "fixed", "value": "float32"}}})
    config = space.complete({})
    log = ThroughputLog(tmp_path / "t.json")
    log.add("float32", 1e10, architecture_stats(config).flops)
    assert architecture_stats(config, 32, 1000).flops > architecture_stats(config).flops
    assert plan(space, 60, log, num_classes=1000).trial_seconds > plan(space, 60, log).trial_seconds


def test_run_json_quotes_the_command_only_when_there_was_one(tmp_path):
    from cnnbench.sweep import SweepRequest, prepare
    from conftest import SPACES

    inside = prepare(SweepRequest(space_file=str(SPACES / "smoke.yaml"), results=str(tmp_path)))
    assert inside.run["command"].startswith("in-process sweep") and "smoke.yaml" in inside.run["command"]
    given = prepare(SweepRequest(space_file=str(SPACES / "smoke.yaml"), results=str(tmp_path),
                                 command="cnnbench sweep --space smoke.yaml"))
    assert given.run["command"] == "cnnbench sweep --space smoke.yaml"


def test_a_bad_space_file_is_refused_before_tensorflow_loads(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  epochs: {type: int, low: 5, high: 2}\n")
    code = ("import sys\nfrom cnnbench.cli import main\n"
            f"status = main(['sweep', '--space', {str(bad)!r}, '--results', {str(tmp_path / 'r')!r}])\n"
            "print(status, 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert "low (5) is above high (2)" in proc.stderr


def test_a_log_int_range_works_in_both_engines_and_a_log_step_is_refused():
    from cnnbench.engines import kerastuner as kerastuner_engine
    from cnnbench.engines.optuna import study as optuna_study
    from cnnbench.space import SpaceError

    space = parse_space({"params": {"dense_units": {"type": "int", "low": 8, "high": 512, "log": True}}})
    hp = kerastuner_engine.hyperparameters(space)  # crashed: KerasTuner refuses step 1 with log sampling
    values = [hp.space[0].random_sample(seed) for seed in range(20)]
    assert all(8 <= v <= 512 for v in values) and len(set(values)) > 5
    assert optuna_study.distributions(space)["dense_units"].log
    with pytest.raises(SpaceError, match=r"params\.dense_units: a log range takes no step"):
        parse_space({"params": {"dense_units": {"type": "int", "low": 8, "high": 512, "log": True, "step": 8}}},
                    "x.yaml")


def test_the_feasibility_check_follows_conditions():
    space = parse_space({"params": {
        "stages": {"type": "fixed", "value": 2},
        "padding": {"type": "choice", "choices": ["same", "valid"]},
        "kernel_size": {"type": "int", "low": 3, "high": 9, "condition": {"padding": "same"}}}})
    low, high = space.param_range()  # refused before: 'valid' with a 9x9 kernel shrinks the map to nothing
    assert 0 < low < high
    from cnnbench.space import SpaceError

    with pytest.raises(SpaceError):  # without the condition it really is infeasible
        parse_space({"params": {"stages": {"type": "fixed", "value": 2},
                                "padding": {"type": "choice", "choices": ["same", "valid"]},
                                "kernel_size": {"type": "int", "low": 3, "high": 9}}})


def test_damaged_records_and_run_json_are_named_not_silently_dropped(tmp_path):
    from cnnbench.space import SpaceError
    from cnnbench.sweep import SweepRequest, prepare
    from cnnbench.trials import StudyPaths, TrialRecord, read_records, write_record
    from conftest import SPACES

    paths = StudyPaths(tmp_path / "s")
    write_record(paths, TrialRecord(trial=0, engine="optuna", values={}, state="complete", val_accuracy=0.5))
    paths.trial_record(1).write_text('{"trial": 1, "engi')  # torn
    problems: list = []
    assert [r.trial for r in read_records(paths, problems)] == [0]
    assert len(problems) == 1 and "trial-0001.json" in problems[0]
    (paths.root / "run.json").write_text("{ not json")
    with pytest.raises(SpaceError, match="run.json: unreadable"):
        prepare(SweepRequest(space_file=str(SPACES / "smoke.yaml"), study="s", results=str(tmp_path)))


def test_a_kerastuner_trial_stopped_by_the_deadline_is_not_scored(tmp_path):
    import time

    import stand_in
    from cnnbench.deadline import Deadline
    from cnnbench.forecast import EXPORT_SECONDS

    space = parse_space({"budget": {"trials": 1}, "params": {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1}, "epochs": {"type": "fixed", "value": 3}}})
    # the deadline is inside the export margin: every epoch "would overrun", so the trial stops after its first
    job = stand_in.make_job(space, tmp_path, engine="kerastuner", deadline=Deadline(time.time() + EXPORT_SECONDS / 2))
    stand_in.engines.get("kerastuner").run(job)
    (record,) = stand_in.read_records(job.paths)
    assert record.state == "pruned" and "deadline" in record.reason
    tuner = stand_in.engines.get("kerastuner").make_tuner(job)
    tuner.reload()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "FAILED" and not trial.metrics.exists("val_accuracy")  # scored before the fix


def test_every_worker_and_resumed_run_orders_the_grid_alike():
    """A trial's grid id is a position in the sampler's shuffled grid: with each process's own
    seed, two workers trained 30 grid ids of the fidelity table as 23 configurations."""
    space = parse_space({"seed": 3, "search": {"sampler": "grid"},
                         "params": {"learning_rate": {"type": "choice", "choices": [0.01, 0.02, 0.05]},
                                    "label_smoothing": {"type": "choice", "choices": [0.0, 0.1, 0.2]}}})
    first, second = (make_sampler(space, "grid", seed) for seed in (11, 2026))  # two processes' seeds
    assert first._all_grids == second._all_grids


def test_the_grid_lists_each_configuration_once_with_only_the_parameters_that_apply():
    from cnnbench.benchmarking.tabular import grid

    space = parse_space({"params": {
        "optimizer": {"type": "choice", "choices": ["sgd", "adam"]},
        "momentum": {"type": "choice", "choices": [0.8, 0.9], "condition": {"optimizer": "sgd"}}}})
    assert sorted(map(str, grid(space))) == sorted(map(str, [
        {"optimizer": "sgd", "momentum": 0.8}, {"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adam"}]))
    assert len(grid(space)) == space.size()


def test_tabulate_queues_into_a_journal_with_a_torn_last_entry_without_damaging_it(tmp_path):
    """tabulate's top-up opened the journal without the torn-tail repair every sweep does, so
    its first entry was appended to a half-written line and the study no longer loaded."""
    import json

    from optuna.storages import JournalStorage

    from cnnbench.engines.optuna.journal import named_backend
    from cnnbench.engines.optuna.study import enqueue_configurations

    root = tmp_path / "results" / "table"
    root.mkdir(parents=True)
    journal = root / "optuna.journal"
    optuna.create_study(study_name="table", storage=JournalStorage(named_backend(journal)))
    with journal.open("a") as f:
        f.write('{"op_code": 4, "worker_id": "killed mid-li')  # a writer killed mid-line
    said: list[str] = []
    enqueue_configurations(root, "table", [{"learning_rate": 0.02}], say=said.append)
    assert said and str(journal) in said[0]
    assert all(json.loads(line) for line in journal.read_text().splitlines())
    study = optuna.load_study(study_name="table", storage=JournalStorage(named_backend(journal)))
    assert [t.params or t.system_attrs.get("fixed_params") for t in study.trials] == [{"learning_rate": 0.02}]
