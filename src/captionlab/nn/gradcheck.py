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
from captionlab.nn import functional as _functional
from captionlab.nn import gru as _gru
from captionlab.nn import layers as _layers
from captionlab.nn import lstm as _lstm
from captionlab.nn import rnn as _rnn
from captionlab.nn import transformer as _transformer

STEP_TOLERANCE = 1e-7  # step layers and the simple layers
SEQUENCE_TOLERANCE = 1e-5  # whole-sequence layers (errors add up over T steps)
BLOCK_TOLERANCE = SEQUENCE_TOLERANCE  # a Transformer decoder layer: ten layers composed


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


def _check_attention(rand: _Inputs) -> list[GradCheckResult]:
    """masked_softmax, scaled_dot_product_attention, multihead_attention."""
    step = STEP_TOLERANCE
    Tq, Tk, E, heads = 4, 5, 6, 2
    mask = rand.rng.random((N, Tq, Tk)) > 0.3
    mask[0, 1] = False  # a fully masked row: zero weights, zero gradient
    out = _check_layer(
        "masked_softmax",
        lambda x: 2 * (_functional.masked_softmax(x, mask),),
        lambda dp, p: _functional.masked_softmax_backward(dp, p),
        {"x": rand(N, Tq, Tk)},
        [rand(N, Tq, Tk)],
        ["x"],
        step,
    )
    drop = _transformer.dropout_mask((N, 2, Tq, Tk), 0.25, rand.rng, np.float64)
    out += _check_layer(
        "scaled_dot_product_attention",
        lambda q, k, v: _attention.scaled_dot_product_attention_forward(
            q, k, v, mask[:, None], dropout_mask=drop
        ),
        lambda dout, dweights, cache: _attention.scaled_dot_product_attention_backward(
            dout, dweights, cache
        ),
        {"q": rand(N, 2, Tq, E), "k": rand(N, 2, Tk, E), "v": rand(N, 2, Tk, 3)},
        [rand(N, 2, Tq, 3), rand(N, 2, Tq, Tk)],
        ["q", "k", "v"],
        step,
    )
    mha_inputs = {"query": rand(N, Tq, E), "key": rand(N, Tk, E), "value": rand(N, Tk, E)}
    for name in ("q", "k", "v", "o"):
        mha_inputs[f"W{name}"], mha_inputs[f"b{name}"] = rand(E, E), rand(E)
    causal = np.tril(np.ones((Tq, Tk)), k=1)

    def mha_forward(*args):
        # a fresh generator from one seed: the same dropout masks at every call
        rng = np.random.default_rng(7)
        return _transformer.multihead_attention_forward(*args, heads, causal, 0.2, rng)

    # Not bk: adding a constant to every key adds q.bk to a whole row of scores, which the
    # softmax ignores, so dbk is zero up to rounding and its relative error is noise.
    checked = [name for name in mha_inputs if name != "bk"]

    def mha_backward(dout, dweights, cache):
        grads = _transformer.multihead_attention_backward(dout, dweights, cache)
        return tuple(g for name, g in zip(mha_inputs, grads, strict=True) if name in checked)

    out += _check_layer(
        "multihead_attention",
        mha_forward,
        mha_backward,
        mha_inputs,
        [rand(N, Tq, E), rand(N, heads, Tq, Tk)],
        checked,
        step,
    )
    return out


def _check_transformer(rand: _Inputs) -> list[GradCheckResult]:
    """layernorm, dropout, positional_encoding, feedforward, decoder_layer, encoder_layer."""
    step = STEP_TOLERANCE
    E, F, L, heads = 6, 10, 3, 2
    out = _check_layer(
        "layernorm",
        lambda x, gamma, beta: _transformer.layernorm_forward(x, gamma, beta, {"eps": 1e-5}),
        _transformer.layernorm_backward,
        # x of unit scale: rows of small variance have gradients of a size that finite
        # differences cannot resolve to 1e-7
        {"x": 2 * rand(N, T, E), "gamma": 1 + rand(E), "beta": rand(E)},
        [rand(N, T, E)],
        ["x", "gamma", "beta"],
        step,
    )
    out += _check_layer(
        "dropout",
        lambda x: _transformer.dropout_forward(x, 0.3, np.random.default_rng(3)),
        _transformer.dropout_backward,
        {"x": rand(N, T, E)},
        [rand(N, T, E)],
        ["x"],
        step,
    )
    out += _check_layer(
        "positional_encoding",
        lambda x: _transformer.positional_encoding_forward(x, 0.3, np.random.default_rng(4)),
        _transformer.positional_encoding_backward,
        {"x": rand(N, T, E)},
        [rand(N, T, E)],
        ["x"],
        step,
    )
    ff_inputs = {"x": rand(N, T, E), "W1": rand(E, F), "b1": rand(F), "W2": rand(F, E)}
    ff_inputs["b2"] = rand(E)
    out += _check_layer(
        "feedforward",
        lambda *a: _transformer.feedforward_forward(*a, 0.2, np.random.default_rng(5)),
        _transformer.feedforward_backward,
        ff_inputs,
        [rand(N, T, E)],
        list(ff_inputs),
        step,
    )
    keys = _transformer.DECODER_LAYER_KEYS
    shapes = _transformer.decoder_layer_param_shapes(E, F)
    layer_inputs = {"x": rand(N, T, E), "memory": rand(N, L, E)}
    layer_inputs.update({key: rand(*shapes[key]) for key in keys})
    for k in (1, 2, 3):
        layer_inputs[f"norm{k}.gamma"] += 1
    causal = np.tril(np.ones((T, T)))

    def layer_forward(x, memory, *params):
        rng = np.random.default_rng(6)  # the same dropout masks at every call
        return _transformer.decoder_layer_forward(
            x, memory, dict(zip(keys, params, strict=True)), heads, causal, 0.2, rng
        )

    checked_keys = [key for key in keys if not key.endswith("attn.bk")]  # dbk = 0, as above

    def layer_backward(dout, cache):
        dx, dmemory, dparams = _transformer.decoder_layer_backward(dout, cache)
        return (dx, dmemory, *(dparams[key] for key in checked_keys))

    out += _check_layer(
        "decoder_layer",
        layer_forward,
        layer_backward,
        layer_inputs,
        [rand(N, T, E)],
        ["x", "memory", *checked_keys],
        BLOCK_TOLERANCE,
    )
    enc_keys = _transformer.ENCODER_LAYER_KEYS
    enc_inputs = {"x": rand(N, L, E)}
    enc_inputs.update({key: layer_inputs[key].copy() for key in enc_keys})

    def encoder_forward(x, *params):
        rng = np.random.default_rng(7)  # the same dropout masks at every call
        return _transformer.encoder_layer_forward(
            x, dict(zip(enc_keys, params, strict=True)), heads, 0.2, rng
        )

    enc_checked = [key for key in enc_keys if not key.endswith("attn.bk")]  # dbk = 0

    def encoder_backward(dout, cache):
        dx, dparams = _transformer.encoder_layer_backward(dout, cache)
        return (dx, *(dparams[key] for key in enc_checked))

    out += _check_layer(
        "encoder_layer",
        encoder_forward,
        encoder_backward,
        enc_inputs,
        [rand(N, L, E)],
        ["x", *enc_checked],
        BLOCK_TOLERANCE,
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
    _check_attention,
    _check_transformer,
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
