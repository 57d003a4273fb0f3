"""The NumPy Transformer layers equal torch's in float64: outputs and all gradients.

torch keeps ``in_proj_weight`` (3E, E) = [Wq; Wk; Wv] and applies ``x @ W.T``; captionlab's
``Wq`` (E, E) is applied as ``x @ Wq``, so ``Wq = in_proj_weight[:E].T``.
"""

import numpy as np
import pytest

from captionlab import nn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, E, HEADS, F = 3, 8, 2, 12


def _close(a, b, what=""):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=what)


def _mha_params(m) -> dict[str, np.ndarray]:
    """captionlab's Wq, bq, ..., Wo, bo from a torch.nn.MultiheadAttention."""
    W = m.in_proj_weight.detach().numpy()
    b = m.in_proj_bias.detach().numpy()
    p = {}
    for i, n in enumerate("qkv"):
        p[f"W{n}"] = W[i * E : (i + 1) * E].T.copy()
        p[f"b{n}"] = b[i * E : (i + 1) * E].copy()
    p["Wo"] = m.out_proj.weight.detach().numpy().T.copy()
    p["bo"] = m.out_proj.bias.detach().numpy().copy()
    return p


def _mha_grads(m) -> dict[str, np.ndarray]:
    """The gradients of a torch.nn.MultiheadAttention in captionlab's layout."""
    W = m.in_proj_weight.grad.numpy()
    b = m.in_proj_bias.grad.numpy()
    g = {}
    for i, n in enumerate("qkv"):
        g[f"W{n}"] = W[i * E : (i + 1) * E].T
        g[f"b{n}"] = b[i * E : (i + 1) * E]
    g["Wo"] = m.out_proj.weight.grad.numpy().T
    g["bo"] = m.out_proj.bias.grad.numpy()
    return g


def _mha_case(S, T, self_attention, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = torch.nn.MultiheadAttention(E, HEADS, dropout=0.0, batch_first=True).double()
    with torch.no_grad():  # torch starts with zero biases: make them count
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    p = _mha_params(m)
    query = rng.standard_normal((N, S, E))
    key = query if self_attention else rng.standard_normal((N, T, E))
    value = query if self_attention else rng.standard_normal((N, T, E))
    mask = np.tril(np.ones((S, T))) if self_attention else None
    dout = rng.standard_normal((N, S, E))
    dweights = rng.standard_normal((N, HEADS, S, T))
    return m, p, query, key, value, mask, dout, dweights


@pytest.mark.parametrize(
    ("S", "T", "self_attention"),
    [(5, 5, True), (4, 6, False)],
    ids=["causal_self_attention", "cross_attention"],
)
def test_multihead_attention_equals_torch(S, T, self_attention):
    m, p, query, key, value, mask, dout, dweights = _mha_case(S, T, self_attention, seed=S)
    out, weights, cache = nn.multihead_attention_forward(
        query, key, value, *(p[k] for k in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")),
        HEADS, mask,
    )  # fmt: skip
    grads = nn.multihead_attention_backward(dout, dweights, cache)
    dquery, dkey, dvalue = grads[:3]
    dparams = dict(zip(("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo"), grads[3:], strict=True))

    tq = torch.tensor(query, requires_grad=True)
    tk = tq if self_attention else torch.tensor(key, requires_grad=True)
    tv = tq if self_attention else torch.tensor(value, requires_grad=True)
    tmask = None if mask is None else torch.tensor(mask == 0)  # torch: True = may not attend
    tout, tweights = m(tq, tk, tv, attn_mask=tmask, average_attn_weights=False)
    loss = (tout * torch.tensor(dout)).sum() + (tweights * torch.tensor(dweights)).sum()
    loss.backward()

    _close(out, tout.detach().numpy(), "out")
    _close(weights, tweights.detach().numpy(), "weights")
    if self_attention:  # one tensor: torch sums the three gradients
        _close(dquery + dkey + dvalue, tq.grad.numpy(), "dx")
    else:
        _close(dquery, tq.grad.numpy(), "dquery")
        _close(dkey, tk.grad.numpy(), "dkey")
        _close(dvalue, tv.grad.numpy(), "dvalue")
    tgrads = _mha_grads(m)
    for name, g in dparams.items():
        _close(g, tgrads[name], name)
    if mask is not None:  # masked keys get exactly zero weight
        assert np.all(weights[..., mask == 0] == 0)


def test_multihead_attention_class_equals_torch():
    """The cs231n class in eval mode: forward(query, key, value, attn_mask), backward(dout)."""
    m, p, query, key, value, _, dout, _ = _mha_case(4, 6, False, seed=11)
    mask = np.random.default_rng(0).random((4, 6)) > 0.3
    mask[:, 0] = True
    layer = nn.MultiHeadAttention(E, HEADS, dropout=0.1, dtype=np.float64).eval()
    layer.params = p
    out = layer.forward(query, key, value, attn_mask=mask)
    dquery, dkey, dvalue = layer.backward(dout)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (query, key, value))
    tout, _ = m(tq, tk, tv, attn_mask=torch.tensor(~mask))
    (tout * torch.tensor(dout)).sum().backward()
    _close(out, tout.detach().numpy())
    _close(dquery, tq.grad.numpy())
    _close(dkey, tk.grad.numpy())
    _close(dvalue, tv.grad.numpy())
    assert sorted(layer.grads) == sorted(layer.params)
    for name, g in _mha_grads(m).items():
        _close(layer.grads[name], g, name)


def test_scaled_dot_product_attention_equals_torch():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 6, 5))
    v = rng.standard_normal((2, 3, 6, 7))
    mask = rng.random((4, 6)) > 0.4
    mask[:, 2] = True
    out, weights, cache = nn.scaled_dot_product_attention_forward(q, k, v, mask)
    assert weights.shape == (2, 3, 4, 6)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = nn.scaled_dot_product_attention_backward(dout, None, cache)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    # torch's boolean mask: True = takes part, as captionlab's
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, torch.tensor(mask))
    (tout * torch.tensor(dout)).sum().backward()
    _close(out, tout.detach().numpy())
    _close(dq, tq.grad.numpy())
    _close(dk, tk.grad.numpy())
    _close(dv, tv.grad.numpy())


