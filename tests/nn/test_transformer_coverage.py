"""Coverage in the decoder layer's cross-attention: the weights written out from their
definition, a torch autograd reference of the whole layer in float64, finite differences
with a negative control, float32, and the plain layer at c = 0."""

import math

import numpy as np
import pytest
from layer_checks import decoder_layer_grad_errors

from captionlab import nn
from captionlab.nn import attention, transformer
from captionlab.nn.gradcheck import (
    STEP_TOLERANCE,
    eval_numerical_gradient_array,
    rel_error,
)

HEADS = 2


def _inputs(rng, locations=False, summary=False, N=2, T=5, L=4, E=6, F=10, dtype=np.float64):
    """x (N, T, E), memory (N, L, E), the layer's parameters with coverage (c and u far
    from 0), and the cells' places P (L, 2) or None."""
    shapes = nn.decoder_layer_param_shapes(
        E, F, HEADS if locations else 0, summary, coverage_heads=HEADS
    )
    params = {k: rng.standard_normal(s) / math.sqrt(s[0]) for k, s in shapes.items()}
    for k in (1, 2, 3):
        params[f"norm{k}.gamma"] += 1
    params["cross_attn.c_cov"] = np.array([-2.0, 1.5])  # one head away, one back
    params["cross_attn.u_cov"] = rng.standard_normal(E)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((N, T, E)).astype(dtype)
    memory = rng.standard_normal((N, L, E)).astype(dtype)
    return x, memory, params, attention.cell_locations(L) if locations else None


def test_coverage_weights_are_the_biased_softmax_of_the_earlier_plain_weights():
    """alpha[t] = softmax(Z[t] + (c_i + q_i[t] . u_i / sqrt(d)) sum_{s<t} softmax(Z[s])),
    written out position by position; out = alpha @ v; c = u = 0 is plain scaled dot-product
    attention."""
    rng = np.random.default_rng(0)
    N, T, L, d = 2, 5, 4, 3
    q, k, v = (rng.standard_normal((N, HEADS, n, d)) for n in (T, L, L))
    c, u = np.array([-2.0, 1.5]), rng.standard_normal((HEADS, d))
    out, alpha, _ = nn.coverage_attention_forward(q, k, v, c, u)
    Z = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    for n in range(N):
        for i in range(HEADS):
            seen = np.zeros(L)
            for t in range(T):
                z = Z[n, i, t] + (c[i] + q[n, i, t] @ u[i] / math.sqrt(d)) * seen
                expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                np.testing.assert_allclose(alpha[n, i, t], expected, rtol=1e-13)
                plain = np.exp(Z[n, i, t] - Z[n, i, t].max())
                seen = seen + plain / plain.sum()
    np.testing.assert_allclose(out, alpha @ v, rtol=1e-13)
    plain_out, plain_w, _ = nn.scaled_dot_product_attention_forward(q, k, v)
    out0, alpha0, _ = nn.coverage_attention_forward(q, k, v, np.zeros(HEADS), 0 * u)
    np.testing.assert_allclose(out0, plain_out, rtol=1e-13)
    np.testing.assert_allclose(alpha0, plain_w, rtol=1e-13)
    with pytest.raises(ValueError, match=r"c must have shape \(h,\)"):
        nn.coverage_attention_forward(q, k, v, np.zeros(3), u)
    with pytest.raises(ValueError, match=r"u must have shape \(h, d\)"):
        nn.coverage_attention_forward(q, k, v, c, u[:, :2])


def test_coverage_attention_gradient_check_and_float32():
    """dq, dk, dv, dc, du and the path through the returned weights: relative error < 1e-7
    (a single layer's tolerance) with a dropout mask; float32 in, float32 out."""
    rng = np.random.default_rng(1)
    N, T, L, d = 2, 4, 5, 3
    q, k, v = (rng.standard_normal((N, HEADS, n, d)) for n in (T, L, L))
    c, u = np.array([-1.0, 2.0]), rng.standard_normal((HEADS, d))
    drop = (rng.random((N, HEADS, T, L)) > 0.2) / 0.8
    dout = rng.standard_normal((N, HEADS, T, d))
    dalpha = rng.standard_normal((N, HEADS, T, L))

    def f(q_, k_, v_, c_, u_):  # out and alpha side by side: differences before sums
        out, alpha, _ = nn.coverage_attention_forward(q_, k_, v_, c_, u_, dropout_mask=drop)
        return np.concatenate([out.ravel(), alpha.ravel()])

    df = np.concatenate([dout.ravel(), dalpha.ravel()])
    _, _, cache = nn.coverage_attention_forward(q, k, v, c, u, dropout_mask=drop)
    grads = nn.coverage_attention_backward(dout, dalpha, cache)
    for i, arr in enumerate((q, k, v, c, u)):  # arr is perturbed in place
        num = eval_numerical_gradient_array(lambda _: f(q, k, v, c, u), arr, df)
        assert rel_error(num, grads[i]) < STEP_TOLERANCE, (i, rel_error(num, grads[i]))
    out32, alpha32, cache32 = nn.coverage_attention_forward(
        *(a.astype(np.float32) for a in (q, k, v, c, u))
    )
    assert out32.dtype == alpha32.dtype == np.float32
    assert all(
        g.dtype == np.float32
        for g in nn.coverage_attention_backward(dout.astype(np.float32), None, cache32)
    )


