"""dtype preservation, shape errors that name the argument, and the update rules."""

import numpy as np
import pytest

from captionlab import nn
from captionlab.nn import optim


def _seq_args(rng, dtype, gates, N=2, T=3, D=4, H=5):
    args = [
        rng.standard_normal((N, T, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((D, gates * H)),
        rng.standard_normal((H, gates * H)),
        rng.standard_normal(gates * H),
    ]
    return [a.astype(dtype) for a in args]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_sequence_layers_keep_dtype(name, dtype):
    rng = np.random.default_rng(0)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[name]
    args = _seq_args(rng, dtype, gates)
    if name == "gru":
        args.append(rng.standard_normal(3 * 5).astype(dtype))
    forward = getattr(nn, f"{name}_forward")
    backward = getattr(nn, f"{name}_backward")
    h, cache = forward(*args)
    assert h.dtype == dtype
    grads = backward(np.ones_like(h), cache)
    assert [g.dtype for g in grads] == [dtype] * len(args)
    # Step functions too.
    step = getattr(nn, f"{name}_step_forward")
    step_args = [args[0][:, 0], *args[1:]]
    if name == "lstm":
        step_args.insert(2, np.zeros_like(args[1]))
    outs = step(*step_args)
    assert all(o.dtype == dtype for o in outs[:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simple_layers_keep_dtype(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    out, cache = nn.temporal_affine_forward(x, w, b)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in nn.temporal_affine_backward(out, cache))
    out, cache = nn.affine_forward(x, w.reshape(4, 5).repeat(3, axis=0), b)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in nn.affine_backward(out, cache))
    idx = np.array([[0, 1], [1, 2]])
    emb, cache = nn.word_embedding_forward(idx, w)
    assert emb.dtype == dtype
    assert nn.word_embedding_backward(emb, cache).dtype == dtype
    loss, dx = nn.temporal_softmax_loss(out.reshape(2, 1, 5), np.array([[1], [2]]), np.ones((2, 1)))
    assert dx.dtype == dtype and isinstance(loss, float)
    assert nn.sigmoid(x).dtype == dtype


def test_float32_matches_float64():
    rng = np.random.default_rng(2)
    args = _seq_args(rng, np.float64, 4, N=4, T=6, D=8, H=8)
    h64, c64 = nn.lstm_forward(*args)
    h32, c32 = nn.lstm_forward(*[a.astype(np.float32) for a in args])
    np.testing.assert_allclose(h32, h64, atol=1e-5)
    g64 = nn.lstm_backward(h64, c64)
    g32 = nn.lstm_backward(h32, c32)
    for a, b in zip(g32, g64, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("call", "argname"),
    [
        (lambda a: nn.rnn_forward(a[0][0], *a[1:5]), "x"),
        (lambda a: nn.rnn_forward(a[0], a[1][:1], *a[2:5]), "h0"),
        (lambda a: nn.rnn_forward(a[0], a[1], a[2][:-1], *a[3:5]), "Wx"),
        (lambda a: nn.rnn_forward(*a[:3], a[3][:, :-1], a[4]), "Wh"),
        (lambda a: nn.rnn_forward(*a[:4], a[4][:-1]), "b"),
        (lambda a: nn.rnn_step_forward(a[0][:, 0], a[1][:, :2], *a[2:5]), "prev_h"),
    ],
)
def test_rnn_shape_errors_name_the_argument(call, argname):
    args = _seq_args(np.random.default_rng(3), np.float64, 1)
    with pytest.raises(ValueError, match=rf"^{argname} must have shape .* got \("):
        call(args)


def test_lstm_gru_shape_errors_name_the_argument():
    rng = np.random.default_rng(4)
    x, h0, Wx, Wh, b = _seq_args(rng, np.float64, 4)
    with pytest.raises(
        ValueError, match=r"^Wx must have shape \(D, 4H\) = \(4, 20\), got \(4, 15\)"
    ):
        nn.lstm_forward(x, h0, Wx[:, :15], Wh, b)
    with pytest.raises(ValueError, match=r"^prev_c must have shape \(N, H\)"):
        nn.lstm_step_forward(x[:, 0], h0, h0[:, :3], Wx, Wh, b)
    x, h0, Wx, Wh, b = _seq_args(rng, np.float64, 3)
    with pytest.raises(ValueError, match=r"^bh must have shape \(3H,\) = \(15,\), got \(5,\)"):
        nn.gru_forward(x, h0, Wx, Wh, b, b[:5])
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, b)
    with pytest.raises(ValueError, match=r"^dh must have shape \(N, T, H\)"):
        nn.gru_backward(h[:, :2], cache)


def test_simple_layer_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^w must have shape \(D, M\)"):
        nn.temporal_affine_forward(np.zeros((2, 3, 4)), np.zeros((5, 6)), np.zeros(6))
    with pytest.raises(ValueError, match=r"^mask must have shape \(N, T\)"):
        nn.temporal_softmax_loss(np.zeros((2, 3, 4)), np.zeros((2, 3), int), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"^y must hold indices in \[0, V\) = \[0, 4\)"):
        nn.temporal_softmax_loss(np.zeros((2, 3, 4)), np.full((2, 3), 4), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^x must hold integer word indices"):
        nn.word_embedding_forward(np.zeros((2, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"^x must hold indices in \[0, V\)"):
        nn.word_embedding_forward(np.array([[0, 5]]), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"^x must have shape \(N, d_1, ..., d_k\)"):
        nn.affine_forward(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5))


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_rules_minimise_a_quadratic(rule, dtype):
    """f(w) = 0.5 * sum(a * (w - w*)^2) with an ill-conditioned diagonal a."""
    a = np.array([1.0, 4.0, 10.0])
    target = np.array([1.0, -2.0, 0.5])
    w = np.zeros(3, dtype=dtype)
    config = {"learning_rate": {"sgd": 0.05, "sgd_momentum": 0.02}.get(rule, 0.05)}
    update = optim.UPDATE_RULES[rule]
    start = 0.5 * np.sum(a * target**2)
    for _ in range(500):
        dw = (a * (w - target)).astype(dtype)
        w, config = update(w, dw, config)
        assert w.dtype == dtype
    final = 0.5 * np.sum(a * (w - target) ** 2)
    assert final < 1e-3 * start


def test_update_rules_keep_state_and_defaults():
    w = np.ones(2)
    dw = np.array([1.0, -1.0])
    w1, config = optim.adam(w, dw)
    assert config["t"] == 1 and config["learning_rate"] == 1e-3
    # The first Adam step moves each weight by about the learning rate, against the gradient.
    np.testing.assert_allclose(w1, w - 1e-3 * np.sign(dw), rtol=1e-6)
    _, config = optim.adam(w1, dw, config)
    assert config["t"] == 2
    w2, config = optim.sgd_momentum(w, dw, {"learning_rate": 0.1, "momentum": 0.5})
    w3, config = optim.sgd_momentum(w2, dw, config)
    np.testing.assert_allclose(w3 - w2, -0.1 * dw * 1.5)
    w4, _ = optim.sgd(w, dw, None)
    np.testing.assert_allclose(w4, w - 1e-2 * dw)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_saturated_gates_raise_no_floating_point_errors(name):
    """Pre-activations of +-1e4 saturate every gate; exp overflow there is expected."""
    rng = np.random.default_rng(6)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[name]
    args = _seq_args(rng, np.float32, gates)
    args[2] *= 1e4  # Wx
    if name == "gru":
        args.append(args[4].copy())
    with np.errstate(all="raise"):
        h, cache = getattr(nn, f"{name}_forward")(*args)
        grads = getattr(nn, f"{name}_backward")(np.ones_like(h), cache)
    assert np.all(np.abs(h) <= 1)
    assert all(np.all(np.isfinite(g)) for g in grads)
