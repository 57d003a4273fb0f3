"""Additive attention: gradient checks, negative control, torch reference, dtypes, values, mask."""

import numpy as np
import pytest

from captionlab import nn
from captionlab.nn import attention
from captionlab.nn.gradcheck import check_layers, eval_numerical_gradient_array, rel_error

NAMES = ["A", "A_proj", "h", "Wh", "b", "w"]
LAYERS = ["additive_attention", "additive_attn_mask"]


def lin(lo, hi, *shape):
    return np.linspace(lo, hi, num=int(np.prod(shape))).reshape(shape)


def _inputs(seed, N=3, L=5, D=4, H=6, K=7, dtype=np.float64):
    rng = np.random.default_rng(seed)
    # Scaled so that tanh(A_proj + h Wh + b) stays off saturation: saturated units give
    # gradients near zero, where finite differences have large relative error.
    A = rng.standard_normal((N, L, D))
    Wa = 0.5 * rng.standard_normal((D, K)) / np.sqrt(D)
    args = [
        A,
        A @ Wa,
        rng.standard_normal((N, H)),
        0.5 * rng.standard_normal((H, K)) / np.sqrt(H),
        0.1 * rng.standard_normal(K),
        rng.standard_normal(K),
    ]
    return [a.astype(dtype) for a in args]


def _mask(N=3, L=5):
    mask = np.ones((N, L), dtype=bool)
    mask[0, [0, 2]] = False
    mask[2, 1:] = False  # a single cell left
    return mask


# ------------------------------------------------------------------ gradient checks


@pytest.fixture(scope="module")
def results():
    return {(r.layer, r.parameter): r for r in check_layers(seed=0) if r.layer in LAYERS}


def test_gradcheck_lists_every_input_with_and_without_mask(results):
    assert sorted(results) == sorted((layer, p) for layer in LAYERS for p in NAMES)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("parameter", NAMES)
def test_backward_matches_finite_differences(results, layer, parameter):
    result = results[(layer, parameter)]
    assert result.tolerance == 1e-7
    assert result.rel_error < 1e-7, result


@pytest.mark.parametrize("masked", [False, True])
def test_backward_without_dalpha(masked):
    """dalpha=None: only the context's gradient flows (each input checked directly)."""
    args = _inputs(3)
    mask = _mask() if masked else None
    dz = np.random.default_rng(4).standard_normal((3, 4))
    _z, _alpha, cache = nn.additive_attention_forward(*args, mask=mask)
    grads = nn.additive_attention_backward(dz, None, cache)
    for k, (name, analytic) in enumerate(zip(NAMES, grads, strict=True)):

        def f(v, k=k):
            return nn.additive_attention_forward(
                *[v if i == k else a for i, a in enumerate(args)], mask=mask
            )[0]

        numeric = eval_numerical_gradient_array(f, args[k], dz)
        assert rel_error(numeric, analytic) < 1e-7, name


def test_checker_fails_on_a_wrong_backward(monkeypatch):
    """Negative control: a one-percent error in one entry of dw, and a backward that forgets
    the softmax's Jacobian, are both caught; the other inputs still pass."""
    real = attention.additive_attention_backward

    def wrong_dw(dz, dalpha, cache):
        dA, dA_proj, dh, dWh, db, dw = real(dz, dalpha, cache)
        dw = dw.copy()
        dw[0] *= 1.01
        return dA, dA_proj, dh, dWh, db, dw

    monkeypatch.setattr(attention, "additive_attention_backward", wrong_dw)
    res = {(r.layer, r.parameter): r for r in check_layers(seed=0) if r.layer in LAYERS}
    assert not res[("additive_attention", "w")].passed
    assert not res[("additive_attn_mask", "w")].passed
    assert res[("additive_attention", "Wh")].passed

    monkeypatch.setattr(attention, "masked_softmax_backward", lambda dp, p: dp * p)
    monkeypatch.setattr(attention, "additive_attention_backward", real)
    res = {(r.layer, r.parameter): r for r in check_layers(seed=0) if r.layer in LAYERS}
    assert not res[("additive_attention", "A_proj")].passed
    assert res[("additive_attention", "A")].passed  # dA does not go through the softmax


# ------------------------------------------------------------------ torch reference


@pytest.mark.parametrize("masked", [False, True])
def test_equals_torch_autograd_of_the_same_equations(masked):
    torch = pytest.importorskip("torch")
    args = _inputs(5)
    mask = _mask() if masked else None
    rng = np.random.default_rng(6)
    dz, dalpha = rng.standard_normal((3, 4)), rng.standard_normal((3, 5))
    z, alpha, cache = nn.additive_attention_forward(*args, mask=mask)
    grads = nn.additive_attention_backward(dz, dalpha, cache)

    A, A_proj, h, Wh, b, w = (torch.tensor(a, requires_grad=True) for a in args)
    e = torch.tanh(A_proj + (h @ Wh + b)[:, None, :]) @ w  # (N, L)
    if mask is not None:
        e = e.masked_fill(~torch.tensor(mask), float("-inf"))
    t_alpha = torch.softmax(e, dim=1)
    t_z = (t_alpha[:, :, None] * A).sum(dim=1)
    (t_z * torch.tensor(dz)).sum().add((t_alpha * torch.tensor(dalpha)).sum()).backward()

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

    close(z, t_z.detach().numpy())
    close(alpha, t_alpha.detach().numpy())
    for name, g, t in zip(NAMES, grads, (A, A_proj, h, Wh, b, w), strict=True):
        assert g.shape == tuple(t.shape), name
        close(g, t.grad.numpy())