def test_layernorm_equals_torch():
    rng = np.random.default_rng(4)
    x = 3 + 2 * rng.standard_normal((N, 5, E))
    gamma, beta = rng.standard_normal(E), rng.standard_normal(E)
    dout = rng.standard_normal(x.shape)
    out, cache = nn.layernorm_forward(x, gamma, beta, {"eps": 1e-5})
    dx, dgamma, dbeta = nn.layernorm_backward(dout, cache)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tout = torch.nn.functional.layer_norm(tx, (E,), tg, tb, eps=1e-5)
    (tout * torch.tensor(dout)).sum().backward()
    _close(out, tout.detach().numpy())
    _close(dx, tx.grad.numpy())
    _close(dgamma, tg.grad.numpy())
    _close(dbeta, tb.grad.numpy())


def test_held_weights_and_scale_equal_torch_with_them_detached():
    """``hold_weights``: the attention's weights constants (dq = dk = 0, dv as before, into
    the caller's buffers too); ``hold_scale``: the norm's 1 / sqrt(var + eps) a constant.
    Both equal torch autograd with those detached."""
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 6, 5))
    v = rng.standard_normal((2, 3, 6, 7))
    out, weights, cache = nn.scaled_dot_product_attention_forward(q, k, v, None)
    dout = rng.standard_normal(out.shape)
    buffers = tuple(np.full(a.shape, 7.0) for a in (q, k, v))
    dq, dk, dv = nn.scaled_dot_product_attention_backward(dout, None, cache, hold_weights=True)
    held = nn.scaled_dot_product_attention_backward(
        dout, None, cache, out=buffers, hold_weights=True
    )
    tv = torch.tensor(v, requires_grad=True)
    (torch.tensor(weights) @ tv * torch.tensor(dout)).sum().backward()  # weights constant
    assert not dq.any() and not dk.any()
    _close(dv, tv.grad.numpy())
    assert all(h is b for h, b in zip(held, buffers, strict=True))
    assert not buffers[0].any() and not buffers[1].any()
    _close(buffers[2], tv.grad.numpy())

    x = 3 + 2 * rng.standard_normal((N, 5, E))
    gamma, beta = rng.standard_normal(E), rng.standard_normal(E)
    dout = rng.standard_normal(x.shape)
    _, cache = nn.layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = nn.layernorm_backward(dout, cache, hold_scale=True)
    tx = torch.tensor(x, requires_grad=True)
    centred = tx - tx.mean(-1, keepdim=True)
    rstd = 1 / torch.sqrt((centred.detach() ** 2).mean(-1, keepdim=True) + 1e-5)
    (centred * rstd * torch.tensor(gamma) * torch.tensor(dout)).sum().backward()
    _close(dx, tx.grad.numpy())
    free = nn.layernorm_backward(dout, cache)
    _close(dgamma, free[1])  # the parameters' gradients do not change
    _close(dbeta, free[2])
    assert np.abs(dx - free[0]).max() > 1e-3


def _decoder_params(m) -> dict[str, np.ndarray]:
    """captionlab's decoder-layer parameters from a torch.nn.TransformerDecoderLayer."""
    p = {}
    for ours, theirs in (("self_attn", m.self_attn), ("cross_attn", m.multihead_attn)):
        for name, value in _mha_params(theirs).items():
            p[f"{ours}.{name}"] = value
    p["ffn.W1"] = m.linear1.weight.detach().numpy().T.copy()
    p["ffn.b1"] = m.linear1.bias.detach().numpy().copy()
    p["ffn.W2"] = m.linear2.weight.detach().numpy().T.copy()
    p["ffn.b2"] = m.linear2.bias.detach().numpy().copy()
    for k in (1, 2, 3):
        norm = getattr(m, f"norm{k}")
        p[f"norm{k}.gamma"] = norm.weight.detach().numpy().copy()
        p[f"norm{k}.beta"] = norm.bias.detach().numpy().copy()
    return p


