"""Checkpoints: round trip, no pickle, atomic writes, one-line errors that name the file."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from captioning_helpers import make_data, make_vocab

from captionlab.captioning import CaptioningRNN, CaptioningSolver, load_checkpoint
from captionlab.captioning import checkpoint as ckpt
from captionlab.captioning.checkpoint import save_checkpoint
from captionlab.errors import CheckpointError, UserError


def _model(cell="lstm", dtype=np.float32, V=15):
    return CaptioningRNN(
        make_vocab(V),
        input_dim=6,
        wordvec_dim=5,
        hidden_dim=4,
        cell_type=cell,
        dtype=dtype,
        seed=0,
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_model_vocab_and_extra(tmp_path, cell, dtype):
    model = _model(cell, dtype)
    extra = {
        "backbone": "efficientnet-lite0",
        "image_size": 160,
        "pooling": "avg2x2",
        "pca": {"dim": 4, "mean": np.arange(6, dtype=np.float32)},
    }
    path = save_checkpoint(tmp_path / "m.npz", model, extra=extra)
    loaded, state = load_checkpoint(path)
    assert loaded.cell_type == cell and loaded.dtype == np.dtype(dtype)
    assert loaded.word_to_idx == model.word_to_idx
    assert loaded.idx_to_word == model.idx_to_word
    assert set(loaded.params) == set(model.params)
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded.params[k], v)
    assert state["format_version"] == ckpt.FORMAT_VERSION
    assert state["model_config"] == model.config.to_dict()
    assert state["solver_state"] is None
    assert state["extra"]["backbone"] == "efficientnet-lite0"
    assert state["extra"]["image_size"] == 160
    np.testing.assert_array_equal(state["extra"]["pca"]["mean"], np.arange(6))
    feats = np.random.default_rng(0).standard_normal((3, 6))
    np.testing.assert_array_equal(loaded.sample(feats, 6), model.sample(feats, 6))


def test_non_contiguous_vocabulary_round_trips(tmp_path):
    model = CaptioningRNN(
        {"<NULL>": 0, "cat": 2, "dog": 3}, input_dim=3, wordvec_dim=2, hidden_dim=2, seed=0
    )
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "m.npz", model))
    assert loaded.word_to_idx == {"<NULL>": 0, "cat": 2, "dog": 3}


def test_file_is_plain_npz_with_a_json_header(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", _model())
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__header__"].tobytes().decode("utf-8"))
        names = set(npz.files)
    assert header["format"] == "captionlab-checkpoint"
    assert header["model"]["cell_type"] == "lstm"
    assert header["vocab"]["idx_to_word"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert {f"params/{k}" for k in ("W_embed", "Wx", "Wh", "b", "W_vocab")} <= names


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.npz")


def test_truncated_file_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", _model())
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(cut)
    msg = str(info.value)
    assert str(cut) in msg and "truncated" in msg and "\n" not in msg
    assert isinstance(info.value, UserError)


def test_foreign_files_are_rejected(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        load_checkpoint(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(CheckpointError, match=r"other\.npz: not a captionlab checkpoint.*weights"):
        load_checkpoint(other)
    wrong = tmp_path / "wrong.npz"
    header = json.dumps({"format": "someone-else", "format_version": 1}).encode()
    np.savez(wrong, __header__=np.frombuffer(header, dtype=np.uint8))
    with pytest.raises(
        CheckpointError, match="format must be 'captionlab-checkpoint', got 'someone-else'"
    ):
        load_checkpoint(wrong)


def test_future_version_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 99)
    path = save_checkpoint(tmp_path / "m.npz", _model())
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 1)
    with pytest.raises(CheckpointError, match=r"m\.npz: checkpoint format version 99 is newer"):
        load_checkpoint(path)


def test_wrong_parameter_shape_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", _model())
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["params/Wh"] = arrays["params/Wh"][:, :3]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(
        CheckpointError, match=r"'params/Wh' must have shape \(4, 16\), got \(4, 3\)"
    ):
        load_checkpoint(tmp_path / "bad.npz")


def _with_header(tmp_path, change) -> str:
    """A copy of a saved checkpoint whose JSON header ``change(header)`` edited."""
    path = save_checkpoint(tmp_path / "m.npz", _model())
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["__header__"].tobytes())
    change(header)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "edited.npz", **arrays)
    return tmp_path / "edited.npz"


def test_unknown_model_class_and_malformed_model_fields_are_named(tmp_path):
    path = _with_header(tmp_path, lambda h: h["model"].update({"class": "os.system"}))
    with pytest.raises(CheckpointError, match=r"'model.class' must be one of .*got 'os.system'"):
        load_checkpoint(path)
    path = _with_header(tmp_path, lambda h: h["model"].update({"cell_type": "tcn"}))
    with pytest.raises(CheckpointError, match=r"field 'model' .*cell_type must be one of"):
        load_checkpoint(path)
    path = _with_header(tmp_path, lambda h: h["model"].pop("hidden_dim"))
    with pytest.raises(CheckpointError, match=r"field 'model' .*missing \['hidden_dim'\]"):
        load_checkpoint(path)
    with pytest.raises(TypeError, match="cannot checkpoint a dict"):
        save_checkpoint(tmp_path / "x.npz", {"params": {}})


def test_pickle_bearing_file_is_rejected_without_unpickling(tmp_path):
    """An object array (which only pickle can load) is refused; its code never runs."""
    path = save_checkpoint(tmp_path / "m.npz", _model())
    evil = tmp_path / "evil.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        buf = io.BytesIO()
        np.save(buf, np.array([_Boom()], dtype=object), allow_pickle=True)
        dst.writestr("params/payload.npy", buf.getvalue())
    _Boom.ran = False
    with pytest.raises(CheckpointError, match=r"evil\.npz: holds entries .*'params/payload'"):
        load_checkpoint(evil)
    assert not _Boom.ran
    # Referred to by the header, the object array is refused from its .npy header.
    referred = _with_header(tmp_path, lambda h: h["extra"].update(x={"__array__": "extra/x"}))
    with zipfile.ZipFile(referred, "a") as dst:
        dst.writestr("extra/x.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match=r"array 'extra/x' must be numeric, got dtype object"):
        load_checkpoint(referred)
    assert not _Boom.ran


class _Boom:
    ran = False

    def __reduce__(self):
        return (_Boom._explode, ())

    @staticmethod
    def _explode():
        _Boom.ran = True
        return "boom"


def test_object_arrays_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="numeric"):
        save_checkpoint(tmp_path / "m.npz", _model(), solver_state={"x": np.array([object()])})
    assert not (tmp_path / "m.npz").exists()


def test_atomic_write_crash_before_rename_keeps_old_file(tmp_path, monkeypatch):
    model = _model()
    path = save_checkpoint(tmp_path / "m.npz", model)
    before = path.read_bytes()
    changed = _model()
    changed.params["Wh"] += 1.0

    def crash(src, dst):
        raise KeyboardInterrupt("simulated crash between write and rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, changed)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temp file left
    loaded, _ = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.params["Wh"], model.params["Wh"])


def test_atomic_write_replaces_via_a_temp_file_in_the_same_folder(tmp_path, monkeypatch):
    seen = []
    real_replace = ckpt.os.replace

    def spy(src, dst):
        seen.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", spy)
    save_checkpoint(tmp_path / "sub" / "m.npz", _model())
    ((src, dst),) = seen
    assert str(dst) == str(tmp_path / "sub" / "m.npz")
    assert str(src).startswith(str(tmp_path / "sub")) and src != dst


def test_resumed_float64_run_reproduces_the_uninterrupted_losses(tmp_path):
    data = make_data(seed=3, n_train=30)

    def new_model():
        return CaptioningRNN(
            data["word_to_idx"],
            input_dim=12,
            wordvec_dim=6,
            hidden_dim=8,
            cell_type="lstm",
            dtype=np.float64,
            seed=4,
        )

    kwargs = dict(
        update_rule="adam",
        optim_config={"learning_rate": 1e-2},
        lr_decay=0.9,
        batch_size=7,
        verbose=False,
        seed=11,
        grad_clip=1.0,
        val_images=3,
        metric=lambda h, r: float(len(" ".join(h))),
    )
    full = CaptioningSolver(new_model(), data, num_epochs=5, **kwargs)
    full.train()

    first = CaptioningSolver(new_model(), data, num_epochs=2, checkpoint_dir=tmp_path, **kwargs)
    first.train()
    resumed = CaptioningSolver(
        new_model(),
        data,
        num_epochs=5,
        checkpoint_dir=tmp_path,
        resume_from=tmp_path / "last.npz",
        **kwargs,
    )
    assert resumed.epoch == 2
    resumed.train()
    assert resumed.loss_history == full.loss_history  # exactly
    assert resumed.val_loss_history == full.val_loss_history
    assert resumed.val_metric_history == full.val_metric_history
    assert resumed.best_epoch == full.best_epoch
    for k in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], full.model.params[k])


def test_resume_rejects_a_checkpoint_without_solver_state(tmp_path):
    data = make_data()
    model = CaptioningRNN(data["word_to_idx"], input_dim=12, wordvec_dim=6, hidden_dim=8, seed=0)
    path = save_checkpoint(tmp_path / "m.npz", model)
    with pytest.raises(CheckpointError, match="holds no solver state"):
        CaptioningSolver(model, data, resume_from=path, verbose=False)
