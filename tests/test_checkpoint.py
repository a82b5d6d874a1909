"""Per-epoch checkpoints: a training stopped after an epoch goes on from it and ends exactly
where an uninterrupted one does; the file is written whole or not at all."""
from __future__ import annotations

import numpy as np
import pytest

from cnnbench.knobs import default_config
from cnnbench.training import checkpoint
from cnnbench.training.data import DataBundle


def _tiny_data():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    x = rng.integers(0, 60, (120, 16, 16, 3), dtype=np.uint8)
    x[..., 0] += (y * 90).astype(np.uint8)[:, None, None]
    return DataBundle(x[::2], y[::2], x[1::2], y[1::2], x[1::2], y[1::2], ("a", "b", "c"), "synthetic", "-")


class Killed(BaseException):
    """Stands for the process dying after an epoch (nothing of the training survives but
    its checkpoint file)."""


RECIPES = {
    # airbench's ingredients that carry state across epochs: the Lookahead average and its
    # step, the alternating flip's parity, the whitening bias gate, the one-cycle schedule
    "airbench": {"stem": "whiten", "whiten_bias_epochs": 1, "lookahead": True, "flip": "alternating",
                 "optimizer": "sgd", "momentum": 0.85, "nesterov": True, "lr_schedule": "linear", "warmup": 0.3},
    # averaged weights swapped in for validation at every epoch's end (SwapEMAWeights)
    "ema": {"ema": 0.9, "flip": "random", "optimizer": "adam", "dropout": 0.2},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_training_resumed_after_an_epoch_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, recipe):
    from cnnbench.training.train import train_and_evaluate

    config = {**default_config(), "stages": 2, "base_filters": 8, "epochs": 4, "batch_size": 16,
              "learning_rate": 5e-3, "translate": 1, "precision": "float32", "deterministic": True,
              **RECIPES[recipe]}
    whole = train_and_evaluate(config, _tiny_data(), seed=5, checkpoint=str(tmp_path / "whole.npz"))

    def die_after_two(epoch, logs):
        if epoch == 2:
            raise Killed()
    path = tmp_path / "cut.npz"
    with pytest.raises(Killed):
        train_and_evaluate(config, _tiny_data(), die_after_two, seed=5, checkpoint=str(path))
    assert checkpoint.load(path).epochs_done == 2
    heard = []
    resumed = train_and_evaluate(config, _tiny_data(), lambda e, logs: heard.append(e), seed=5,
                                 checkpoint=str(path))
    assert heard == [3, 4] and resumed.resumed_from_epoch == [2]  # epochs 1-2 were not trained again
    figures = [[(h["epoch"], h["loss"], h["val_accuracy"], h["val_loss"]) for h in r.history]
               for r in (whole, resumed)]
    assert figures[0] == figures[1] and len(figures[0]) == 4  # the whole curve, the same to the bit
    assert resumed.best_epoch == whole.best_epoch and resumed.val_accuracy == whole.val_accuracy
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert whole.resumed_from_epoch == [] and checkpoint.load(tmp_path / "whole.npz").epochs_done == 4


def test_a_checkpoint_of_another_network_is_not_used(tmp_path):
    from cnnbench.training.train import train_and_evaluate

    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 1, "batch_size": 30,
              "precision": "float32"}
    path = tmp_path / "c.npz"
    train_and_evaluate(config, _tiny_data(), seed=0, checkpoint=str(path))
    heard = []
    other = train_and_evaluate({**config, "base_filters": 8, "epochs": 2}, _tiny_data(),
                               lambda e, logs: heard.append(e), seed=0, checkpoint=str(path))
    assert heard == [1, 2] and other.resumed_from_epoch == []  # started over, and said nothing wrong


def test_a_re_sized_training_resumes_with_its_new_length_and_no_other_length_resumes_it(tmp_path, monkeypatch):
    """A final training filling the time is keyed without its epochs and may be re-sized
    after epoch 2 (final.py): its checkpoint says its schedule's length, re-written at the
    re-size, and a training of another length starts over rather than go on from it."""
    import shutil

    from cnnbench.training.train import train_and_evaluate

    config = {**default_config(), "stages": 1, "base_filters": 4, "epochs": 3, "batch_size": 30,
              "precision": "float32", "lr_schedule": "linear", "warmup": 0.5}
    written = []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, saved: written.append(
        (saved.epochs_done, saved.schedule_epochs)) or save(path, saved))

    def grow_then_die(epoch, logs):
        if epoch == 3:
            raise Killed()
        return 5 if epoch == 2 else None
    path = tmp_path / "final.npz"
    with pytest.raises(Killed):
        train_and_evaluate(config, _tiny_data(), grow_then_die, seed=0, checkpoint=str(path), stretch_to=6)
    assert written == [(1, 3), (2, 3), (2, 5), (3, 5)]
    shutil.copy(path, tmp_path / "copy.npz")
    heard = []
    other = train_and_evaluate(config, _tiny_data(), lambda e, logs: heard.append(e), seed=0,
                               checkpoint=str(tmp_path / "copy.npz"))
    assert heard == [1, 2, 3] and other.resumed_from_epoch == []  # the 3-epoch schedule started over
    heard.clear()
    resumed = train_and_evaluate({**config, "epochs": 5}, _tiny_data(), lambda e, logs: heard.append(e), seed=0,
                                 checkpoint=str(path))
    assert heard == [4, 5] and resumed.resumed_from_epoch == [3]


def test_a_checkpoint_round_trips_and_a_torn_one_reads_as_none(tmp_path):
    saved = checkpoint.Saved(epochs_done=3, model=[np.arange(6, dtype="float32").reshape(2, 3)],
                             optimizer=[np.array(7, dtype="int64")], history=[{"epoch": 1, "loss": 0.5}],
                             train_times=[1.5], traced=[0], best=0.25, best_weights=None, lookahead_step=30,
                             lookahead=[np.ones(4, "float32")], ema_in_model=True, resumed_from=[1])
    path = tmp_path / "x.npz"
    checkpoint.save(path, saved)
    back = checkpoint.load(path)
    assert back.epochs_done == 3 and back.history == saved.history and back.best_weights is None
    np.testing.assert_array_equal(back.model[0], saved.model[0])
    assert back.lookahead_step == 30 and back.ema_in_model and back.resumed_from == [1] and back.written_at > 0
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temporary left
    path.write_bytes(path.read_bytes()[:100])  # torn (a disk fault): started over, never a crash
    assert checkpoint.load(path) is None and checkpoint.load(tmp_path / "absent.npz") is None


def test_every_epoch_draws_its_order_and_augmentation_from_the_seed_and_epoch_alone():
    from cnnbench.training.pipeline import train_dataset

    n = 40
    x = np.random.default_rng(2).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    config = {**default_config(), "flip": "random", "translate": 2, "batch_size": 16, "epochs": 3}

    def batches(first_epoch):
        return [(images.numpy(), onehot.numpy().argmax(1)) for images, onehot in
                train_dataset(x, np.arange(n), config, n, seed=4, first_epoch=first_epoch)]

    every, from_two = batches(0), batches(2)
    steps = 3  # ceil(40 / 16) per epoch
    assert len(every) == 3 * steps and len(from_two) == steps
    for (a, la), (b, lb) in zip(every[2 * steps:], from_two):  # epoch 3, started fresh at it
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(a, b)
    orders = [np.concatenate([labels for _, labels in every[e * steps:(e + 1) * steps]]) for e in range(3)]
    assert all(sorted(o) == list(range(n)) for o in orders) and not np.array_equal(orders[0], orders[1])
