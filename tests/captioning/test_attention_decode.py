"""AttentionCaptioner through the one decoding interface: teacher-forced scores equal the
loss, greedy / beam / sampling with attention, per-image indexing, checkpoints, the solver."""

from __future__ import annotations

import numpy as np
import pytest
from captioning_helpers import make_captions, make_vocab

from captionlab.captioning import (
    AttentionCaptioner,
    CaptioningSolver,
    beam_search,
    caption_logprob,
    greedy_decode,
    load_checkpoint,
    sample_temperature,
    save_checkpoint,
)
from captionlab.errors import DataError


def _model(V=11, D=6, W=5, H=7, K=4, cells=None, dtype=np.float64, seed=0, scale=0.6,
           locations=False):  # fmt: skip
    model = AttentionCaptioner(
        make_vocab(V), input_dim=D, wordvec_dim=W, hidden_dim=H, attention_dim=K,
        dtype=dtype, seed=seed, num_cells=cells, locations=locations,
    )  # fmt: skip
    rng = np.random.default_rng(seed + 7)  # every weight non-zero, decisive scores
    for k, v in model.params.items():
        model.params[k] = (scale * rng.standard_normal(v.shape)).astype(dtype)
    return model


def _grids(N=4, L=5, D=6, seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((N, L, D)).astype(dtype)


# (num_cells, locations, L): plain; a position embedding; the cells' places (a 2x2 grid)
VARIANTS = [(None, False, 5), (5, False, 5), (None, True, 4)]


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize(("cells", "locations", "L"), VARIANTS)
def test_teacher_forced_decoding_equals_the_training_loss(fold, cells, locations, L):
    """The step interface scores a caption exactly as the training forward pass does."""
    model = _model(cells=cells, locations=locations)
    model.attention_penalty = 0.0  # the word loss alone
    A = _grids(L=L)
    captions = make_captions(np.random.default_rng(2), 4, 8, 11)  # <START> ... <END> <NULL>
    loss, _ = model.loss(A, captions)
    logp = caption_logprob(model, A, captions[:, 1:])
    assert -logp.sum() / 4 == pytest.approx(loss, rel=1e-10)
    state = model.decode_start(A, max_length=1, fold=fold)
    assert ("table" in state.shared) == fold
    scores, _, alpha = model.decode_step(np.full(4, 1), state)
    # the first step's attention is the training forward's
    cache = model._forward(model._grid(A), captions[:, :-1])
    np.testing.assert_allclose(alpha, cache["alphas"][0], rtol=1e-12)
    assert scores.shape == (4, 11) and alpha.shape == (4, L)


def test_sample_returns_captions_and_attention_per_word():
    model = _model()
    A = _grids(N=6)
    captions, alphas = model.sample(A, max_length=7)
    assert captions.shape == (6, 7) and captions.dtype == np.int32
    assert alphas.shape == (6, 7, 5)
    np.testing.assert_array_equal(captions, greedy_decode(model, A, max_length=7))
    for n in range(6):
        ends = np.flatnonzero(captions[n] == 2)
        length = ends[0] + 1 if ends.size else 7  # words up to and including <END>
        np.testing.assert_allclose(alphas[n, :length].sum(axis=1), 1.0, rtol=1e-12)
        assert np.all(alphas[n, length:] == 0) and np.all(captions[n, length:] == 0)
    # one image alone gets the same caption and attention as in the batch
    one, one_alpha = model.sample(A[3:4], max_length=7)
    np.testing.assert_array_equal(one[0], captions[3])
    np.testing.assert_allclose(one_alpha[0], alphas[3], rtol=1e-12)


@pytest.mark.parametrize("locations", [False, True])
def test_rows_indexing_their_image_equal_grouped_beams(locations):
    """The batched per-image attention (rows are each image's beams in order) equals the
    gathered one (rows in any order), and neither copies the grid into the state."""
    model = _model(locations=locations)
    A = _grids(N=3, L=9)
    state = model.decode_start(A, max_length=4)
    grouped = state.select(np.repeat(np.arange(3), 2))  # beams 2 per image, in order
    perm = np.array([4, 0, 2, 1, 5, 3])
    shuffled = grouped.select(perm)  # images 2, 0, 1, 0, 2, 1: gathered
    words = np.array([4, 5, 6, 7, 8, 9])
    s1, st1, a1 = model.decode_step(words, grouped)
    s2, st2, a2 = model.decode_step(words[perm], shuffled)
    np.testing.assert_allclose(s2, s1[perm], rtol=1e-12)
    np.testing.assert_allclose(a2, a1[perm], rtol=1e-12)
    np.testing.assert_allclose(st2.rows["h"], st1.rows["h"][perm], rtol=1e-12)
    assert set(st1.rows) == {"h", "c", "img"} and st1.shared["A"] is state.shared["A"]


@pytest.mark.parametrize(("cells", "locations", "L"), VARIANTS)
def test_beam_search_returns_each_hypothesis_attention(cells, locations, L):
    model = _model(cells=cells, locations=locations)
    A = _grids(N=5, L=L)
    greedy, greedy_att = greedy_decode(model, A, max_length=8, return_attention=True)
    one = beam_search(model, A, beam_size=1, max_length=8, return_attention=True)
    np.testing.assert_array_equal(one.captions[:, 0], greedy)
    np.testing.assert_allclose(one.attention[:, 0], greedy_att, rtol=1e-10)
    res = beam_search(model, A, beam_size=3, max_length=8, return_attention=True)
    assert res.attention.shape == (5, 3, 8, L)
    assert np.all(res.logprobs[:, 0] >= caption_logprob(model, A, greedy) - 1e-9)
    for n in range(5):
        for k in range(3):
            length = res.lengths[n, k]
            np.testing.assert_allclose(res.attention[n, k, :length].sum(-1), 1.0, rtol=1e-10)
            assert np.all(res.attention[n, k, length:] == 0)
            # the attention kept is the one each word was chosen with: rescoring the kept
            # caption by teacher forcing gives the same first-step attention
    first = model.decode_step(np.full(5, 1), model.decode_start(A))[2]
    np.testing.assert_allclose(res.attention[:, 0, 0], first, rtol=1e-10)
    assert sample_temperature(model, A, temperature=0.7, max_length=8, seed=0).shape == (5, 8)


@pytest.mark.parametrize(("cells", "locations", "L"), VARIANTS)
def test_checkpoint_round_trip(tmp_path, cells, locations, L):
    model = _model(cells=cells, dtype=np.float32, locations=locations)
    path = save_checkpoint(tmp_path / "att.npz", model, extra={"note": "x"})
    loaded, state = load_checkpoint(path)
    assert type(loaded) is AttentionCaptioner and loaded.config == model.config
    assert state["model_config"]["num_cells"] == cells
    assert state["model_config"]["locations"] is locations and loaded.locations is locations
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)
    A = _grids(N=3, L=L, dtype=np.float32)
    np.testing.assert_array_equal(loaded.sample(A)[0], model.sample(A)[0])
    assert loaded.feature_shape == (cells, 6)


