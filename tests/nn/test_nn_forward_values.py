"""Fixed-input forward values (the cs231n assignment-3 notebook checks) and layer sanity."""

import numpy as np
import pytest

from captionlab.nn import (
    affine_forward,
    log_softmax,
    lstm_forward,
    lstm_step_forward,
    rnn_forward,
    rnn_step_forward,
    sigmoid,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)
from captionlab.nn.gradcheck import rel_error


def lin(lo, hi, *shape):
    return np.linspace(lo, hi, num=int(np.prod(shape))).reshape(shape)


def test_rnn_step_forward_values():
    N, D, H = 3, 10, 4
    next_h, _ = rnn_step_forward(
        lin(-0.4, 0.7, N, D),
        lin(-0.2, 0.5, N, H),
        lin(-0.1, 0.9, D, H),
        lin(-0.3, 0.7, H, H),
        lin(-0.2, 0.4, H),
    )
    expected = np.array(
        [
            [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
            [0.66854692, 0.79562378, 0.87755553, 0.92795967],
            [0.97934501, 0.99144213, 0.99646691, 0.99854353],
        ]
    )
    assert rel_error(next_h, expected) < 1e-7


def test_rnn_forward_values():
    N, T, D, H = 2, 3, 4, 5
    h, _ = rnn_forward(
        lin(-0.1, 0.3, N, T, D),
        lin(-0.3, 0.1, N, H),
        lin(-0.2, 0.4, D, H),
        lin(-0.4, 0.1, H, H),
        lin(-0.7, 0.1, H),
    )
    expected = np.array(
        [
            [
                [-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
                [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
                [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525],
            ],
            [
                [-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
                [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
                [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043],
            ],
        ]
    )
    assert rel_error(h, expected) < 1e-7


def test_lstm_step_forward_values():
    N, D, H = 3, 4, 5
    next_h, next_c, _ = lstm_step_forward(
        lin(-0.4, 1.2, N, D),
        lin(-0.3, 0.7, N, H),
        lin(-0.4, 0.9, N, H),
        lin(-2.1, 1.3, D, 4 * H),
        lin(-0.7, 2.2, H, 4 * H),
        lin(0.3, 0.7, 4 * H),
    )
    expected_h = np.array(
        [
            [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
            [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
            [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299],
        ]
    )
    expected_c = np.array(
        [
            [0.32986176, 0.39145139, 0.451556, 0.51014116, 0.56717407],
            [0.66382255, 0.76674007, 0.87195994, 0.97902709, 1.08751345],
            [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676],
        ]
    )
    assert rel_error(next_h, expected_h) < 1e-7
    assert rel_error(next_c, expected_c) < 1e-7


def test_lstm_forward_values():
    N, D, H, T = 2, 5, 4, 3
    h, _ = lstm_forward(
        lin(-0.4, 0.6, N, T, D),
        lin(-0.4, 0.8, N, H),
        lin(-0.2, 0.9, D, 4 * H),
        lin(-0.3, 0.6, H, 4 * H),
        lin(0.2, 0.7, 4 * H),
    )
    expected = np.array(
        [
            [
                [0.01764008, 0.01823233, 0.01882671, 0.0194232],
                [0.11287491, 0.12146228, 0.13018446, 0.13902939],
                [0.31358768, 0.33338627, 0.35304453, 0.37250975],
            ],
            [
                [0.45767879, 0.4761092, 0.4936887, 0.51041945],
                [0.6704845, 0.69350089, 0.71486014, 0.7346449],
                [0.81733511, 0.83677871, 0.85403753, 0.86935314],
            ],
        ]
    )
    assert rel_error(h, expected) < 1e-7


def test_word_embedding_forward_values():
    V, D = 5, 3
    x = np.array([[0, 3, 1, 2], [2, 1, 0, 3]])
    W = lin(0, 1, V, D)
    out, _ = word_embedding_forward(x, W)
    expected = np.array(
        [
            [
                [0.0, 0.07142857, 0.14285714],
                [0.64285714, 0.71428571, 0.78571429],
                [0.21428571, 0.28571429, 0.35714286],
                [0.42857143, 0.5, 0.57142857],
            ],
            [
                [0.42857143, 0.5, 0.57142857],
                [0.21428571, 0.28571429, 0.35714286],
                [0.0, 0.07142857, 0.14285714],
                [0.64285714, 0.71428571, 0.78571429],
            ],
        ]
    )
    assert rel_error(out, expected) < 1e-7


def test_word_embedding_backward_accumulates_repeated_words():
    x = np.array([[1, 1, 1], [0, 1, 2]])
    W = np.zeros((4, 2))
    _, cache = word_embedding_forward(x, W)
    dout = np.ones((2, 3, 2))
    dW = word_embedding_backward(dout, cache)
    np.testing.assert_array_equal(dW, [[1, 1], [4, 4], [1, 1], [0, 0]])


def test_affine_and_temporal_affine_values():
    x = lin(-0.1, 0.5, 2, 4, 5)
    w = lin(-0.2, 0.3, 20, 3)
    b = lin(-0.3, 0.1, 3)
    out, _ = affine_forward(x, w, b)
    np.testing.assert_allclose(out, x.reshape(2, 20) @ w + b, rtol=1e-12)
    w2 = lin(-0.2, 0.3, 5, 3)
    out2, _ = temporal_affine_forward(x, w2, b)
    expected = np.stack([x[:, t] @ w2 + b for t in range(4)], axis=1)
    np.testing.assert_allclose(out2, expected, rtol=1e-12)


def test_sigmoid_is_stable_and_correct():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.0, 1000.0])
    with np.errstate(all="raise"):
        s = sigmoid(x)
    np.testing.assert_allclose(s[1:5], 1 / (1 + np.exp(-x[1:5])), rtol=1e-12)
    assert s[0] == 0.0 and s[-1] == 1.0
    x32 = np.array([-200.0, 0.0, 200.0], dtype=np.float32)
    with np.errstate(all="raise"):
        s32 = sigmoid(x32)
    assert s32.dtype == np.float32
    np.testing.assert_array_equal(s32, [0.0, 0.5, 1.0])


def test_tanh_matches_numpy():
    from captionlab.nn.functional import tanh

    x = np.array([-1000.0, -20.0, -1.0, -1e-9, 0.0, 0.5, 3.0, 1000.0])
    with np.errstate(all="raise"):
        t = tanh(x)
    np.testing.assert_allclose(t, np.tanh(x), rtol=0, atol=4e-16)
    t32 = tanh(x.astype(np.float32))
    assert t32.dtype == np.float32
    np.testing.assert_allclose(t32, np.tanh(x), rtol=0, atol=2e-7)


def test_log_softmax_handles_large_scores():
    x = np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]])
    with np.errstate(all="raise"):
        lp = log_softmax(x)
    np.testing.assert_allclose(lp[0], np.log([0.5, 0.5]), rtol=1e-12)
    np.testing.assert_allclose(np.exp(lp[1]), [0.25, 0.75], rtol=1e-12)


@pytest.mark.parametrize(
    ("N", "T", "V", "p", "expected"),
    [
        (100, 1, 10, 1.0, np.log(10)),
        (100, 10, 10, 1.0, 10 * np.log(10)),
        (5000, 10, 10, 0.1, np.log(10)),
    ],
)
def test_temporal_softmax_loss_of_random_scores_is_log_v_per_unmasked_step(N, T, V, p, expected):
    rng = np.random.default_rng(0)
    x = 0.001 * rng.standard_normal((N, T, V))
    y = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) <= p
    loss, _ = temporal_softmax_loss(x, y, mask)
    assert loss == pytest.approx(expected, rel=0.05)


def test_temporal_softmax_loss_masked_positions_get_zero_gradient():
    rng = np.random.default_rng(1)
    N, T, V = 4, 5, 6
    x = rng.standard_normal((N, T, V))
    y = rng.integers(0, V, size=(N, T))
    mask = np.ones((N, T), dtype=bool)
    mask[:, 3:] = False
    mask[0, 1] = False
    loss, dx = temporal_softmax_loss(x, y, mask)
    assert np.all(dx[~mask] == 0)
    assert np.all(np.abs(dx[mask]).sum(axis=-1) > 0)
    # Scores at masked positions do not change the loss.
    x2 = x.copy()
    x2[~mask] = 100 * rng.standard_normal(x2[~mask].shape)
    assert temporal_softmax_loss(x2, y, mask)[0] == pytest.approx(loss, rel=1e-12)
    # Summed over time, averaged over the batch.
    lp = log_softmax(x)
    manual = -sum(lp[n, t, y[n, t]] for n in range(N) for t in range(T) if mask[n, t]) / N
    assert loss == pytest.approx(manual, rel=1e-12)
