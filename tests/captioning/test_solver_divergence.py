"""Divergence: a loss growing by orders of magnitude (or NaN) stops training with one line
and keeps the best checkpoint; validation with no images monitors the loss; references are
texts, so a model that only says <UNK> scores nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from captioning_helpers import make_data

from captionlab.captioning import CaptioningRNN, CaptioningSolver, TrainingDivergedError


def _model(data):
    return CaptioningRNN(
        data["word_to_idx"], input_dim=data["train_features"].shape[1], wordvec_dim=6,
        hidden_dim=8, cell_type="lstm", dtype=np.float64, seed=0,
    )  # fmt: skip


def test_a_growing_loss_stops_training_and_keeps_the_best_checkpoint(tmp_path):
    data = make_data()
    model = _model(data)
    real_loss = model.loss
    calls = {"n": 0}

    def blowing_up(features, captions):
        calls["n"] += 1
        loss, grads = real_loss(features, captions)
        if calls["n"] >= 11:  # 4 steps + 1 validation call per epoch: epoch 3
            loss *= 1e4
        return loss, grads

    model.loss = blowing_up
    solver = CaptioningSolver(
        model, data, update_rule="adam", num_epochs=5, batch_size=10, verbose=False,
        metric=lambda h, r: 0.5, checkpoint_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning before the error
        with pytest.raises(TrainingDivergedError) as info:
            solver.train()
    message = str(info.value)
    assert "the loss grew from" in message and "at epoch 3, iteration 9" in message
    assert f"the best checkpoint {tmp_path / 'best.npz'} (epoch 1)" in message
    assert "\n" not in message
    assert (tmp_path / "best.npz").is_file() and solver.epoch == 2


def test_overflow_is_reported_without_runtime_warnings():
    data = make_data()
    model = _model(data)
    model.params["W_vocab"] *= 1e300  # scores overflow to inf, the loss to nan
    solver = CaptioningSolver(model, data, num_epochs=1, batch_size=10, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrainingDivergedError, match="became"):
            solver.train()


def test_no_validation_images_monitors_the_validation_loss():
    data = make_data()
    solver = CaptioningSolver(
        _model(data), data, num_epochs=2, batch_size=10, verbose=False, val_images=0
    )
    solver.train()
    assert solver.val_metric_history == [] and len(solver.val_loss_history) == 2
    assert solver._monitor() == "val_loss" and solver.best_epoch is not None


def test_references_are_texts_so_unknown_words_never_match():
    """A model that says only <UNK> against references turned into <UNK> scored high;
    with the texts as references it scores nothing."""
    data = make_data()
    data["val_texts"] = ["some real words here"] * data["val_captions"].shape[0]
    seen = []
    solver = CaptioningSolver(
        _model(data), data, num_epochs=1, batch_size=10, verbose=False,
        metric=lambda h, r: seen.append(r) or 0.0,
    )  # fmt: skip
    solver.train()
    assert seen[0][0] == ["some real words here"] * 3