def test_checkpoint_from_before_locations_loads_as_before(tmp_path):
    """A file whose model header lacks ``locations`` (written before it existed) is the
    model it was; a header with a non-boolean one fails, naming the field."""
    import json

    from captionlab.errors import CheckpointError

    model = _model(cells=5, dtype=np.float32)
    path = save_checkpoint(tmp_path / "a.npz", model)
    with np.load(path) as npz:
        arrays = dict(npz)
    header = json.loads(arrays["__header__"].tobytes())
    assert header["model"]["locations"] is False
    del header["model"]["locations"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    loaded, _ = load_checkpoint(tmp_path / "old.npz")
    assert loaded.config == model.config and list(loaded.params) == list(model.params)
    A = _grids(N=3, dtype=np.float32)
    np.testing.assert_array_equal(loaded.sample(A)[0], model.sample(A)[0])
    header["model"]["locations"] = "yes"
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="locations must be true or false"):
        load_checkpoint(tmp_path / "bad.npz")


def test_solver_trains_on_grids_read_minibatch_by_minibatch():
    """The solver takes (M, L, D) grids, as a plain array or any object that reads rows
    when indexed (a feature store's StoredRows), and never asks for the whole array."""

    class Rows:
        def __init__(self, a):
            self.a, self.shape, self.dtype, self.ndim, self.reads = a, a.shape, a.dtype, 3, 0

        def __len__(self):
            return len(self.a)

        def __getitem__(self, idx):
            self.reads += 1
            return self.a[idx]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the solver must not load the grids whole")

    rng = np.random.default_rng(0)
    V, L, D = 12, 4, 6
    feats = rng.standard_normal((20, L, D)).astype(np.float32)
    train = Rows(feats[:16])
    data = {
        "train_captions": make_captions(rng, 16, 7, V),
        "train_image_idxs": np.arange(16),
        "train_features": train,
        "val_captions": make_captions(rng, 4, 7, V),
        "val_image_idxs": np.arange(4),
        "val_features": Rows(feats[16:]),
    }
    model = AttentionCaptioner(make_vocab(V), D, 8, 8, 8, seed=0, num_cells=L)
    solver = CaptioningSolver(model, data, update_rule="adam", batch_size=8, num_epochs=2,
                              verbose=False, seed=0)  # fmt: skip
    solver.train()
    assert len(solver.loss_history) == 4 and train.reads == 4
    assert len(solver.val_metric_history) == 2
    bad = dict(data, train_features=feats[:16, :, :5])
    with pytest.raises(DataError, match=r"train_features'\] must be \(M, 4, 6\)"):
        CaptioningSolver(model, bad)
