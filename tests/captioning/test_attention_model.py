"""AttentionCaptioner: fast path == per-step reference, gradient checks, penalty, mask, overfit."""

from __future__ import annotations

import numpy as np
import pytest
from captioning_helpers import make_captions, make_vocab
from threadpoolctl import threadpool_limits

from captionlab import nn
from captionlab.captioning import AttentionCaptioner
from captionlab.captioning.attention_model import PARAM_NAMES
from captionlab.nn.attention import cell_locations
from captionlab.nn.gradcheck import eval_numerical_gradient, rel_error


def reference_loss(model, features, captions, mask=None):
    """Readable per-step Show, Attend and Tell, from captionlab.nn's step layers.

    Every step calls the layers (additive attention, an affine gate, lstm_step over the
    concatenated input [x_t; z_t]); the word scores and the loss are taken over all positions
    (temporal_affine + temporal_softmax_loss); every gradient is accumulated per step.
    Returns ``(loss, grads)`` with ``grads["features"]``.
    """
    p = model.params
    lam = model.attention_penalty
    A = features
    N, L, _ = A.shape
    W = p["Wx"].shape[0]
    captions_in, captions_out = captions[:, :-1], captions[:, 1:]
    T = captions_in.shape[1]
    null_mask = captions_out != 0
    mask = null_mask if mask is None else mask

    if "W_pos" in p:  # the position embedding, added to every image's grid
        A = A + p["W_pos"]
    a_mean = A.mean(axis=1)
    h, cache_h0 = nn.affine_forward(a_mean, p["W_h0"], p["b_h0"])
    c, cache_c0 = nn.affine_forward(a_mean, p["W_c0"], p["b_c0"])
    A_proj = np.einsum("nld,dk->nlk", A, p["W_att_a"])
    x, cache_embed = nn.word_embedding_forward(captions_in, p["W_embed"])
    Wx_full = np.concatenate([p["Wx"], p["Wz"]], axis=0)  # input [x_t; z_t] (W + D, 4H)
    hs, steps, alphas = [], [], []
    for t in range(T):
        ctx, alpha, cache_att = nn.additive_attention_forward(
            A, A_proj, h, p["W_att_h"], p["b_att"], p["w_att"]
        )
        beta_pre, cache_beta = nn.affine_forward(h, p["W_beta"], p["b_beta"])
        beta = 1 / (1 + np.exp(-beta_pre))  # (N, 1)
        z = beta * ctx
        inp = np.concatenate([x[:, t], z], axis=1)
        h, c, cache_lstm = nn.lstm_step_forward(inp, h, c, Wx_full, p["Wh"], p["b"])
        hs.append(h)
        alphas.append(alpha)
        steps.append((cache_att, cache_beta, beta, ctx, cache_lstm))
    hs = np.stack(hs, axis=1)  # (N, T, H)
    scores, cache_scores = nn.temporal_affine_forward(hs, p["W_vocab"], p["b_vocab"])
    loss, dscores = nn.temporal_softmax_loss(scores, captions_out, mask)
    alphas = np.stack(alphas, axis=1)  # (N, T, L)
    gap = 1 - np.sum(alphas * null_mask[:, :, None], axis=1)  # (N, L)
    loss += lam * np.sum(gap**2) / N
    dalphas = -2 * lam / N * gap[:, None, :] * null_mask[:, :, None]  # (N, T, L)

    g = {k: np.zeros_like(v) for k, v in p.items()}
    dhs, g["W_vocab"], g["b_vocab"] = nn.temporal_affine_backward(dscores, cache_scores)
    dA = np.zeros_like(A)
    dA_proj = np.zeros_like(A_proj)
    dWx_full = np.zeros_like(Wx_full)
    dx = np.zeros_like(x)
    dh_next, dc_next = np.zeros_like(h), np.zeros_like(c)
    for t in reversed(range(T)):
        cache_att, cache_beta, beta, ctx, cache_lstm = steps[t]
        dinp, dh_prev, dc_next, dWx_t, dWh_t, db_t = nn.lstm_step_backward(
            dhs[:, t] + dh_next, dc_next, cache_lstm
        )
        dWx_full += dWx_t
        g["Wh"] += dWh_t
        g["b"] += db_t
        dx[:, t] = dinp[:, :W]
        dz = dinp[:, W:]
        dbeta_pre = np.sum(dz * ctx, axis=1, keepdims=True) * beta * (1 - beta)
        dh_beta, dW_beta_t, db_beta_t = nn.affine_backward(dbeta_pre, cache_beta)
        g["W_beta"] += dW_beta_t
        g["b_beta"] += db_beta_t
        dA_t, dA_proj_t, dh_att, dW_att_h_t, db_att_t, dw_att_t = nn.additive_attention_backward(
            dz * beta, dalphas[:, t], cache_att
        )
        dA += dA_t
        dA_proj += dA_proj_t
        g["W_att_h"] += dW_att_h_t
        g["b_att"] += db_att_t
        g["w_att"] += dw_att_t
        dh_next = dh_prev + dh_beta + dh_att
    g["Wx"], g["Wz"] = dWx_full[:W], dWx_full[W:]
    g["W_embed"] = nn.word_embedding_backward(dx, cache_embed)
    g["W_att_a"] = np.einsum("nld,nlk->dk", A, dA_proj)
    dA += np.einsum("nlk,dk->nld", dA_proj, p["W_att_a"])
    da_mean_h, g["W_h0"], g["b_h0"] = nn.affine_backward(dh_next, cache_h0)
    da_mean_c, g["W_c0"], g["b_c0"] = nn.affine_backward(dc_next, cache_c0)
    dA += (da_mean_h + da_mean_c)[:, None, :] / L
    if "W_pos" in p:
        g["W_pos"] = dA.sum(axis=0)
    g["features"] = dA
    return loss, g