def _decoder_grads(m) -> dict[str, np.ndarray]:
    g = {}
    for ours, theirs in (("self_attn", m.self_attn), ("cross_attn", m.multihead_attn)):
        for name, value in _mha_grads(theirs).items():
            g[f"{ours}.{name}"] = value
    g["ffn.W1"], g["ffn.b1"] = m.linear1.weight.grad.numpy().T, m.linear1.bias.grad.numpy()
    g["ffn.W2"], g["ffn.b2"] = m.linear2.weight.grad.numpy().T, m.linear2.bias.grad.numpy()
    for k in (1, 2, 3):
        norm = getattr(m, f"norm{k}")
        g[f"norm{k}.gamma"], g[f"norm{k}.beta"] = norm.weight.grad.numpy(), norm.bias.grad.numpy()
    return g


def _torch_layer(cls, seed: int):
    """A float64 post-norm ReLU torch layer (``cls``: TransformerDecoderLayer or
    TransformerEncoderLayer), dropout 0, with non-trivial biases and norm parameters."""
    torch.manual_seed(seed)
    m = cls(
        E, HEADS, dim_feedforward=F, dropout=0.0, activation="relu", batch_first=True,
        norm_first=False,
    ).double()  # fmt: skip
    with torch.no_grad():
        for name, param in m.named_parameters():
            if "bias" in name or "norm" in name:
                param.add_(0.5 * torch.randn_like(param))
    return m


def test_decoder_layer_equals_torch():
    m = _torch_layer(torch.nn.TransformerDecoderLayer, seed=5)
    p = _decoder_params(m)
    assert sorted(p) == sorted(nn.DECODER_LAYER_KEYS)
    rng = np.random.default_rng(5)
    T, L = 6, 4
    x, memory = rng.standard_normal((N, T, E)), rng.standard_normal((N, L, E))
    dout = rng.standard_normal((N, T, E))
    causal = np.tril(np.ones((T, T)))
    out, cache = nn.decoder_layer_forward(x, memory, p, HEADS, causal)
    dx, dmemory, dparams = nn.decoder_layer_backward(dout, cache)

    tx, tmem = torch.tensor(x, requires_grad=True), torch.tensor(memory, requires_grad=True)
    tout = m(tx, tmem, tgt_mask=torch.tensor(causal == 0))
    (tout * torch.tensor(dout)).sum().backward()
    _close(out, tout.detach().numpy(), "out")
    _close(dx, tx.grad.numpy(), "dx")
    _close(dmemory, tmem.grad.numpy(), "dmemory")
    tgrads = _decoder_grads(m)
    assert list(dparams) == list(nn.DECODER_LAYER_KEYS)
    for name, g in dparams.items():
        _close(g, tgrads[name], name)


def test_encoder_layer_equals_torch():
    m = _torch_layer(torch.nn.TransformerEncoderLayer, seed=6)
    p = {f"self_attn.{k}": v for k, v in _mha_params(m.self_attn).items()}
    p["ffn.W1"], p["ffn.b1"] = m.linear1.weight.detach().numpy().T.copy(), m.linear1.bias
    p["ffn.W2"], p["ffn.b2"] = m.linear2.weight.detach().numpy().T.copy(), m.linear2.bias
    for k in (1, 2):
        norm = getattr(m, f"norm{k}")
        p[f"norm{k}.gamma"], p[f"norm{k}.beta"] = norm.weight, norm.bias
    p = {k: np.array(v.detach().numpy() if torch.is_tensor(v) else v) for k, v in p.items()}
    assert sorted(p) == sorted(nn.ENCODER_LAYER_KEYS)
    rng = np.random.default_rng(6)
    L = 5
    x, dout = rng.standard_normal((N, L, E)), rng.standard_normal((N, L, E))
    out, cache = nn.encoder_layer_forward(x, p, HEADS)
    dx, dparams = nn.encoder_layer_backward(dout, cache)

    m.train()  # torch's fused inference path is for no-grad evaluation only; dropout is 0
    tx = torch.tensor(x, requires_grad=True)
    tout = m(tx)
    (tout * torch.tensor(dout)).sum().backward()
    _close(out, tout.detach().numpy(), "out")
    _close(dx, tx.grad.numpy(), "dx")
    tgrads = {f"self_attn.{k}": v for k, v in _mha_grads(m.self_attn).items()}
    tgrads["ffn.W1"], tgrads["ffn.b1"] = m.linear1.weight.grad.numpy().T, m.linear1.bias.grad
    tgrads["ffn.W2"], tgrads["ffn.b2"] = m.linear2.weight.grad.numpy().T, m.linear2.bias.grad
    for k in (1, 2):
        norm = getattr(m, f"norm{k}")
        tgrads[f"norm{k}.gamma"], tgrads[f"norm{k}.beta"] = norm.weight.grad, norm.bias.grad
    assert list(dparams) == list(nn.ENCODER_LAYER_KEYS)
    for name, g in dparams.items():
        _close(g, np.asarray(tgrads[name]), name)
