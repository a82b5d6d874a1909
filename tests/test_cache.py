"""A training already done is served, not repeated; a code change serves nothing stale
(stand-in trainer, real records and Optuna journal, in-process)."""
from __future__ import annotations

import pytest

import stand_in
from cnnbench.engines import cache
from cnnbench.space import parse_space
from cnnbench.trials import read_records

SPACE = {"seed": 4, "budget": {"trials": 3}, "search": {"sampler": "random", "pruner": "none"},
         "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                    "epochs": {"type": "fixed", "value": 2}}}


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, config, data, on_epoch, seed):
        self.calls += 1
        return stand_in.fake_train(config, data, on_epoch, seed)


def _study(tmp_path, name, trainer, **kw):
    space = parse_space(SPACE)
    job = stand_in.make_job(space, tmp_path, study=name, trainer=trainer, data_fingerprint="fp-1", **kw)
    stand_in.engines.get("optuna").run(job)
    return read_records(job.paths)


@pytest.fixture
def with_models(monkeypatch):
    """The stand-in returns no model; a cached trial needs the earlier one's model file."""
    from cnnbench.training.isolation import InProcessRunner

    real = InProcessRunner.run

    def run(self, config, seed, model_path, *a, **k):
        out = real(self, config, seed, model_path, *a, **k)
        if out[0] == "complete" and model_path:
            model_path.write_bytes(b"model")
        return out

    monkeypatch.setattr(InProcessRunner, "run", run)


def test_a_second_study_of_the_same_space_is_served_from_the_first(tmp_path, with_models):
    first_trainer, second_trainer = Counting(), Counting()
    first = _study(tmp_path, "a", first_trainer)
    second = _study(tmp_path, "b", second_trainer)
    assert first_trainer.calls == 3 and second_trainer.calls == 0
    assert [r.cached_from for r in second] == ["a/0", "a/1", "a/2"]
    assert [r.val_accuracy for r in second] == [r.val_accuracy for r in first]
    assert all(r.trainer_version == cache.trainer_version() and r.data_fingerprint == "fp-1" for r in first)
    assert (tmp_path / "b" / "trials" / "trial-0000.keras").read_bytes() == b"model"


def test_a_code_change_other_data_or_no_cache_trains_again(tmp_path, with_models, monkeypatch):
    _study(tmp_path, "a", Counting())
    again = Counting()
    _study(tmp_path, "b", again, cache=False)
    assert again.calls == 3
    monkeypatch.setattr(cache, "trainer_version", lambda trainer=None: "another-code")
    changed = Counting()
    records = _study(tmp_path, "c", changed)
    assert changed.calls == 3 and not any(r.cached_from for r in records)


def test_the_trainer_version_follows_the_training_code(tmp_path, monkeypatch):
    cache._trainer_version.cache_clear()
    before = cache.trainer_version()
    fake = tmp_path / "cnnbench"
    fake.mkdir()
    real_root = __import__("pathlib").Path(cache.__file__).resolve().parent.parent
    for name in cache.TRAINING_MODULES:
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_bytes((real_root / name).read_bytes())
    monkeypatch.setattr(cache, "__file__", str(fake / "engines" / "cache.py"))
    cache._trainer_version.cache_clear()
    assert cache.trainer_version() == before  # same sources, same version
    optim = fake / next(name for name in cache.TRAINING_MODULES if name.endswith("optim.py"))
    optim.write_bytes(optim.read_bytes() + b"\n# changed\n")
    cache._trainer_version.cache_clear()
    assert cache.trainer_version() != before
    cache._trainer_version.cache_clear()


def test_a_trainer_of_ones_own_is_never_served_another_trainers_result(tmp_path, with_models):
    _study(tmp_path, "a", Counting())
    mine = Counting()
    records = _study(tmp_path, "b", mine, trainer_name="stand_in:fake_train")
    assert mine.calls == 3 and not any(r.cached_from for r in records)
    assert cache.trainer_version("stand_in:fake_train") != cache.trainer_version()