def torch_reference_loss(model, features, captions, mask=None):
    """The module docstring's equations, one step at a time in torch (float64), every
    gradient by autograd: an independent reference that also covers ``locations`` (the
    cells' places), which the step layers of :func:`reference_loss` do not have."""
    import torch

    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    A0 = torch.tensor(features, requires_grad=True)
    N, L, _ = features.shape
    captions_in = torch.tensor(captions[:, :-1])
    out = captions[:, 1:]
    null_mask = torch.tensor(out != 0)
    mask = null_mask if mask is None else torch.tensor(mask)
    A = A0 + p["W_pos"] if "W_pos" in p else A0
    side = round(L**0.5)
    centre = (2 * torch.arange(side, dtype=torch.float64) + 1) / side - 1
    P = torch.stack([centre.repeat(side), centre.repeat_interleave(side)], dim=1)  # (L, 2)
    a_mean = A.mean(dim=1)
    h, c = a_mean @ p["W_h0"] + p["b_h0"], a_mean @ p["W_c0"] + p["b_c0"]
    H = h.shape[1]
    loss = torch.zeros((), dtype=torch.float64)
    total_alpha = torch.zeros((N, L), dtype=torch.float64)
    for t in range(captions_in.shape[1]):
        x = p["W_embed"][captions_in[:, t]]
        e = torch.tanh(A @ p["W_att_a"] + (h @ p["W_att_h"] + p["b_att"])[:, None]) @ p["w_att"]
        if "W_loc_q" in p:
            e = e + (h @ p["W_loc_q"] + p["b_loc_q"]) @ P.T
        alpha = torch.softmax(e, dim=1)
        beta = torch.sigmoid(h @ p["W_beta"] + p["b_beta"])
        z = beta * (alpha[:, :, None] * A).sum(dim=1)
        a = x @ p["Wx"] + z @ p["Wz"] + h @ p["Wh"] + p["b"]
        if "W_loc_z" in p:
            a = a + (alpha @ P) @ p["W_loc_z"]
        i, f, o = (torch.sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
        c = f * c + i * torch.tanh(a[:, 3 * H :])
        h = o * torch.tanh(c)
        logp = torch.log_softmax(h @ p["W_vocab"] + p["b_vocab"], dim=1)
        word = logp[torch.arange(N), torch.tensor(out[:, t])]
        loss = loss - (word * mask[:, t]).sum() / N
        total_alpha = total_alpha + alpha * null_mask[:, t, None]
    loss = loss + model.attention_penalty * ((1 - total_alpha) ** 2).sum() / N
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in p.items()}
    grads["features"] = A0.grad.numpy()
    return loss.item(), grads


