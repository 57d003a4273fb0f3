"""Finite-difference gradient checks (cs231n ``gradient_check``) and a self-test of every layer.

* :func:`eval_numerical_gradient` -- gradient of a scalar function by centred differences.
* :func:`eval_numerical_gradient_array` -- gradient of ``sum(f(x) * df)`` for an array-valued f.
* :func:`rel_error` -- ``max |x - y| / max(1e-8, |x| + |y|)``.
* :func:`check_layers` -- compares every layer's backward with finite differences on small
  random float64 inputs; ``captionlab gradcheck`` prints its table.

The numerical functions perturb ``x`` in place and restore it; ``f`` must read its argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from captionlab.nn import attention as _attention
from captionlab.nn import gru as _gru
from captionlab.nn import layers as _layers
from captionlab.nn import lstm as _lstm
from captionlab.nn import rnn as _rnn

STEP_TOLERANCE = 1e-7  # step layers and the simple layers
SEQUENCE_TOLERANCE = 1e-5  # whole-sequence layers (errors add up over T steps)


def eval_numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, verbose: bool = True, h: float = 1e-5
) -> np.ndarray:
    """Numerical gradient of a scalar function ``f`` at ``x`` by centred differences.

    Args:
        f: a function of one array returning a scalar.
        x: the point, any shape, floating dtype; perturbed in place and restored.
        verbose: print each index and its gradient (cs231n behaviour).
        h: the step.

    Returns:
        the gradient, same shape and dtype as ``x``.
    """
    grad = np.zeros_like(x)
    for ix, fxph, fxmh in _centred_pairs(f, x, h):
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
    return grad


def eval_numerical_gradient_array(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, df: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Numerical gradient of ``sum(f(x) * df)`` with respect to ``x``.

    Args:
        f: a function of one array returning an array of ``df``'s shape.
        x: the point, any shape, floating dtype; perturbed in place and restored.
        df: the upstream gradient, shape of ``f(x)``.
        h: the step.

    Returns:
        the gradient, same shape and dtype as ``x``.
    """
    grad = np.zeros_like(x)
    for ix, pos, neg in _centred_pairs(lambda v: np.array(f(v), copy=True), x, h):
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
    return grad


def _centred_pairs(f: Callable, x: np.ndarray, h: float):
    """For every index ``ix`` of ``x``: ``(ix, f(x + h e_ix), f(x - h e_ix))``, perturbing
    ``x`` in place and restoring each entry before the next."""
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = f(x)
        x[ix] = old - h
        neg = f(x)
        x[ix] = old
        yield ix, pos, neg
        it.iternext()


def rel_error(x: np.ndarray, y: np.ndarray) -> float:
    """Maximum elementwise relative error ``|x - y| / max(1e-8, |x| + |y|)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


@dataclass(frozen=True)
class GradCheckResult:
    """One row of the gradient-check table."""

    layer: str
    parameter: str
    rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.rel_error) and self.rel_error < self.tolerance)


def _check_layer(
    layer: str,
    forward: Callable[..., tuple],
    backward: Callable[..., tuple],
    inputs: dict[str, np.ndarray],
    douts: Sequence[np.ndarray],
    grad_names: Sequence[str],
    tolerance: float,
) -> list[GradCheckResult]:
    """Compare ``backward`` with finite differences for each input named in ``grad_names``.

    ``forward(*inputs.values())`` returns ``(*outputs, cache)`` with one output per entry
    of ``douts``; ``backward(*douts, cache)`` returns the gradients named ``grad_names``.
    """
    names = list(inputs)
    args = list(inputs.values())
    *_outs, cache = forward(*args)
    grads = backward(*douts, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    results = []
    for name, analytic in zip(grad_names, grads, strict=True):
        k = names.index(name)
        numeric = np.zeros_like(args[k])
        for j, dout in enumerate(douts):

            def f(v, k=k, j=j):
                return forward(*[v if i == k else a for i, a in enumerate(args)])[j]

            numeric += eval_numerical_gradient_array(f, args[k], dout)
        results.append(GradCheckResult(layer, name, rel_error(numeric, analytic), tolerance))
    return results


class _Inputs:
    """Small random float64 inputs for the checks, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        # Scaled by 1/sqrt(fan-in) so that gates do not saturate: saturated gates give
        # gradients near zero, where finite differences have large relative error.
        scale = 1.0 if len(shape) == 1 else shape[-2] ** -0.5
        return scale * self.rng.standard_normal(shape)


# Sizes of every check: batch, time, input, hidden, vocabulary, output.
N, T, D, H, V, M = 3, 4, 5, 6, 7, 4


def _check_simple_layers(rand: _Inputs) -> list[GradCheckResult]:
    """affine, word_embedding, temporal_affine, temporal_softmax_loss."""
    step = STEP_TOLERANCE
    out = _check_layer(
        "affine",
        _layers.affine_forward,
        _layers.affine_backward,
        {"x": rand(N, 2, 3), "w": rand(6, M), "b": rand(M)},
        [rand(N, M)],
        ["x", "w", "b"],
        step,
    )
    idx = rand.rng.integers(0, V, size=(N, T))
    idx[0, :2] = 1  # a repeated word: its gradients must accumulate
    out += _check_layer(
        "word_embedding",
        lambda W: _layers.word_embedding_forward(idx, W),
        lambda dout, cache: _layers.word_embedding_backward(dout, cache),
        {"W": rand(V, D)},
        [rand(N, T, D)],
        ["W"],
        step,
    )
    out += _check_layer(
        "temporal_affine",
        _layers.temporal_affine_forward,
        _layers.temporal_affine_backward,
        {"x": rand(N, T, D), "w": rand(D, M), "b": rand(M)},
        [rand(N, T, M)],
        ["x", "w", "b"],
        step,
    )
    scores = rand(N, T, V)
    y = rand.rng.integers(0, V, size=(N, T))
    mask = rand.rng.random((N, T)) > 0.3
    _loss, dscores = _layers.temporal_softmax_loss(scores, y, mask)
    numeric = eval_numerical_gradient(
        lambda s: _layers.temporal_softmax_loss(s, y, mask)[0], scores, verbose=False
    )
    out.append(GradCheckResult("temporal_softmax_loss", "x", rel_error(numeric, dscores), step))
    return out