def _torch_layer(x, memory, p, P, summary, causal):
    """The decoder layer with coverage written in torch from the module docstring's
    equations (captionlab's layout: ``x @ W + b``), dropout 0."""
    import torch

    F_ = torch.nn.functional
    N, T, E = x.shape
    d = E // HEADS

    def heads(a):
        return a.reshape(a.shape[0], a.shape[1], HEADS, d).transpose(1, 2)  # (N, h, S, d)

    def merge(a):
        return a.transpose(1, 2).reshape(a.shape[0], a.shape[2], E)

    def ln(a, k):
        return F_.layer_norm(a, (E,), p[f"norm{k}.gamma"], p[f"norm{k}.beta"], eps=1e-5)

    def proj(a, blk, n):
        return a @ p[f"{blk}.W{n}"] + p[f"{blk}.b{n}"]

    q, k, v = (heads(proj(x, "self_attn", n)) for n in "qkv")
    s = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(torch.tensor(causal == 0), -math.inf)
    h1 = ln(x + proj(merge(torch.softmax(s, -1) @ v), "self_attn", "o"), 1)
    q = heads(proj(h1, "cross_attn", "q"))
    k, v = heads(proj(memory, "cross_attn", "k")), heads(proj(memory, "cross_attn", "v"))
    Z = q @ k.transpose(-1, -2) / math.sqrt(d)  # (N, h, T, L)
    A0 = torch.softmax(Z, -1)
    C = torch.cat([torch.zeros_like(A0[:, :, :1]), torch.cumsum(A0[:, :, :-1], 2)], 2)
    u = p["cross_attn.u_cov"].reshape(HEADS, d)
    g = p["cross_attn.c_cov"][None, :, None] + (q * u[None, :, None]).sum(-1) / math.sqrt(d)
    alpha = torch.softmax(Z + g[..., None] * C, -1)
    ca = proj(merge(alpha @ v), "cross_attn", "o")
    if P is not None:
        loc = (alpha @ torch.tensor(P)).transpose(1, 2).reshape(N, T, 2 * HEADS)
        ca = ca + loc @ p["cross_attn.W_loc"]
        if summary:
            g = torch.sigmoid(h1 @ p["cross_attn.w_gate"] + p["cross_attn.b_gate"])  # (N, T, h)
            m = loc.reshape(N, T, HEADS, 2)
            S = torch.cumsum(g[..., None] * m, 1) / torch.cumsum(g, 1)[..., None]
            ca = ca + S.reshape(N, T, 2 * HEADS) @ p["cross_attn.W_sum"]
    h2 = ln(h1 + ca, 2)
    ff = torch.relu(h2 @ p["ffn.W1"] + p["ffn.b1"]) @ p["ffn.W2"] + p["ffn.b2"]
    return ln(h2 + ff, 3)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    ("locations", "summary"), [(False, False), (True, True)], ids=["coverage", "with_summary"]
)
def test_decoder_layer_with_coverage_equals_torch_autograd(locations, summary):
    """Output, loss and every gradient (x, memory, each parameter, c and u among them) equal a
    torch
    autograd reference of the equations in float64 to 1e-9 relative, 1e-10 absolute."""
    torch = pytest.importorskip("torch")
    x, memory, params, P = _inputs(np.random.default_rng(2), locations, summary)
    dout = np.random.default_rng(3).standard_normal(x.shape)
    causal = np.tril(np.ones((5, 5)))
    out, cache = nn.decoder_layer_forward(
        x, memory, params, HEADS, causal, locations=P, location_summary=summary, coverage=True
    )
    dx, dmemory, dparams = nn.decoder_layer_backward(dout, cache)
    assert list(dparams) == list(nn.decoder_layer_keys(locations, summary, coverage=True))
    assert list(dparams)[-2:] == list(nn.DECODER_COVERAGE_KEYS)

    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx, tmem = torch.tensor(x, requires_grad=True), torch.tensor(memory, requires_grad=True)
    tout = _torch_layer(tx, tmem, t, P, summary, causal)
    tloss = (tout * torch.tensor(dout)).sum()
    tloss.backward()

    def close(a, b, what):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10, err_msg=what)

    close(out, tout.detach().numpy(), "out")
    close(float((out * dout).sum()), tloss.item(), "loss")
    close(dx, tx.grad.numpy(), "dx")
    close(dmemory, tmem.grad.numpy(), "dmemory")
    for key, g in dparams.items():
        close(g, t[key].grad.numpy(), key)


