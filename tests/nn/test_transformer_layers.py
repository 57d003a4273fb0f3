"""Transformer layers: fixed-input values, masking, positional encoding, dropout, the cs231n
classes, dtypes, and negative controls for their gradient checks."""

import math
import warnings

import numpy as np
import pytest
from layer_checks import decoder_layer_grad_errors

from captionlab import nn
from captionlab.nn import attention, transformer
from captionlab.nn.gradcheck import (
    BLOCK_TOLERANCE,
    STEP_TOLERANCE,
    check_layers,
    eval_numerical_gradient_array,
    rel_error,
)


# ------------------------------------------------------------------ masked softmax
def test_masked_softmax_values():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = nn.masked_softmax(x)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)  # no overflow
    mask = np.array([[True, False, True], [False, True, True]])
    p = nn.masked_softmax(x, mask)
    e = np.exp([1.0, 3.0])
    np.testing.assert_allclose(p[0], [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-15)
    np.testing.assert_array_equal(p[1], [0.0, 1.0, 0.0])


def test_fully_masked_row_is_zero_not_nan():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False  # query 1 may attend to nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no invalid-value or divide warnings either
        p = nn.masked_softmax(x, mask)
        dx = nn.masked_softmax_backward(np.ones_like(x), p)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p[:, 1], 0)
    np.testing.assert_allclose(p[:, [0, 2]].sum(-1), 1, rtol=1e-6)
    np.testing.assert_array_equal(dx[:, 1], 0)
    q = np.ones((1, 3, 2))
    v = np.arange(8.0).reshape(1, 4, 2)
    k = q[:, :1].repeat(4, 1)
    out, weights, cache = nn.scaled_dot_product_attention_forward(q, k, v, mask)
    np.testing.assert_array_equal(weights[0, 1], 0)
    np.testing.assert_array_equal(out[0, 1], 0)
    dq, dk, dv = nn.scaled_dot_product_attention_backward(np.ones_like(out), None, cache)
    assert np.all(np.isfinite(dq)) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
    np.testing.assert_array_equal(dq[0, 1], 0)


def test_masked_softmax_accepts_0_1_masks_and_broadcasts():
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 3))
    causal = np.tril(np.ones((3, 3)))
    p = nn.masked_softmax(x, causal)
    np.testing.assert_array_equal(p[..., 0, 1:], 0)
    np.testing.assert_allclose(p[..., 0, 0], 1)
    np.testing.assert_allclose(p.sum(-1), 1)


# ------------------------------------------------------------------ scaled dot-product
def test_scaled_dot_product_attention_fixed_values():
    q = np.array([[1.0, 0.0]])  # (Tq=1, E=2)
    k = np.array([[1.0, 0.0], [0.0, 1.0]])  # (Tk=2, E=2)
    v = np.array([[1.0, 2.0], [3.0, 4.0]])  # (Tk=2, Ev=2)
    out, weights, _ = nn.scaled_dot_product_attention_forward(q, k, v)
    w0 = 1 / (1 + math.exp(-1 / math.sqrt(2)))  # softmax([1/sqrt 2, 0])[0]
    np.testing.assert_allclose(weights, [[w0, 1 - w0]], rtol=1e-15)
    np.testing.assert_allclose(out, [[w0 * 1 + (1 - w0) * 3, w0 * 2 + (1 - w0) * 4]], rtol=1e-15)


def test_scaled_dot_product_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        nn.scaled_dot_product_attention_forward(np.ones((2, 3)), np.ones((4, 5)), np.ones((4, 1)))


def test_attention_keeps_float32():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 2, 3, 4)).astype(np.float32) for _ in range(3))
    out, weights, cache = nn.scaled_dot_product_attention_forward(q, k, v, np.tril(np.ones((3, 3))))
    grads = nn.scaled_dot_product_attention_backward(out, weights, cache)
    assert out.dtype == weights.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)