def _model(V=9, D=5, W=4, H=6, K=3, dtype=np.float64, seed=0, lam=1.0, scale=None, cells=None,
           locations=False):  # fmt: skip
    model = AttentionCaptioner(
        make_vocab(V), input_dim=D, wordvec_dim=W, hidden_dim=H, attention_dim=K,
        dtype=dtype, seed=seed, attention_penalty=lam, num_cells=cells, locations=locations,
    )  # fmt: skip
    if scale is not None:  # every weight non-zero (biases too), small
        rng = np.random.default_rng(seed + 100)
        for k, v in model.params.items():
            model.params[k] = (scale * rng.standard_normal(v.shape)).astype(dtype)
    return model


def _data(seed=0, N=3, L=4, D=5, T=6, V=9, dtype=np.float64):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N, L, D)).astype(dtype)
    if T >= 5:
        captions = make_captions(rng, N, T, V)
        captions[0, 2] = captions[0, 3] = 5  # a repeated word: embedding gradients accumulate
    else:  # too short for <START> ... <END>: any tokens, <NULL> included
        captions = rng.integers(0, V, size=(N, T))
        captions[0, -1] = 4
    return features, captions


# ------------------------------------------------------------------ fast == reference

SHAPES = [  # N, L, D, W, H, K, T, V
    (3, 4, 5, 4, 6, 3, 6, 9),
    (1, 1, 2, 3, 2, 2, 2, 5),
    (5, 9, 7, 3, 4, 5, 8, 12),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam", [1.0, 0.0, 0.3])
@pytest.mark.parametrize("position", [False, True])
def test_fast_path_equals_per_step_reference(shape, lam, position):
    N, L, D, W, H, K, T, V = shape
    model = _model(V, D, W, H, K, lam=lam, scale=0.5, cells=L if position else None)
    features, captions = _data(1, N, L, D, T, V)
    loss, grads = model.loss(features, captions, feature_grad=True)
    ref_loss, ref = reference_loss(model, features, captions)
    assert abs(loss - ref_loss) <= 1e-10 * max(1.0, abs(ref_loss))
    assert set(grads) == set(ref) == {*model.params, "features"}
    assert ("W_pos" in grads) == position
    for k in ref:
        assert grads[k].shape == ref[k].shape, k
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] in (1, 4, 9)])
@pytest.mark.parametrize(("lam", "position", "locations"), [
    (1.0, False, False), (0.0, False, True), (0.3, True, True)])  # fmt: skip
def test_fast_path_equals_torch_autograd(shape, lam, position, locations):
    """Loss and every gradient equal the equations run step by step under torch autograd,
    with the cells' places (``locations``) and without, to 1e-10."""
    N, L, D, W, H, K, T, V = shape
    model = _model(V, D, W, H, K, lam=lam, scale=0.5, cells=L if position else None,
                   locations=locations)  # fmt: skip
    features, captions = _data(1, N, L, D, T, V)
    mask = np.random.default_rng(2).random((N, T - 1)) > 0.3
    loss, grads = model.loss(features, captions, mask=mask, feature_grad=True)
    ref_loss, ref = torch_reference_loss(model, features, captions, mask=mask)
    assert abs(loss - ref_loss) <= 1e-10 * max(1.0, abs(ref_loss))
    assert set(grads) == set(ref) == {*model.params, "features"}
    assert ("W_loc_q" in grads) == ("W_loc_z" in grads) == locations
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_cell_locations_are_row_major_centres_in_minus_one_to_one():
    P = cell_locations(9)
    np.testing.assert_allclose(P[0], [-2 / 3, -2 / 3])  # top-left first
    np.testing.assert_allclose(P[1], [0, -2 / 3])  # then along the row (x grows)
    np.testing.assert_allclose(P[3], [-2 / 3, 0])  # the next row (y grows downwards)
    np.testing.assert_allclose(P[8], [2 / 3, 2 / 3])
    np.testing.assert_array_equal(cell_locations(1), [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"square grid .*L=6"):
        cell_locations(6)


def test_fast_path_equals_reference_with_a_mask_override():
    model = _model(scale=0.5)
    features, captions = _data(2)
    mask = np.random.default_rng(3).random((3, 5)) > 0.4
    loss, grads = model.loss(features, captions, mask=mask, feature_grad=True)
    ref_loss, ref = reference_loss(model, features, captions, mask=mask)
    assert abs(loss - ref_loss) <= 1e-10 * max(1.0, abs(ref_loss))
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-10, err_msg=k)