def _check_rnn(rand: _Inputs) -> list[GradCheckResult]:
    """rnn_step, rnn."""
    out = _check_layer(
        "rnn_step",
        _rnn.rnn_step_forward,
        _rnn.rnn_step_backward,
        {"x": rand(N, D), "prev_h": rand(N, H), "Wx": rand(D, H), "Wh": rand(H, H), "b": rand(H)},
        [rand(N, H)],
        ["x", "prev_h", "Wx", "Wh", "b"],
        STEP_TOLERANCE,
    )
    out += _check_layer(
        "rnn",
        _rnn.rnn_forward,
        _rnn.rnn_backward,
        {"x": rand(N, T, D), "h0": rand(N, H), "Wx": rand(D, H), "Wh": rand(H, H), "b": rand(H)},
        [rand(N, T, H)],
        ["x", "h0", "Wx", "Wh", "b"],
        SEQUENCE_TOLERANCE,
    )
    return out


def _check_lstm(rand: _Inputs) -> list[GradCheckResult]:
    """lstm_step, lstm."""
    step_inputs = {
        "x": rand(N, D),
        "prev_h": rand(N, H),
        "prev_c": rand(N, H),
        "Wx": rand(D, 4 * H),
        "Wh": rand(H, 4 * H),
        "b": rand(4 * H),
    }
    out = _check_layer(
        "lstm_step",
        _lstm.lstm_step_forward,
        _lstm.lstm_step_backward,
        step_inputs,
        [rand(N, H), rand(N, H)],
        list(step_inputs),
        STEP_TOLERANCE,
    )
    seq_inputs = {
        "x": rand(N, T, D),
        "h0": rand(N, H),
        "Wx": rand(D, 4 * H),
        "Wh": rand(H, 4 * H),
        "b": rand(4 * H),
    }
    out += _check_layer(
        "lstm",
        _lstm.lstm_forward,
        _lstm.lstm_backward,
        seq_inputs,
        [rand(N, T, H)],
        list(seq_inputs),
        SEQUENCE_TOLERANCE,
    )
    return out


def _check_gru(rand: _Inputs) -> list[GradCheckResult]:
    """gru_step, gru."""
    step_inputs = {
        "x": rand(N, D),
        "prev_h": rand(N, H),
        "Wx": rand(D, 3 * H),
        "Wh": rand(H, 3 * H),
        "b": rand(3 * H),
        "bh": rand(3 * H),
    }
    out = _check_layer(
        "gru_step",
        _gru.gru_step_forward,
        _gru.gru_step_backward,
        step_inputs,
        [rand(N, H)],
        list(step_inputs),
        STEP_TOLERANCE,
    )
    seq_inputs = {
        "x": rand(N, T, D),
        "h0": rand(N, H),
        "Wx": rand(D, 3 * H),
        "Wh": rand(H, 3 * H),
        "b": rand(3 * H),
        "bh": rand(3 * H),
    }
    out += _check_layer(
        "gru",
        _gru.gru_forward,
        _gru.gru_backward,
        seq_inputs,
        [rand(N, T, H)],
        list(seq_inputs),
        SEQUENCE_TOLERANCE,
    )
    return out


def _check_additive_attention(rand: _Inputs) -> list[GradCheckResult]:
    """additive_attention, without and with a mask (both outputs z and alpha get an
    upstream gradient)."""
    L, K = 5, 4
    names = ["A", "A_proj", "h", "Wh", "b", "w"]
    mask = np.ones((N, L), dtype=bool)
    mask[0, [1, 3]] = False
    mask[1, :4] = False  # one cell left
    out = []
    for layer, m in (("additive_attention", None), ("additive_attn_mask", mask)):
        inputs = {
            "A": rand(N, L, D),
            "A_proj": rand(N, L, K),
            "h": rand(N, H),
            "Wh": rand(H, K),
            "b": rand(K),
            "w": rand(K),
        }
        out += _check_layer(
            layer,
            lambda *args, m=m: _attention.additive_attention_forward(*args, mask=m),
            lambda dz, dalpha, cache: _attention.additive_attention_backward(dz, dalpha, cache),
            inputs,
            [rand(N, D), rand(N, L)],
            names,
            STEP_TOLERANCE,
        )
    return out


#: One function per layer family, in the order the table lists them. A new family of
#: layers adds its ``_check_<family>(rand) -> list[GradCheckResult]`` here.
LAYER_FAMILIES: tuple[Callable[[_Inputs], list[GradCheckResult]], ...] = (
    _check_simple_layers,
    _check_rnn,
    _check_lstm,
    _check_gru,
    _check_additive_attention,
)


def check_layers(seed: int = 0) -> list[GradCheckResult]:
    """Gradient-check every layer of :mod:`captionlab.nn` on small random float64 inputs.

    Backward functions are looked up on their modules at call time, so a patched (wrong)
    backward is what gets checked.

    Args:
        seed: seed of the random inputs.

    Returns:
        one :class:`GradCheckResult` per (layer, parameter).
    """
    rand = _Inputs(seed)
    return [result for family in LAYER_FAMILIES for result in family(rand)]