def test_decoder_layer_coverage_at_zero_is_the_plain_layer_and_it_learns():
    """c = u = 0: the same output as the layer without coverage (and the same gradients),
    while dc and du are not zero, so a model whose coverage starts at 0 moves away from the
    plain layer."""
    x, memory, params, P = _inputs(np.random.default_rng(4), locations=True, summary=True)
    params["cross_attn.c_cov"], params["cross_attn.u_cov"] = np.zeros(HEADS), np.zeros(6)
    plain = {k: v for k, v in params.items() if k not in nn.DECODER_COVERAGE_KEYS}
    causal = np.tril(np.ones((5, 5)))
    dout = np.random.default_rng(5).standard_normal(x.shape)
    out, cache = nn.decoder_layer_forward(x, memory, params, HEADS, causal, locations=P,
                                          location_summary=True, coverage=True)  # fmt: skip
    out0, cache0 = nn.decoder_layer_forward(x, memory, plain, HEADS, causal, locations=P,
                                            location_summary=True)  # fmt: skip
    np.testing.assert_allclose(out, out0, rtol=1e-13, atol=1e-14)
    _, _, dparams = nn.decoder_layer_backward(dout, cache)
    _, _, dparams0 = nn.decoder_layer_backward(dout, cache0)
    for key, g in dparams0.items():
        np.testing.assert_allclose(dparams[key], g, rtol=1e-11, atol=1e-13, err_msg=key)
    assert np.all(np.abs(dparams["cross_attn.c_cov"]) > 1e-3)
    assert np.abs(dparams["cross_attn.u_cov"]).min() > 1e-4
    with pytest.raises(ValueError, match=r"lacks.*c_cov"):
        nn.decoder_layer_forward(x, memory, plain, HEADS, causal, coverage=True)


def test_decoder_layer_coverage_float32_and_cache_reuse():
    x, memory, params, P = _inputs(np.random.default_rng(6), True, True, dtype=np.float32)
    saved = [a.copy() for a in (x, memory, *params.values())]
    causal = np.tril(np.ones((5, 5)))
    out, cache = nn.decoder_layer_forward(
        x, memory, params, HEADS, causal, 0.1, np.random.default_rng(0), P, True, True
    )
    assert out.dtype == np.float32
    dx, dmemory, dparams = nn.decoder_layer_backward(np.ones_like(out), cache)
    assert dx.dtype == dmemory.dtype == np.float32
    assert all(g.dtype == np.float32 and g.shape == params[k].shape for k, g in dparams.items())
    again = nn.decoder_layer_backward(np.ones_like(out), cache)
    for key in nn.DECODER_COVERAGE_KEYS:
        np.testing.assert_array_equal(again[2][key], dparams[key])
    for a, s in zip((x, memory, *params.values()), saved, strict=True):
        np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize(("locations", "summary"), [(False, False), (True, True)],
                         ids=["coverage", "with_summary"])  # fmt: skip
def test_decoder_layer_coverage_gradient_check_and_negative_control(
    monkeypatch, locations, summary
):
    """x, memory and every parameter with coverage and dropout: relative error < 1e-7 (a
    single layer's tolerance, tighter than a decoder layer's 1e-5); a backward that leaves
    out the path through the plain weights A0 (what the coverage sums) fails on the
    cross-attention's Wq."""
    x, memory, params, P = _inputs(np.random.default_rng(7), locations, summary)
    dout = np.random.default_rng(8).standard_normal(x.shape)
    errors, forward, analytic = decoder_layer_grad_errors(
        x, memory, params, P, dout, summary, coverage=True, heads=HEADS
    )
    # every one within a single layer's tolerance here (the largest, self_attn.Wk's 8.7e-8
    # with the summary, is where the softmax sums cancel), not only the block tolerance
    assert max(errors.values()) < STEP_TOLERANCE, errors

    num_wq = eval_numerical_gradient_array(
        lambda _: forward(x, memory, params), params["cross_attn.Wq"], dout
    )
    real = transformer.coverage_attention_backward

    def without_coverage_path(dout, dalpha, cache, **kw):  # g = 0 here: dA0 = 0
        return real(dout, dalpha, (*cache[:9], np.zeros_like(cache[9]), *cache[10:]), **kw)

    monkeypatch.setattr(transformer, "coverage_attention_backward", without_coverage_path)
    assert rel_error(num_wq, analytic()[2]["cross_attn.Wq"]) > 1e-3