# ------------------------------------------------------------------ gradient checks


@pytest.mark.parametrize(("position", "locations"), [(False, False), (True, False), (False, True)])
def test_whole_model_gradient_check(position, locations):
    """float64, small sizes, every parameter and the features, relative error < 1e-5."""
    model = _model(scale=0.4, cells=4 if position else None, locations=locations)
    features, captions = _data(4)
    mask = captions[:, 1:] != 0
    mask[1, 0] = False  # a caller's mask that differs from the <NULL> mask
    _, grads = model.loss(features, captions, mask=mask, feature_grad=True)

    def f(_):
        return model.loss(features, captions, mask=mask)[0]

    # h = 1e-4: the loss is ~9, so at h = 1e-5 its rounding (~1e-15 * 9 / h) already reaches
    # 1e-10 in the difference quotient, 4e-5 relative on the smallest gradient entries.
    assert ("W_pos" in model.params) == position
    assert ("W_loc_q" in model.params) == locations
    for name in model.params:
        num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-4)
        assert rel_error(num, grads[name]) < 1e-5, name
    num = eval_numerical_gradient(f, features, verbose=False, h=1e-4)
    assert rel_error(num, grads["features"]) < 1e-5


@pytest.mark.parametrize("locations", [False, True])
def test_held_attention_gradient_check(locations, monkeypatch):
    """hold_attention=True: the gradient of the loss with every step's attention weights
    fixed at their values, checked numerically (float64, whole model: < 1e-5 relative)
    against the loss whose softmax returns those fixed weights; the words' parameters and
    the features get it, the scores' parameters none, and it differs from the free one."""
    from captionlab.captioning import attention_model

    model = _model(scale=0.4, lam=0.0, locations=locations)
    features, captions = _data(4)
    _, held = model.loss(features, captions, feature_grad=True, hold_attention=True)
    _, free = model.loss(features, captions, feature_grad=True)
    alphas = []  # each step's weights as the loss computes them (rows sorted, packed)

    def record(e):
        alphas.append(real_softmax(e).copy())
        return alphas[-1].copy()

    real_softmax = attention_model.masked_softmax
    monkeypatch.setattr(attention_model, "masked_softmax", record)
    model.loss(features, captions)
    monkeypatch.undo()
    assert len(alphas) == captions.shape[1] - 1

    def fixed_loss(_):
        steps = iter(alphas)
        monkeypatch.setattr(attention_model, "masked_softmax", lambda e: next(steps).copy())
        try:
            return model.loss(features, captions)[0]
        finally:
            monkeypatch.undo()

    for name in ("features", "Wz", "W_h0", "Wx", "W_vocab"):
        x = features if name == "features" else model.params[name]
        num = eval_numerical_gradient(fixed_loss, x, verbose=False, h=1e-4)
        assert rel_error(num, held[name]) < 1e-5, name
    for name in ("W_att_a", "W_att_h", "w_att", "b_att") + (("W_loc_q",) if locations else ()):
        assert not held[name].any(), name
    assert rel_error(held["features"], free["features"]) > 1e-3


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    """Negative control: a penalty whose gradient is dropped, and a one-percent error in
    one gradient, both fail the check."""
    model = _model(scale=0.4)
    features, captions = _data(5)
    _, grads = model.loss(features, captions)
    num = eval_numerical_gradient(
        lambda _: model.loss(features, captions)[0], model.params["w_att"], verbose=False
    )
    assert rel_error(num, grads["w_att"]) < 1e-5
    assert rel_error(num, grads["w_att"] * 1.01) > 1e-3
    real = model._penalty
    monkeypatch.setattr(model, "_penalty", lambda a, m: (real(a, m)[0], np.zeros_like(a)))
    _, wrong = model.loss(features, captions)
    assert rel_error(num, wrong["w_att"]) > 1e-3


