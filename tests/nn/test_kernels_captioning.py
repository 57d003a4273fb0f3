"""The captioning model's training step and greedy decoding under the numba kernels.

``CaptioningRNN.loss`` folds the embedding into the input projection when the vocabulary
is smaller than the batch's positions; both branches must equal the layer-by-layer cs231n
computation, and the numba kernels must equal the NumPy ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from captionlab import nn
from captionlab.captioning import CaptioningRNN
from captionlab.captioning.generate import greedy_decode

pytest.importorskip("numba")

TOL = {np.float32: 1e-6, np.float64: 1e-12}


def _vocab(V):
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


def _setup(cell, V, dtype, N=6, T=9, seed=0):
    model = CaptioningRNN(
        _vocab(V), input_dim=8, wordvec_dim=5, hidden_dim=7, cell_type=cell, dtype=dtype, seed=seed
    )
    rng = np.random.default_rng(seed)
    for k in ("b", "b_proj", "b_vocab", *(("bh",) if cell == "gru" else ())):
        model.params[k] = (rng.standard_normal(model.params[k].shape) * 0.3).astype(dtype)
    captions = rng.integers(3, V, size=(N, T))
    captions[:, 0] = 1
    for n in range(N):  # some padding
        end = rng.integers(3, T)
        captions[n, end] = 2
        captions[n, end + 1 :] = 0
    return model, rng.standard_normal((N, 8)).astype(dtype), captions


def _layer_by_layer(model, features, captions):
    """The cs231n loss: every layer over every position, then the masked softmax."""
    p, cell = model.params, model.cell_type
    h0, c_proj = nn.affine_forward(features, p["W_proj"], p["b_proj"])
    x, c_emb = nn.word_embedding_forward(captions[:, :-1], p["W_embed"])
    extra = (p["bh"],) if cell == "gru" else ()
    h, c_rnn = getattr(nn, f"{cell}_forward")(x, h0, p["Wx"], p["Wh"], p["b"], *extra)
    scores, c_aff = nn.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    out = captions[:, 1:]
    loss, dscores = nn.temporal_softmax_loss(scores, out, out != 0)
    grads = {}
    dh, grads["W_vocab"], grads["b_vocab"] = nn.temporal_affine_backward(dscores, c_aff)
    dx, dh0, grads["Wx"], grads["Wh"], grads["b"], *dbh = getattr(nn, f"{cell}_backward")(dh, c_rnn)
    if dbh:
        grads["bh"] = dbh[0]
    grads["W_embed"] = nn.word_embedding_backward(dx, c_emb)
    _, grads["W_proj"], grads["b_proj"] = nn.affine_backward(dh0, c_proj)
    return loss, grads


@pytest.mark.parametrize("V", [12, 300])  # fewer / more words than the N*(T-1) = 48 positions
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loss_equals_the_layer_by_layer_model(cell, V):
    model, features, captions = _setup(cell, V, np.float64)
    loss, grads = model.loss(features, captions)
    ref_loss, ref = _layer_by_layer(model, features, captions)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert grads.keys() == ref.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V", [12, 300])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loss_numba_equals_numpy(cell, V, dtype):
    model, features, captions = _setup(cell, V, dtype, N=40, T=12)
    with nn.use_kernels("numpy"):
        ref_loss, ref = model.loss(features, captions)
    with nn.use_kernels("numba"):
        loss, grads = model.loss(features, captions)
    tol = TOL[dtype]
    assert loss == pytest.approx(ref_loss, rel=tol)
    for k in grads:
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(
            grads[k], ref[k], rtol=tol, atol=tol * np.max(np.abs(ref[k])), err_msg=k
        )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_greedy_decoding_numba_equals_numpy(cell):
    model, features, _ = _setup(cell, 40, np.float64, N=50)
    with nn.use_kernels("numpy"):
        ref = greedy_decode(model, features, max_length=12)
        ref_unfolded = greedy_decode(model, features, max_length=12, fold=False)
    with nn.use_kernels("numba"):
        fast = greedy_decode(model, features, max_length=12)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(ref_unfolded, ref)
