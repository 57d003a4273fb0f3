"""Finite-difference checks of every backward, fast path == per-step reference, negative control."""

import numpy as np
import pytest
from nn_reference import (
    gru_backward_ref,
    gru_forward_ref,
    lstm_backward_ref,
    lstm_forward_ref,
    rnn_backward_ref,
    rnn_forward_ref,
)

from captionlab import nn
from captionlab.nn import gradcheck
from captionlab.nn.gradcheck import (
    check_layers,
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    rel_error,
)

EXPECTED = {
    "affine": ["x", "w", "b"],
    "word_embedding": ["W"],
    "temporal_affine": ["x", "w", "b"],
    "temporal_softmax_loss": ["x"],
    "rnn_step": ["x", "prev_h", "Wx", "Wh", "b"],
    "rnn": ["x", "h0", "Wx", "Wh", "b"],
    "lstm_step": ["x", "prev_h", "prev_c", "Wx", "Wh", "b"],
    "lstm": ["x", "h0", "Wx", "Wh", "b"],
    "gru_step": ["x", "prev_h", "Wx", "Wh", "b", "bh"],
    "gru": ["x", "h0", "Wx", "Wh", "b", "bh"],
    "additive_attention": ["A", "A_proj", "h", "Wh", "b", "w"],
    "additive_attn_mask": ["A", "A_proj", "h", "Wh", "b", "w"],
    "masked_softmax": ["x"],
    "scaled_dot_product_attention": ["q", "k", "v"],
    # not bk: dbk is zero up to rounding (softmax ignores a shift of a whole row)
    "multihead_attention": ["query", "key", "value", "Wq", "bq", "Wk", "Wv", "bv", "Wo", "bo"],
    "layernorm": ["x", "gamma", "beta"],
    "dropout": ["x"],
    "positional_encoding": ["x"],
    "feedforward": ["x", "W1", "b1", "W2", "b2"],
    "decoder_layer": [
        "x",
        "memory",
        *(k for k in nn.DECODER_LAYER_KEYS if not k.endswith("attn.bk")),
    ],
    "encoder_layer": ["x", *(k for k in nn.ENCODER_LAYER_KEYS if not k.endswith("attn.bk"))],
}
CASES = [(layer, p) for layer, params in EXPECTED.items() for p in params]


@pytest.fixture(scope="module")
def results():
    return {(r.layer, r.parameter): r for r in check_layers(seed=0)}


def test_every_layer_and_parameter_is_checked(results):
    assert sorted(results) == sorted(CASES)


@pytest.mark.parametrize(("layer", "parameter"), CASES)
def test_backward_matches_finite_differences(results, layer, parameter):
    result = results[(layer, parameter)]
    step_layer = layer not in {"rnn", "lstm", "gru", "decoder_layer", "encoder_layer"}
    assert result.tolerance == (1e-7 if step_layer else 1e-5)
    assert result.rel_error < result.tolerance, result


def test_checker_fails_on_a_wrong_backward(monkeypatch):
    """Negative control: the checker must catch a deliberately wrong backward."""
    real = nn.lstm.lstm_backward

    def wrong(dh, cache):
        dx, dh0, dWx, dWh, db = real(dh, cache)
        dWh = dWh.copy()
        dWh[0, 0] *= 1.01  # a one-percent error in one entry
        return dx, dh0, dWx, dWh, db

    monkeypatch.setattr(nn.lstm, "lstm_backward", wrong)
    results = {(r.layer, r.parameter): r for r in check_layers(seed=0)}
    assert not results[("lstm", "Wh")].passed
    assert results[("lstm", "Wx")].passed


def test_checker_catches_assign_instead_of_accumulate(monkeypatch):
    def assigning(dout, cache):
        x, W = cache
        dW = np.zeros_like(W)
        dW[x] = dout  # the classic bug: repeated words keep only one gradient
        return dW

    monkeypatch.setattr(nn.layers, "word_embedding_backward", assigning)
    results = {(r.layer, r.parameter): r for r in check_layers(seed=0)}
    assert not results[("word_embedding", "W")].passed