# ------------------------------------------------------------------ layer norm
def test_layernorm_fixed_values_cs231n_shape():
    x = np.array([[1.0, 2.0, 3.0], [-1.0, -1.0, 5.0]])  # (N, D)
    out, cache = nn.layernorm_forward(x, np.array([1.0, 2.0, 1.0]), np.array([0.0, 0.0, 1.0]), {})
    s = 1 / math.sqrt(2 / 3 + 1e-5)
    np.testing.assert_allclose(out[0], [-s, 0.0, s + 1], rtol=1e-12)
    s = 1 / math.sqrt(8 + 1e-5)  # mean 1, var 8
    np.testing.assert_allclose(out[1], [-2 * s, -4 * s, 4 * s + 1], rtol=1e-12)
    dx, dgamma, dbeta = nn.layernorm_backward(np.ones_like(out), cache)
    np.testing.assert_allclose(dbeta, [2.0, 2.0, 2.0])
    assert dx.shape == x.shape and dgamma.shape == (3,)


def test_layernorm_eps_from_ln_param():
    x = np.array([[0.0, 2.0]])
    out, _ = nn.layernorm_forward(x, np.ones(2), np.zeros(2), {"eps": 1.0})
    np.testing.assert_allclose(out, [[-1 / math.sqrt(2), 1 / math.sqrt(2)]], rtol=1e-15)


# ------------------------------------------------------------------ positional encoding
def test_positional_encoding_values():
    E = 6
    pe = nn.sinusoidal_positional_encoding(5, E)
    np.testing.assert_array_equal(pe[0], [0, 1, 0, 1, 0, 1])
    for i, k in [(1, 0), (2, 1), (3, 2), (4, 1)]:
        angle = i * 10000 ** (-2 * k / E)
        assert pe[i, 2 * k] == pytest.approx(math.sin(angle), abs=1e-15)
        assert pe[i, 2 * k + 1] == pytest.approx(math.cos(angle), abs=1e-15)
    odd = nn.sinusoidal_positional_encoding(3, 5)  # an odd E ends with a sine column
    assert odd[2, 4] == pytest.approx(math.sin(2 * 10000 ** (-4 / 5)), abs=1e-15)


def test_positional_encoding_class():
    pos = nn.PositionalEncoding(8, dropout=0.1, max_len=10, seed=0)
    assert pos.pe.shape == (1, 10, 8) and pos.params == {}
    x = np.random.default_rng(3).standard_normal((2, 4, 8)).astype(np.float32)
    out = pos.eval().forward(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x + pos.pe[:, :4], rtol=1e-7)
    np.testing.assert_array_equal(pos.backward(np.ones_like(x)), 1)
    train_out = pos.train().forward(x)
    zero = train_out == 0
    assert zero.any()
    scale = 65536 / (65536 - round(0.1 * 65536))  # p is rounded to a multiple of 2^-16
    np.testing.assert_allclose(train_out[~zero], (x + pos.pe[:, :4])[~zero] * scale, rtol=1e-6)
    with pytest.raises(ValueError, match="S <= 10"):
        pos.forward(np.ones((1, 11, 8)))


def test_positional_encoding_backward_needs_forward():
    with pytest.raises(RuntimeError, match="forward"):
        nn.PositionalEncoding(4, seed=0).backward(np.ones((1, 2, 4)))


# ------------------------------------------------------------------ dropout
def test_dropout_eval_is_identity_and_train_keeps_expectation():
    x = np.ones((1000, 1000), dtype=np.float32)
    out, cache = nn.dropout_forward(x, 0.0)
    assert out is x and cache is None
    out, mask = nn.dropout_forward(x, 0.3, np.random.default_rng(0))
    assert out.dtype == np.float32
    assert abs(np.mean(out == 0) - 0.3) < 0.002  # 1e6 draws: std 0.0005
    assert abs(out.mean() - 1) < 0.004  # the expectation is kept (std about 0.0007)
    # p is rounded to a multiple of 2^-16 and the kept entries scaled by the exact 1/keep
    np.testing.assert_allclose(np.unique(out), [0, 65536 / (65536 - 19661)], rtol=1e-6)
    assert abs(65536 / (65536 - 19661) - 1 / 0.7) < 1e-5
    np.testing.assert_array_equal(nn.dropout_backward(x, mask), out)