# ------------------------------------------------------------------ values, dtypes, mask

ALPHA = np.array(
    [[0.2789069849, 0.3330443516, 0.3880486636], [0.2837317502, 0.3339292996, 0.3823389502]]
)
Z = np.array(
    [
        [-0.2492375335, -0.1927157944, -0.1361940552, -0.0796723161],
        [0.4266416278, 0.483163367, 0.5396851061, 0.5962068452],
    ]
)
ALPHA_MASKED_ROW = np.array([0.4259784285, 0.0, 0.5740215715])
Z_MASKED_ROW = np.array([0.4378184497, 0.4943401889, 0.550861928, 0.6073836671])


def test_forward_values():
    """Fixed inputs; expected values from a plain-Python loop over the equations."""
    N, L, D, H, K = 2, 3, 4, 3, 2
    A = lin(-0.5, 0.8, N, L, D)
    A_proj = A @ lin(-0.4, 0.6, D, K)
    args = (A, A_proj, lin(-0.3, 0.9, N, H), lin(-0.7, 0.2, H, K), lin(-0.1, 0.3, K))
    w = lin(-1.0, 1.5, K)
    z, alpha, _ = nn.additive_attention_forward(*args, w)
    assert rel_error(alpha, ALPHA) < 1e-8
    assert rel_error(z, Z) < 1e-8
    mask = np.array([[True, True, True], [True, False, True]])
    z, alpha, _ = nn.additive_attention_forward(*args, w, mask=mask)
    assert rel_error(alpha[0], ALPHA[0]) < 1e-8 and rel_error(z[0], Z[0]) < 1e-8
    assert rel_error(alpha[1], ALPHA_MASKED_ROW) < 1e-8
    assert rel_error(z[1], Z_MASKED_ROW) < 1e-8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_dtype(dtype):
    args = _inputs(7, dtype=dtype)
    z, alpha, cache = nn.additive_attention_forward(*args, mask=_mask())
    assert z.dtype == dtype and alpha.dtype == dtype
    grads = nn.additive_attention_backward(np.ones_like(z), np.ones_like(alpha), cache)
    assert [g.dtype for g in grads] == [dtype] * 6
    assert [g.shape for g in grads] == [a.shape for a in args]
    z64, _alpha64, _ = nn.additive_attention_forward(
        *[a.astype(np.float64) for a in args], mask=_mask()
    )
    assert rel_error(z, z64) < (1e-5 if dtype == np.float32 else 1e-12)


def test_masked_cells_get_exactly_zero():
    args = _inputs(8)
    mask = _mask()
    z, alpha, cache = nn.additive_attention_forward(*args, mask=mask)
    assert np.all(alpha[~mask] == 0.0)
    assert np.all(alpha[mask] > 0)
    np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-12)
    assert alpha[2, 0] == 1.0  # the only cell left
    # What a masked cell holds changes nothing, and it gets no gradient.
    A2, A_proj2 = args[0].copy(), args[1].copy()
    A2[~mask] = 1e6
    A_proj2[~mask] = -1e6
    z2, alpha2, _ = nn.additive_attention_forward(A2, A_proj2, *args[2:], mask=mask)
    np.testing.assert_array_equal(alpha2, alpha)
    np.testing.assert_allclose(z2, z, rtol=1e-14, atol=1e-15)
    dA, dA_proj, *_ = nn.additive_attention_backward(np.ones_like(z), np.ones_like(alpha), cache)
    assert np.all(dA[~mask] == 0.0) and np.all(dA_proj[~mask] == 0.0)


def test_masked_softmax_is_stable_and_masked():
    x = np.array([[1000.0, 1001.0, -1000.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    p = nn.masked_softmax(x)
    assert p.dtype == np.float32 and np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], nn.masked_softmax(x[0] - 1000.0), rtol=1e-6)
    np.testing.assert_allclose(p[1], 1 / 3, rtol=1e-6)
    m = np.array([[False, True, True], [True, True, True]])
    pm = nn.masked_softmax(x, m)
    assert pm[0, 0] == 0.0 and pm[0, 1] == pytest.approx(1.0, rel=1e-6)


def test_attention_over_no_cell_is_refused():
    rng = np.random.default_rng(0)
    N, L, D, H, K = 2, 3, 4, 5, 6
    mask = np.ones((N, L), dtype=bool)
    mask[1] = False
    with pytest.raises(ValueError, match="at least one cell"):
        nn.additive_attention_forward(
            rng.random((N, L, D)), rng.random((N, L, K)), rng.random((N, H)),
            rng.random((H, K)), rng.random(K), rng.random(K), mask=mask,
        )  # fmt: skip


def test_shape_errors_name_the_argument():
    A, A_proj, h, Wh, b, w = _inputs(9)
    with pytest.raises(ValueError, match="A_proj must have shape"):
        nn.additive_attention_forward(A, A_proj[:, :, :3], h, Wh, b, w)
    with pytest.raises(ValueError, match="h must have shape"):
        nn.additive_attention_forward(A, A_proj, h[:, :2], Wh, b, w)
    with pytest.raises(ValueError, match="w must have shape"):
        nn.additive_attention_forward(A, A_proj, h, Wh, b, w[:2])
    with pytest.raises(ValueError, match="mask must have shape"):
        nn.additive_attention_forward(A, A_proj, h, Wh, b, w, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="at least one cell"):
        nn.additive_attention_forward(A, A_proj, h, Wh, b, w, mask=np.zeros((3, 5), bool))