def test_numerical_gradient_of_known_functions():
    x = np.array([1.0, -2.0, 3.0])
    g = eval_numerical_gradient(lambda v: float(np.sum(v**3)), x, verbose=False)
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-8)
    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])  # restored
    df = np.array([0.5, 1.0, -1.0])
    ga = eval_numerical_gradient_array(lambda v: np.sin(v), x, df)
    np.testing.assert_allclose(ga, np.cos(x) * df, rtol=1e-8)
    assert rel_error(np.array([1.0]), np.array([1.0])) == 0.0
    assert rel_error(np.array([1.0]), np.array([3.0])) == pytest.approx(0.5)


SHAPES = [(1, 1, 1, 1), (2, 1, 3, 4), (3, 5, 4, 6), (4, 7, 2, 3)]


def _params(rng, N, T, D, H, gates):
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H))
    Wx = rng.standard_normal((D, gates * H)) / np.sqrt(D)
    Wh = rng.standard_normal((H, gates * H)) / np.sqrt(H)
    b = rng.standard_normal(gates * H)
    dh = rng.standard_normal((N, T, H))
    return x, h0, Wx, Wh, b, dh


def _assert_all_close(fast, ref):
    assert len(fast) == len(ref)
    for k, (a, r) in enumerate(zip(fast, ref, strict=True)):
        assert np.shape(a) == np.shape(r), k
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10, err_msg=f"output {k}")


@pytest.mark.parametrize("shape", SHAPES)
def test_rnn_fast_equals_reference(shape):
    x, h0, Wx, Wh, b, dh = _params(np.random.default_rng(1), *shape, gates=1)
    h, cache = nn.rnn_forward(x, h0, Wx, Wh, b)
    h_ref, caches = rnn_forward_ref(x, h0, Wx, Wh, b)
    _assert_all_close([h], [h_ref])
    _assert_all_close(nn.rnn_backward(dh, cache), rnn_backward_ref(dh, caches))


@pytest.mark.parametrize("shape", SHAPES)
def test_lstm_fast_equals_reference(shape):
    x, h0, Wx, Wh, b, dh = _params(np.random.default_rng(2), *shape, gates=4)
    h, cache = nn.lstm_forward(x, h0, Wx, Wh, b)
    h_ref, caches = lstm_forward_ref(x, h0, Wx, Wh, b)
    _assert_all_close([h], [h_ref])
    _assert_all_close(nn.lstm_backward(dh, cache), lstm_backward_ref(dh, caches))


@pytest.mark.parametrize("shape", SHAPES)
def test_gru_fast_equals_reference(shape):
    rng = np.random.default_rng(3)
    x, h0, Wx, Wh, b, dh = _params(rng, *shape, gates=3)
    bh = rng.standard_normal(b.shape)
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, bh)
    h_ref, caches = gru_forward_ref(x, h0, Wx, Wh, b, bh)
    _assert_all_close([h], [h_ref])
    _assert_all_close(nn.gru_backward(dh, cache), gru_backward_ref(dh, caches))


def test_backward_twice_gives_the_same_gradients():
    """The backward pass must not consume its cache (gradient checkers call it again)."""
    x, h0, Wx, Wh, b, dh = _params(np.random.default_rng(4), 3, 4, 5, 6, gates=4)
    _, cache = nn.lstm_forward(x, h0, Wx, Wh, b)
    first = [g.copy() for g in nn.lstm_backward(dh, cache)]
    _assert_all_close(nn.lstm_backward(dh, cache), first)


def test_inputs_are_left_unchanged():
    x, h0, Wx, Wh, b, dh = _params(np.random.default_rng(5), 2, 3, 4, 5, gates=3)
    bh = b.copy()
    saved = [a.copy() for a in (x, h0, Wx, Wh, b, bh, dh)]
    _, cache = nn.gru_forward(x, h0, Wx, Wh, b, bh)
    nn.gru_backward(dh, cache)
    for a, s in zip((x, h0, Wx, Wh, b, bh, dh), saved, strict=True):
        np.testing.assert_array_equal(a, s)


def test_tolerances_are_the_issue_s():
    assert gradcheck.STEP_TOLERANCE == 1e-7
    assert gradcheck.SEQUENCE_TOLERANCE == 1e-5
