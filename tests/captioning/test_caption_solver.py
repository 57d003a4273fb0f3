"""CaptioningSolver: cs231n constructor, validation, best params, clipping, early stopping,
divergence, callbacks, loss curve, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from captioning_helpers import make_data
from PIL import Image

from captionlab.captioning import (
    CaptioningRNN,
    CaptioningSolver,
    SolverOptions,
    TrainingDivergedError,
    captions_to_text,
    load_checkpoint,
)
from captionlab.errors import DataError, UserError
from captionlab.nn import optim


def _model(data, cell="rnn", dtype=np.float64, seed=0):
    return CaptioningRNN(
        data["word_to_idx"],
        input_dim=data["train_features"].shape[1],
        wordvec_dim=6,
        hidden_dim=8,
        cell_type=cell,
        dtype=dtype,
        seed=seed,
    )


def _scripted(values):
    """A metric that returns the given values in turn and records what it was shown."""
    calls = []

    def metric(hyps, refs):
        calls.append((hyps, refs))
        return values[len(calls) - 1]

    return metric, calls


def test_cs231n_constructor_and_history():
    data = make_data(n_train=40)
    solver = CaptioningSolver(
        _model(data),
        data,
        update_rule="adam",
        num_epochs=3,
        batch_size=10,
        optim_config={"learning_rate": 5e-3},
        lr_decay=0.5,
        print_every=10,
        verbose=False,
        metric=lambda h, r: 0.0,
    )
    solver.train()
    assert len(solver.loss_history) == 3 * 4  # epochs * (N // batch_size)
    assert solver.train_loss_history[-1] < solver.train_loss_history[0]
    assert solver.epoch == 3
    assert all(
        c["learning_rate"] == pytest.approx(5e-3 * 0.5**3) for c in solver.optim_configs.values()
    )
    assert len(solver.train_loss_history) == len(solver.val_loss_history) == 3


def test_unknown_keyword_and_update_rule_are_named():
    data = make_data()
    with pytest.raises(ValueError, match="Unrecognized arguments learnin_rate"):
        CaptioningSolver(_model(data), data, learnin_rate=1e-3)
    with pytest.raises(ValueError, match='Invalid update_rule "adamw"'):
        CaptioningSolver(_model(data), data, update_rule="adamw")


def test_options_dataclass_and_keywords_combine():
    data = make_data()
    opts = SolverOptions(seed=3, grad_clip=2.0)
    solver = CaptioningSolver(_model(data), data, options=opts, patience=4, verbose=False)
    assert (solver.options.seed, solver.options.grad_clip, solver.options.patience) == (3, 2.0, 4)
    assert opts.patience is None  # the caller's options object is left as found


def test_data_errors_name_the_field():
    data = make_data(D=12)
    bad = dict(data, train_features=data["train_features"][:, :5])
    with pytest.raises(
        DataError, match=r"data\['train_features'\] must be \(M, 12\), got \(40, 5\)"
    ):
        CaptioningSolver(_model(data), bad)
    bad = dict(data, train_image_idxs=data["train_image_idxs"] + 100)
    with pytest.raises(DataError, match="train_image_idxs"):
        CaptioningSolver(_model(data), bad)
    bad = {k: v for k, v in data.items() if k != "train_captions"}
    with pytest.raises(UserError, match="missing 'train_captions'"):
        CaptioningSolver(_model(data), bad)


def test_seed_makes_runs_reproducible():
    data = make_data()

    def run(seed):
        s = CaptioningSolver(
            _model(data),
            data,
            update_rule="adam",
            num_epochs=2,
            batch_size=8,
            optim_config={"learning_rate": 1e-2},
            verbose=False,
            seed=seed,
            metric=lambda h, r: 0.0,
        )
        return s.train().loss_history

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_validation_metric_compares_each_image_with_all_its_references():
    data = make_data(n_val_images=6, captions_per_image=3)
    metric, calls = _scripted([0.1, 0.2])
    solver = CaptioningSolver(
        _model(data),
        data,
        num_epochs=2,
        batch_size=10,
        verbose=False,
        metric=metric,
        val_images=4,
        max_length=5,
    )
    solver.train()
    assert len(calls) == 2
    hyps, refs = calls[0]
    images = solver.val_subset["images"]
    assert len(hyps) == len(refs) == len(images) == 4
    texts = captions_to_text(data["val_captions"], data["idx_to_word"])
    for img, img_refs in zip(images, refs, strict=True):
        rows = np.flatnonzero(data["val_image_idxs"] == img)
        assert img_refs == [texts[r] for r in rows] and len(img_refs) == 3
    model_hyps = captions_to_text(
        solver.model.sample(data["val_features"][images], 5), data["idx_to_word"]
    )
    assert all(len(h.split()) <= 5 for h in hyps)
    assert calls[1][1] == refs  # the same fixed subset every epoch
    capped = CaptioningSolver(_model(data), data, verbose=False, val_images=4, val_loss_captions=5)
    assert capped.val_subset["caption_rows"].size == 5
    assert set(data["val_image_idxs"][capped.val_subset["caption_rows"]]) <= set(images)
    assert solver.val_metric_history == [0.1, 0.2]
    assert len(model_hyps) == 4


def test_default_metric_is_bleu4():
    data = make_data()
    solver = CaptioningSolver(_model(data), data, num_epochs=1, batch_size=10, verbose=False)
    solver.train()
    assert len(solver.val_metric_history) == 1
    assert 0.0 <= solver.val_metric_history[0] <= 1.0


def test_best_parameters_are_kept_and_restored():
    data = make_data()
    metric, _ = _scripted([0.1, 0.5, 0.2, 0.3])
    snapshots = {}

    def on_epoch_end(solver, record):
        snapshots[record["epoch"]] = {k: v.copy() for k, v in solver.model.params.items()}
        assert record["bleu4"] == [0.1, 0.5, 0.2, 0.3][record["epoch"] - 1]

    kwargs = dict(
        update_rule="adam",
        num_epochs=4,
        batch_size=10,
        verbose=False,
        optim_config={"learning_rate": 1e-2},
        on_epoch_end=on_epoch_end,
    )
    # by default (cs231n) the model keeps its last parameters; the best ones are kept aside
    plain = CaptioningSolver(_model(data), data, metric=metric, **kwargs).train()
    assert plain.best_epoch == 2 and plain.best_score == 0.5
    for k, v in plain.model.params.items():
        np.testing.assert_array_equal(v, snapshots[4][k])
        np.testing.assert_array_equal(plain.best_params[k], snapshots[2][k])
    metric, _ = _scripted([0.1, 0.5, 0.2, 0.3])
    solver = CaptioningSolver(_model(data), data, metric=metric, restore_best=True, **kwargs)
    solver.train()
    assert solver.best_epoch == 2 and solver.best_score == 0.5
    for k, v in solver.model.params.items():
        np.testing.assert_array_equal(v, snapshots[2][k])
        assert not np.array_equal(snapshots[4][k], snapshots[2][k]) or k == "b_proj"


def test_early_stopping_with_patience():
    data = make_data()
    metric, calls = _scripted([0.3, 0.2, 0.1, 0.05, 0.9, 0.9])
    solver = CaptioningSolver(
        _model(data), data, num_epochs=6, batch_size=10, verbose=False, metric=metric, patience=2
    )
    solver.train()
    assert solver.epoch == 3 and len(calls) == 3
    assert solver.stop_reason == "early stop: no improvement of val_metric for 2 epochs"


def test_monitor_train_loss_without_validation_data():
    data = {k: v for k, v in make_data().items() if not k.startswith("val_")}
    solver = CaptioningSolver(
        _model(data),
        data,
        num_epochs=2,
        batch_size=10,
        verbose=False,
        update_rule="adam",
        optim_config={"learning_rate": 1e-2},
    )
    solver.train()
    assert solver.val_loss_history == [] and solver.val_metric_history == []
    assert solver.best_score == -min(solver.train_loss_history)


def test_gradient_clipping_by_global_norm():
    data = make_data()
    seen = []

    def record_sgd(w, dw, config=None):
        seen.append(dw.copy())
        return optim.sgd(w, dw, config)

    solver = CaptioningSolver(
        _model(data),
        data,
        update_rule=record_sgd,
        num_epochs=1,
        batch_size=40,
        verbose=False,
        grad_clip=0.01,
        optim_config={"learning_rate": 0.0},
        metric=lambda h, r: 0.0,
    )
    solver.train()
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in seen))
    assert norm == pytest.approx(0.01, rel=1e-6)
    assert solver.grad_norm_history[0] > 0.01  # the raw gradient was larger
    # clipping scales, it does not turn: the clipped gradient is parallel to the raw one
    model = _model(data)
    _, raw = model.loss(data["train_features"], data["train_captions"])
    seen.clear()
    CaptioningSolver(
        model,
        data,
        update_rule=record_sgd,
        num_epochs=1,
        batch_size=40,
        verbose=False,
        grad_clip=0.01,
        optim_config={"learning_rate": 0.0},
        metric=lambda h, r: 0.0,
    ).train()
    scale = 0.01 / np.sqrt(sum(float(np.sum(g * g)) for g in raw.values()))
    for got, k in zip(seen, model.params, strict=True):
        np.testing.assert_allclose(got, raw[k] * scale, rtol=1e-6, atol=1e-12)


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    data = make_data()
    model = _model(data)
    real_loss = model.loss
    calls = {"n": 0}

    def flaky_loss(features, captions):
        calls["n"] += 1
        loss, grads = real_loss(features, captions)
        if calls["n"] == 11:  # 4 steps + 1 validation call per epoch: epoch 3, iteration 9
            grads["Wh"][0, 0] = np.inf
        return loss, grads

    model.loss = flaky_loss
    metric, _ = _scripted([0.1, 0.2, 0.3])
    solver = CaptioningSolver(
        model,
        data,
        num_epochs=5,
        batch_size=10,
        verbose=False,
        metric=metric,
        checkpoint_dir=tmp_path,
        restore_best=False,
    )
    with pytest.raises(TrainingDivergedError) as info:
        solver.train()
    msg = str(info.value)
    assert "gradient norm became inf at epoch 3, iteration 9" in msg
    assert str(tmp_path / "last.npz") in msg and "\n" not in msg
    assert isinstance(info.value, UserError)
    saved, state = load_checkpoint(tmp_path / "last.npz")
    assert state["solver_state"]["epoch"] == 2
    assert all(np.all(np.isfinite(v)) for v in saved.params.values())
    # the bad update was not applied
    assert all(np.all(np.isfinite(v)) for v in model.params.values())
    assert solver.stop_reason.startswith("diverged")


def test_nan_loss_is_reported():
    data = make_data()
    model = _model(data)
    model.params["W_vocab"][:] = np.nan
    solver = CaptioningSolver(model, data, num_epochs=1, batch_size=10, verbose=False)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1, iteration 1"):
        solver.train()


def test_checkpoints_and_callbacks(tmp_path):
    data = make_data()
    metric, _ = _scripted([0.2, 0.1, 0.4])
    events = []
    solver = CaptioningSolver(
        _model(data),
        data,
        num_epochs=3,
        batch_size=10,
        verbose=False,
        metric=metric,
        checkpoint_dir=tmp_path,
        checkpoint_extra={"backbone": "toy"},
        on_checkpoint=lambda s, path, kind: events.append((s.epoch, path.name, kind)),
    )
    solver.train()
    assert events == [
        (1, "last.npz", "last"),
        (1, "best.npz", "best"),
        (2, "last.npz", "last"),
        (3, "last.npz", "last"),
        (3, "best.npz", "best"),
    ]
    _, state = load_checkpoint(tmp_path / "best.npz")
    assert state["extra"] == {"backbone": "toy"}
    assert state["solver_state"]["best"]["epoch"] == 3


def test_loss_curve_png_and_progress_bar(tmp_path, capsys):
    data = make_data()
    path = tmp_path / "curves" / "loss.png"
    path.parent.mkdir()
    solver = CaptioningSolver(
        _model(data),
        data,
        num_epochs=2,
        batch_size=10,
        verbose=True,
        print_every=2,
        metric=lambda h, r: 0.5,
        loss_curve_path=path,
        progress=True,
    )
    solver.train()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300
    out = capsys.readouterr()
    assert "(Iteration 2 / 8) loss:" in out.out + out.err
    assert "(Epoch 2 / 2) train loss:" in out.out + out.err
    assert "train" in out.err  # the tqdm bar


def test_cs231n_notebook_flow_runs_unchanged(capsys):
    """The RNN_Captioning notebook's overfit cell, with its data dict's extra keys."""
    data = make_data(n_train=50, T=9)
    small_data = dict(data, train_urls=np.array(["u"] * 50), val_urls=np.array(["v"] * 6))
    np.random.seed(231)  # noqa: NPY002 (what the notebook does)
    small_rnn_model = CaptioningRNN(
        cell_type="rnn",
        word_to_idx=data["word_to_idx"],
        input_dim=data["train_features"].shape[1],
        hidden_dim=16,
        wordvec_dim=8,
    )
    small_rnn_solver = CaptioningSolver(
        small_rnn_model,
        small_data,
        update_rule="adam",
        num_epochs=4,
        batch_size=25,
        optim_config={"learning_rate": 5e-3},
        lr_decay=0.95,
        verbose=True,
        print_every=2,
    )
    small_rnn_solver.train()
    assert len(small_rnn_solver.loss_history) == 8
    assert "(Iteration 8 / 8) loss:" in capsys.readouterr().out
    gt_captions = small_data["train_captions"][:2]
    features = small_data["train_features"][small_data["train_image_idxs"][:2]]
    sample_captions = small_rnn_model.sample(features)
    assert sample_captions.shape == (2, 30)
    assert len(captions_to_text(gt_captions, data["idx_to_word"])) == 2