# ------------------------------------------------------------------ loss parts


def test_penalty_is_lambda_times_the_doubly_stochastic_sum_over_non_null_steps():
    features, captions = _data(6)
    with_pen = _model(scale=0.5, lam=2.5)
    without = _model(scale=0.5, lam=0.0)
    loss1, _ = with_pen.loss(features, captions)
    loss0, _ = without.loss(features, captions)
    cache = with_pen._forward(features, captions[:, :-1])
    alphas = cache["alphas"]  # (T-1, N, L)
    np.testing.assert_allclose(alphas.sum(axis=2), 1.0, rtol=1e-12)
    keep = (captions[:, 1:] != 0).T  # (T-1, N): steps whose target is not <NULL>
    total = (alphas * keep[:, :, None]).sum(axis=0)  # (N, L)
    expected = 2.5 * np.sum((1 - total) ** 2) / len(features)
    assert loss1 - loss0 == pytest.approx(expected, rel=1e-10)


def test_mask_override_changes_the_word_loss_only():
    model = _model(scale=0.5)
    features, captions = _data(7)
    null_mask = captions[:, 1:] != 0
    loss, grads = model.loss(features, captions)
    loss_same, grads_same = model.loss(features, captions, mask=null_mask.copy())
    assert loss_same == loss
    assert all(np.array_equal(grads[k], grads_same[k]) for k in grads)
    # Nothing counted by the word loss: what is left is the penalty (<NULL> mask).
    loss_pen, grads_pen = model.loss(features, captions, mask=np.zeros_like(null_mask))
    no_pen = _model(scale=0.5, lam=0.0)
    assert loss_pen == pytest.approx(loss - no_pen.loss(features, captions)[0], rel=1e-10)
    assert np.all(grads_pen["W_vocab"] == 0) and np.all(grads_pen["b_vocab"] == 0)
    assert "features" not in grads


def test_initial_loss_is_about_log_V_per_word():
    V = 50
    model = _model(V=V, D=16, W=8, H=16, K=8, lam=0.0, seed=1)
    features, captions = _data(8, N=20, L=6, D=16, T=10, V=V)
    loss, _ = model.loss(features, captions)
    words = np.sum(captions[:, 1:] != 0)
    assert loss / (words / 20) == pytest.approx(np.log(V), rel=0.1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_dtype_and_shapes(dtype):
    model = _model(dtype=dtype, scale=0.5)
    features, captions = _data(9, dtype=dtype)
    before = features.copy()
    loss, grads = model.loss(features, captions, feature_grad=True)
    assert isinstance(loss, float)
    for k, v in model.params.items():
        assert v.dtype == dtype and grads[k].dtype == dtype and grads[k].shape == v.shape, k
    assert grads["features"].dtype == dtype and grads["features"].shape == features.shape
    np.testing.assert_array_equal(features, before)  # the caller's array is left as found
    assert model.expected_shapes() == {k: v.shape for k, v in model.params.items()}


def test_float32_matches_float64():
    m64 = _model(scale=0.5)
    m32 = _model(dtype=np.float32, scale=0.5)
    features, captions = _data(10)
    l64, g64 = m64.loss(features, captions)
    l32, g32 = m32.loss(features.astype(np.float32), captions)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:  # relative to the gradient's norm: tiny entries carry float32 rounding
        assert np.linalg.norm(g32[k] - g64[k]) <= 1e-5 * np.linalg.norm(g64[k]), k


def test_argument_errors_name_the_argument():
    model = _model()
    features, captions = _data(11)
    with pytest.raises(ValueError, match=r"features must be a grid \(N, L, 5\), got \(3, 5\)"):
        model.loss(features[:, 0], captions)
    with pytest.raises(ValueError, match="captions must be"):
        model.loss(features, captions[:2])
    with pytest.raises(ValueError, match=r"mask must be boolean \(N, T-1\)"):
        model.loss(features, captions, mask=np.ones((3, 6), dtype=bool))
    with pytest.raises(ValueError, match="attention_penalty"):
        _model(lam=-1.0)
    with pytest.raises(ValueError, match=r"grid of L=3 cells .*got \(3, 4, 5\)"):
        _model(cells=3).loss(features, captions)
    with pytest.raises(ValueError, match="num_cells"):
        _model(cells=0)
    with pytest.raises(ValueError, match=r"square grid of s\*s cells .*got \(3, 6, 5\)"):
        _model(locations=True).loss(np.zeros((3, 6, 5)), captions)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = np.random.get_state()  # noqa: NPY002 (the global generator is what is checked)
    a, b = _model(seed=5), _model(seed=5)
    after = np.random.get_state()  # noqa: NPY002
    assert list(a.params) == [k for k in PARAM_NAMES if k != "W_pos" and "_loc_" not in k]
    assert list(_model(seed=5, cells=4, locations=True).params) == list(PARAM_NAMES)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]