def test_dropout_is_reproducible_by_seed():
    x = np.ones((50, 50))
    a, _ = nn.dropout_forward(x, 0.5, np.random.default_rng(7))
    b, _ = nn.dropout_forward(x, 0.5, np.random.default_rng(7))
    c, _ = nn.dropout_forward(x, 0.5, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="rng"):
        nn.dropout_forward(x, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nn.dropout_forward(x, 1.0, np.random.default_rng(0))


# ------------------------------------------------------------------ multi-head attention
def _query_key_value(rng, N=2, S=3, T=5, E=8, dtype=np.float64):
    return tuple(rng.standard_normal((N, n, E)).astype(dtype) for n in (S, T, T))


def test_multihead_attention_class_contract():
    layer = nn.MultiHeadAttention(8, 2, seed=0)
    assert list(layer.params) == ["Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo"]
    for name, value in layer.params.items():
        assert value.dtype == np.float32
        assert value.shape == ((8, 8) if name.startswith("W") else (8,))
        assert np.all(np.abs(value) <= 1 / math.sqrt(8))
    query, key, value = _query_key_value(np.random.default_rng(4), dtype=np.float32)
    mask = np.ones((3, 5))
    mask[0, 2:] = 0  # query 0 may not attend to keys 2, 3, 4
    out = layer.eval().forward(query, key, value, attn_mask=mask)
    assert out.shape == (2, 3, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(layer.attn_weights[:, :, 0, 2:], 0)
    with pytest.raises(RuntimeError, match="forward"):
        nn.MultiHeadAttention(8, 2, seed=0).backward(out)
    dquery, dkey, dvalue = layer.backward(np.ones_like(out))
    assert dquery.shape == (2, 3, 8) and dkey.shape == dvalue.shape == (2, 5, 8)
    assert list(layer.grads) == list(layer.params)
    for name, g in layer.grads.items():
        assert g.shape == layer.params[name].shape and g.dtype == np.float32
    with pytest.raises(ValueError, match="num_heads"):
        nn.MultiHeadAttention(8, 3)


def test_multihead_attention_class_equals_the_functions_and_finite_differences():
    layer = nn.MultiHeadAttention(8, 2, dropout=0.2, seed=1, dtype=np.float64).eval()
    rng = np.random.default_rng(5)
    query, key, value = _query_key_value(rng)
    dout = rng.standard_normal((2, 3, 8))
    out = layer.forward(query, key, value)
    dquery, dkey, dvalue = layer.backward(dout)
    # eval mode: no dropout, so the layer is a deterministic function of its inputs
    for arg, analytic in ((0, dquery), (1, dkey), (2, dvalue)):

        def f(v, arg=arg):
            inputs = [query, key, value]
            inputs[arg] = v
            return layer.forward(*inputs)

        numeric = eval_numerical_gradient_array(f, (query, key, value)[arg], dout)
        assert rel_error(numeric, analytic) < 1e-7
    # the class's gradients are the functions' gradients
    p = layer.params
    ref, _, cache = nn.multihead_attention_forward(query, key, value, *p.values(), 2)
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    grads = nn.multihead_attention_backward(dout, None, cache)
    for g, r in zip((dquery, dkey, dvalue, *layer.grads.values()), grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-13)


def test_multihead_attention_dropout_is_seeded_and_off_in_eval():
    query, key, value = _query_key_value(np.random.default_rng(6))
    a, b = (nn.MultiHeadAttention(8, 2, dropout=0.5, seed=3, dtype=np.float64) for _ in "ab")
    out_a, out_b = a.forward(query, key, value), b.forward(query, key, value)
    np.testing.assert_array_equal(out_a, out_b)  # same seed, same weights and masks
    assert not np.array_equal(a.forward(query, key, value), out_a)  # fresh masks each call
    e1, e2 = a.eval().forward(query, key, value), a.forward(query, key, value)
    np.testing.assert_array_equal(e1, e2)
    # seed=None draws from NumPy's global generator, as cs231n does
    state = np.random.get_state()  # noqa: NPY002 (the global generator is what is checked)
    try:
        np.random.seed(0)  # noqa: NPY002
        c = nn.MultiHeadAttention(8, 2, dropout=0.5).forward(query, key, value)
        np.random.seed(0)  # noqa: NPY002
        d = nn.MultiHeadAttention(8, 2, dropout=0.5)(query, key, value)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    np.testing.assert_array_equal(c, d)


# ------------------------------------------------------------------ decoder layer
def _decoder_inputs(rng, N=2, T=4, L=3, E=6, F=10, dtype=np.float64):
    shapes = nn.decoder_layer_param_shapes(E, F)
    params = {
        k: (rng.standard_normal(s) / math.sqrt(s[0])).astype(dtype) for k, s in shapes.items()
    }
    x = rng.standard_normal((N, T, E)).astype(dtype)
    memory = rng.standard_normal((N, L, E)).astype(dtype)
    return x, memory, params


def test_decoder_layer_float32_and_cache_reuse():
    x, memory, params = _decoder_inputs(np.random.default_rng(7), dtype=np.float32)
    saved = [a.copy() for a in (x, memory, *params.values())]
    causal = np.tril(np.ones((4, 4)))
    out, cache = nn.decoder_layer_forward(
        x, memory, params, 2, causal, 0.1, np.random.default_rng(0)
    )
    assert out.dtype == np.float32 and out.shape == x.shape
    dx, dmemory, dparams = nn.decoder_layer_backward(np.ones_like(out), cache)
    assert dx.dtype == dmemory.dtype == np.float32
    assert all(g.dtype == np.float32 and g.shape == params[k].shape for k, g in dparams.items())
    again = nn.decoder_layer_backward(np.ones_like(out), cache)  # the cache is not consumed
    np.testing.assert_array_equal(again[0], dx)
    for a, s in zip((x, memory, *params.values()), saved, strict=True):
        np.testing.assert_array_equal(a, s)  # inputs left as found


def test_decoder_layer_causal_mask_hides_the_future():
    x, memory, params = _decoder_inputs(np.random.default_rng(8))
    causal = np.tril(np.ones((4, 4)))
    out, _ = nn.decoder_layer_forward(x, memory, params, 2, causal)
    x2 = x.copy()
    x2[:, 3] += 1  # change the last word only
    out2, _ = nn.decoder_layer_forward(x2, memory, params, 2, causal)
    np.testing.assert_allclose(out2[:, :3], out[:, :3], rtol=1e-13)
    assert not np.allclose(out2[:, 3], out[:, 3])


def test_feedforward_bias_in_the_gemm_or_added_gives_the_same():
    """Many rows carry the bias inside the first GEMM ([x | 1] @ [W1 ; b1]), a few rows add
    it: outputs and every gradient agree."""
    rng = np.random.default_rng(12)
    E, F = 4, 6
    W1, b1, W2, b2 = (rng.standard_normal(s) for s in ((E, F), (F,), (F, E), (E,)))
    x, dout = rng.standard_normal((5, 8, E)), rng.standard_normal((5, 8, E))  # 40 rows: fold
    out, cache = nn.feedforward_forward(x, W1, b1, W2, b2)
    assert not isinstance(cache[2], tuple)  # the folded path
    grads = nn.feedforward_backward(dout, cache)
    parts = []
    for i in range(5):  # 8 rows each: added
        o, c = nn.feedforward_forward(x[i : i + 1], W1, b1, W2, b2)
        assert isinstance(c[2], tuple)
        parts.append((o, nn.feedforward_backward(dout[i : i + 1], c)))
    np.testing.assert_allclose(np.concatenate([o for o, _ in parts]), out, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([g[0] for _, g in parts]), grads[0], rtol=1e-12)
    for k in range(1, 5):  # dW1, db1, dW2, db2 summed over the parts
        np.testing.assert_allclose(sum(g[k] for _, g in parts), grads[k], rtol=1e-12)


def test_decoder_layer_attention_weights_from_the_cache():
    x, memory, params = _decoder_inputs(np.random.default_rng(10))
    causal = np.tril(np.ones((4, 4)))
    _, cache = nn.decoder_layer_forward(x, memory, params, 2, causal)
    self_w, cross_w = nn.decoder_layer_attention(cache)
    N, L = x.shape[0], memory.shape[1]
    assert self_w.shape == (N, 2, 4, 4) and cross_w.shape == (N, 2, 4, L)
    np.testing.assert_allclose(self_w.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cross_w.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(self_w[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)
    # the cross-attention of position 0 is the MHA of its normed self-attention output to the
    # memory: at position 0 the self-attention sees only word 0, so its output is v_0's
    p = params
    v0 = x[:, :1] @ p["self_attn.Wv"] + p["self_attn.bv"]
    sa0 = v0 @ p["self_attn.Wo"] + p["self_attn.bo"]
    h1, _ = nn.layernorm_forward(x[:, :1] + sa0, p["norm1.gamma"], p["norm1.beta"])
    cross = [p[f"cross_attn.{k}"] for k in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")]
    _, weights, _ = nn.multihead_attention_forward(h1, memory, memory, *cross, 2)
    np.testing.assert_allclose(cross_w[:, :, :1], weights, rtol=1e-12)


def test_decoder_layer_dropout_repeatable_by_rng():
    x, memory, params = _decoder_inputs(np.random.default_rng(9))
    run = [
        nn.decoder_layer_forward(x, memory, params, 2, None, 0.3, np.random.default_rng(s))[0]
        for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(run[0], run[1])
    assert not np.allclose(run[0], run[2])
    with pytest.raises(ValueError, match="lacks"):
        nn.decoder_layer_forward(x, memory, {"ffn.W1": params["ffn.W1"]}, 2)


def _decoder_location_inputs(rng, L=4, heads=2, E=6, F=10):
    x, memory, params = _decoder_inputs(rng, L=L, E=E, F=F)
    params[nn.DECODER_LOCATION_KEY] = rng.standard_normal((2 * heads, E))
    for k in (1, 2, 3):
        params[f"norm{k}.gamma"] += 1
    return x, memory, params, attention.cell_locations(L)


def test_decoder_layer_locations_read_where_each_head_looked():
    """With locations, LN2's input gains ``[alpha_1 @ P | alpha_2 @ P] @ W_loc``: the layer
    equals the same layer without the read, its cross-attention output shifted by it."""
    x, memory, params, P = _decoder_location_inputs(np.random.default_rng(14))
    shapes = nn.decoder_layer_param_shapes(6, 10, location_heads=2)
    assert shapes == {k: v.shape for k, v in params.items()}
    assert list(shapes).index("cross_attn.W_loc") == list(shapes).index("cross_attn.bo") + 1
    causal = np.tril(np.ones((4, 4)))
    out, cache = nn.decoder_layer_forward(x, memory, params, 2, causal, locations=P)
    _, alpha = nn.decoder_layer_attention(cache)  # (N, h, T, L)
    looked = np.concatenate([alpha[:, 0] @ P, alpha[:, 1] @ P], axis=-1)  # (N, T, 4)
    plain = {k: v for k, v in params.items() if k != nn.DECODER_LOCATION_KEY}
    shift = looked @ params[nn.DECODER_LOCATION_KEY]  # (N, T, E), added before LN2
    plain["cross_attn.bo"] = np.zeros(6)  # the shift stands in for bo, per position
    _, cache0 = nn.decoder_layer_forward(x, memory, plain, 2, causal)
    np.testing.assert_allclose(nn.decoder_layer_attention(cache0)[1], alpha, rtol=1e-13)
    # the layer written out from the public layers, the shift added to LN2's input
    proj = ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")
    sa, _, _ = nn.multihead_attention_forward(
        x, x, x, *(params[f"self_attn.{k}"] for k in proj), 2, causal
    )
    h1, _ = nn.layernorm_forward(x + sa, params["norm1.gamma"], params["norm1.beta"])
    cross = [plain[f"cross_attn.{k}"] for k in proj]
    ca, _, _ = nn.multihead_attention_forward(h1, memory, memory, *cross, 2)
    h2, _ = nn.layernorm_forward(
        h1 + ca + params["cross_attn.bo"] + shift, params["norm2.gamma"], params["norm2.beta"]
    )
    ff, _ = nn.feedforward_forward(h2, *(params[f"ffn.{k}"] for k in ("W1", "b1", "W2", "b2")))
    ref, _ = nn.layernorm_forward(h2 + ff, params["norm3.gamma"], params["norm3.beta"])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    _, _, dparams = nn.decoder_layer_backward(np.ones_like(out), cache)
    assert list(dparams) == [*nn.DECODER_LAYER_KEYS, nn.DECODER_LOCATION_KEY]
    with pytest.raises(ValueError, match=r"locations must have shape \(L, 2\)"):
        nn.decoder_layer_forward(x, memory, params, 2, causal, locations=P[:3])
    with pytest.raises(ValueError, match=r"lacks.*W_loc"):
        nn.decoder_layer_forward(x, memory, plain, 2, causal, locations=P)


def test_decoder_layer_locations_gradient_check_and_negative_control(monkeypatch):
    """x, memory and every parameter with locations and dropout: relative error < 1e-5 (a
    decoder layer's tolerance), W_loc's < 1e-7; a backward that leaves out the read's path
    through the attention weights (dweights) fails it."""
    x, memory, params, P = _decoder_location_inputs(np.random.default_rng(15))
    dout = np.random.default_rng(16).standard_normal(x.shape)

    errors, forward, analytic = decoder_layer_grad_errors(x, memory, params, P, dout)
    # the decoder layer's tolerance (gradcheck.BLOCK_TOLERANCE, as `captionlab gradcheck`):
    # here self_attn.Wk's 1.1e-7 is the largest (softmax sums cancel); the read's own
    # weight holds to the single-layer tolerance
    assert max(errors.values()) < BLOCK_TOLERANCE, errors
    assert errors[nn.DECODER_LOCATION_KEY] < STEP_TOLERANCE
    num_wq = eval_numerical_gradient_array(
        lambda _: forward(x, memory, params), params["cross_attn.Wq"], dout
    )
    real = transformer._attend_backward

    def without_dalpha(dout, dw, cache, out, hold=False):
        return real(dout, None, cache, out, hold)

    monkeypatch.setattr(transformer, "_attend_backward", without_dalpha)
    assert rel_error(num_wq, analytic()[2]["cross_attn.Wq"]) > 1e-3


def _decoder_summary_inputs(rng, L=4, heads=2, E=6, F=10):
    x, memory, params, P = _decoder_location_inputs(rng, L=L, heads=heads, E=E, F=F)
    params["cross_attn.w_gate"] = rng.standard_normal((E, heads))
    params["cross_attn.b_gate"] = rng.standard_normal(heads)
    params["cross_attn.W_sum"] = rng.standard_normal((2 * heads, E))
    return x, memory, params, P


def test_decoder_layer_location_summary_is_the_gated_causal_mean_of_the_places():
    """With location_summary, LN2's input also gains ``[S_1 | S_2] @ W_sum``, S_t the
    g-weighted mean of alpha_s @ P over s <= t, g = sigmoid(h1 @ w_gate + b_gate): the layer
    equals the location-only layer with bo shifted per position by that read, written out
    here position by position from its definition."""
    x, memory, params, P = _decoder_summary_inputs(np.random.default_rng(17))
    shapes = nn.decoder_layer_param_shapes(6, 10, location_heads=2, location_summary=True)
    assert shapes == {k: v.shape for k, v in params.items()}
    names = list(shapes)
    assert names[names.index("cross_attn.W_loc") + 1 :][:3] == list(nn.DECODER_SUMMARY_KEYS)
    causal = np.tril(np.ones((4, 4)))
    out, cache = nn.decoder_layer_forward(x, memory, params, 2, causal, locations=P,
                                          location_summary=True)  # fmt: skip
    _, alpha = nn.decoder_layer_attention(cache)  # (N, h, T, L)
    m = alpha @ P  # (N, h, T, 2)
    sa, _, _ = nn.multihead_attention_forward(
        x, x, x, *(params[f"self_attn.{k}"] for k in ("Wq", "bq", "Wk", "bk", "Wv", "bv",
                                                        "Wo", "bo")), 2, causal
    )  # fmt: skip
    h1, _ = nn.layernorm_forward(x + sa, params["norm1.gamma"], params["norm1.beta"])
    gate = 1 / (1 + np.exp(-(h1 @ params["cross_attn.w_gate"] + params["cross_attn.b_gate"])))
    S = np.zeros((2, 4, 4))  # (N, T, 2h)
    for n in range(2):
        for t in range(4):
            for i in range(2):
                w = gate[n, : t + 1, i]
                S[n, t, 2 * i : 2 * i + 2] = (w[:, None] * m[n, i, : t + 1]).sum(0) / w.sum()
    assert not np.allclose(S[:, 1:], np.concatenate([m[:, 0], m[:, 1]], -1)[:, 1:])
    loc_only = {k: v for k, v in params.items() if k not in nn.DECODER_SUMMARY_KEYS}
    for n in range(2):  # bo stands in for the read of row n at position t; causal: the
        for t in range(4):  # first t+1 words give position t
            loc_only["cross_attn.bo"] = (
                params["cross_attn.bo"] + S[n, t] @ params["cross_attn.W_sum"]
            )
            o, _ = nn.decoder_layer_forward(
                x[n : n + 1, : t + 1], memory[n : n + 1], loc_only, 2,
                causal[: t + 1, : t + 1], locations=P,
            )  # fmt: skip
            np.testing.assert_allclose(out[n, t], o[0, t], rtol=1e-12, atol=1e-13)
    _, _, dparams = nn.decoder_layer_backward(np.ones_like(out), cache)
    assert list(dparams) == [*nn.DECODER_LAYER_KEYS, nn.DECODER_LOCATION_KEY,
                             *nn.DECODER_SUMMARY_KEYS]  # fmt: skip
    with pytest.raises(ValueError, match="location_summary needs locations"):
        nn.decoder_layer_forward(x, memory, params, 2, causal, location_summary=True)
    with pytest.raises(ValueError, match=r"lacks.*w_gate"):
        nn.decoder_layer_forward(x, memory, loc_only, 2, causal, locations=P,
                                 location_summary=True)  # fmt: skip
    with pytest.raises(ValueError, match="location_summary needs location_heads"):
        nn.decoder_layer_param_shapes(6, 10, location_summary=True)


def test_decoder_layer_location_summary_gradient_check_and_negative_control(monkeypatch):
    """x, memory and every parameter with the running summary and dropout: relative error
    < 1e-5 (a decoder layer's tolerance), the summary's own weights < 1e-7; a backward that
    drops the gradient through the normaliser sum g_s fails on w_gate."""
    x, memory, params, P = _decoder_summary_inputs(np.random.default_rng(18))
    dout = np.random.default_rng(19).standard_normal(x.shape)

    errors, forward, analytic = decoder_layer_grad_errors(x, memory, params, P, dout, summary=True)
    assert max(errors.values()) < BLOCK_TOLERANCE, errors
    for key in nn.DECODER_SUMMARY_KEYS:
        assert errors[key] < STEP_TOLERANCE, (key, errors[key])
    num_gate = eval_numerical_gradient_array(
        lambda _: forward(x, memory, params), params["cross_attn.w_gate"], dout
    )
    real = transformer._location_summary_backward

    def without_normaliser(dS, cache, grads):
        x1, w_gate, W_sum, m, g, G, S = cache
        return real(dS, (x1, w_gate, W_sum, m, g, G, np.zeros_like(S)), grads)  # dG = 0

    monkeypatch.setattr(transformer, "_location_summary_backward", without_normaliser)
    assert rel_error(num_gate, analytic()[2]["cross_attn.w_gate"]) > 1e-3


# ------------------------------------------------------------------ encoder layer
def test_encoder_layer_values_float32_and_cache_reuse():
    """The encoder layer is the decoder layer's self-attention and feed-forward blocks:
    written out from the public layers, every cell attending to every cell; float32 kept,
    the cache reusable, inputs left as found."""
    rng = np.random.default_rng(13)
    x, _, dparams = _decoder_inputs(rng, T=5)
    params = {k: dparams[k] for k in nn.ENCODER_LAYER_KEYS}
    assert {k: v.shape for k, v in params.items()} == nn.encoder_layer_param_shapes(6, 10)
    p = params
    sa, _, _ = nn.multihead_attention_forward(
        x, x, x, *(p[f"self_attn.{k}"] for k in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")), 2
    )
    h1, _ = nn.layernorm_forward(x + sa, p["norm1.gamma"], p["norm1.beta"])
    ff, _ = nn.feedforward_forward(h1, p["ffn.W1"], p["ffn.b1"], p["ffn.W2"], p["ffn.b2"])
    expected, _ = nn.layernorm_forward(h1 + ff, p["norm2.gamma"], p["norm2.beta"])
    out, _ = nn.encoder_layer_forward(x, params, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)

    x32 = x.astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    saved = [a.copy() for a in (x32, *p32.values())]
    out, cache = nn.encoder_layer_forward(x32, p32, 2, 0.1, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == x.shape
    dx, grads = nn.encoder_layer_backward(np.ones_like(out), cache)
    assert dx.dtype == np.float32 and list(grads) == list(nn.ENCODER_LAYER_KEYS)
    assert all(g.dtype == np.float32 and g.shape == p32[k].shape for k, g in grads.items())
    again = nn.encoder_layer_backward(np.ones_like(out), cache)  # the cache is not consumed
    np.testing.assert_array_equal(again[0], dx)
    for a, s in zip((x32, *p32.values()), saved, strict=True):
        np.testing.assert_array_equal(a, s)
    with pytest.raises(ValueError, match="lacks"):
        nn.encoder_layer_forward(x, {"ffn.W1": params["ffn.W1"]}, 2)
    with pytest.raises(ValueError, match="num_heads"):
        nn.encoder_layer_forward(x, params, 4)


# ------------------------------------------------------------------ negative controls
def _results():
    return {(r.layer, r.parameter): r for r in check_layers(seed=0)}


def test_checker_fails_on_a_wrong_softmax_backward(monkeypatch):
    def wrong(dp, p):
        return 1.01 * dp * p - p * np.sum(dp * p, axis=-1, keepdims=True)

    monkeypatch.setattr(attention, "masked_softmax_backward", wrong)
    results = _results()
    assert not results[("scaled_dot_product_attention", "q")].passed
    assert not results[("multihead_attention", "Wq")].passed
    assert not results[("decoder_layer", "self_attn.Wk")].passed
    assert not results[("encoder_layer", "self_attn.Wk")].passed
    assert results[("scaled_dot_product_attention", "v")].passed


def test_checker_fails_on_a_wrong_layernorm_and_feedforward_backward(monkeypatch):
    real_ln, real_ff = transformer.layernorm_backward, transformer.feedforward_backward

    def wrong_ln(dout, cache, hold_scale=False):
        dx, dgamma, dbeta = real_ln(dout, cache, hold_scale)
        return dx * 1.01, dgamma, dbeta

    def wrong_ff(dout, cache):
        dx, dW1, db1, dW2, db2 = real_ff(dout, cache)
        return dx, dW1 * 1.01, db1, dW2, db2

    monkeypatch.setattr(transformer, "layernorm_backward", wrong_ln)
    monkeypatch.setattr(transformer, "feedforward_backward", wrong_ff)
    results = _results()
    assert not results[("layernorm", "x")].passed
    assert results[("layernorm", "gamma")].passed
    assert not results[("feedforward", "W1")].passed
    assert results[("feedforward", "W2")].passed
    assert not results[("decoder_layer", "x")].passed
    assert not results[("decoder_layer", "ffn.W1")].passed
    assert not results[("encoder_layer", "x")].passed
    assert not results[("encoder_layer", "ffn.W1")].passed


def test_checker_fails_when_dropout_is_forgotten_in_backward(monkeypatch):
    monkeypatch.setattr(transformer, "dropout_backward", lambda dout, cache: dout)
    results = _results()
    assert not results[("dropout", "x")].passed
    assert not results[("decoder_layer", "ffn.W2")].passed
    assert not results[("encoder_layer", "ffn.W2")].passed