# ------------------------------------------------------------------ learning


def test_overfits_50_captions_of_random_grids():
    """A small model drives the word loss of 50 captions over random 3x3 grids near zero."""
    rng = np.random.default_rng(231)
    N, L, D, T, V = 50, 9, 32, 12, 40
    features = rng.standard_normal((N, L, D)).astype(np.float32)
    captions = make_captions(rng, N, T, V)
    model = AttentionCaptioner(
        make_vocab(V), input_dim=D, wordvec_dim=32, hidden_dim=64, attention_dim=32,
        seed=0, attention_penalty=0.0,
    )  # fmt: skip
    configs = {k: {"learning_rate": 1e-2} for k in model.params}
    history = []
    with threadpool_limits(1):  # the machines are shared: one BLAS thread is fastest
        for _ in range(300):
            loss, grads = model.loss(features, captions)
            history.append(loss)
            for k in model.params:
                model.params[k], configs[k] = nn.optim.adam(model.params[k], grads[k], configs[k])
    assert history[0] > 20
    assert history[-1] < 0.1, history[-10:]


@pytest.mark.parametrize(("lam", "locations", "hold"), [(0.0, False, False), (1.5, True, False),
                                                       (0.0, True, True)])  # fmt: skip
def test_captions_of_different_lengths_run_packed_with_the_same_loss_and_gradients(
    lam, locations, hold, monkeypatch
):
    """The loss sorts captions longest first and runs each step on the rows still running
    (up to the last counted word, or the last word with the penalty on); loss, every
    gradient and the features' (in the caller's order) equal every row running every step."""
    from captionlab import nn

    model = _model(scale=0.4, lam=lam, locations=locations)
    rng = np.random.default_rng(8)
    features = rng.standard_normal((7, 4, 5))
    captions = make_captions(rng, 7, 9, 9)
    mask = captions[:, 1:] != 0
    mask[2] = False
    mask[2, 0] = True  # one word counted early in a caption: it runs one step (no penalty)
    lengths = (captions[:, 1:] != 0).sum(axis=1)
    assert np.any(np.diff(lengths) > 0) and len(set(lengths)) > 2
    counted = []
    real_lengths = nn.Lengths

    def spy(lengths, N, T):
        counted.append(real_lengths(lengths, N, T).counts)
        return counted[-1]

    class Packed:
        def __init__(self, lengths, N, T):
            self.counts = spy(lengths, N, T)

    class Full:
        def __init__(self, lengths, N, T):
            self.counts = np.full(T, N)

    def run():
        return model.loss(features, captions, mask=mask, feature_grad=True, hold_attention=hold)

    monkeypatch.setattr(nn, "Lengths", Packed)
    loss, grads = run()
    assert counted[-1][0] == 7 and counted[-1][-1] < 7  # rows did drop out
    assert (counted[-1][1] == 6) == (lam == 0)  # caption 2 stops after one step only then
    monkeypatch.setattr(nn, "Lengths", Full)
    ref_loss, ref = run()
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)
