"""The fused numba kernels equal the NumPy reference kernels, for every layer and dtype.

"Equal" is the issue's: 1e-6 relative in float32, 1e-12 in float64, element by element with
the absolute floor set by the largest magnitude of the reference array (near-zero elements
of a sum cannot keep a relative error of their own). Both a small shape (the kernels run on
one thread) and one above ``kernels.PARALLEL_MIN_WORK`` (they run on all threads) are
checked, with a hidden size that is not a multiple of the vector width.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from captionlab import nn
from captionlab.nn import kernels

numba = pytest.importorskip("numba")

TOL = {np.float32: 1e-6, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# (N, T, D, H): one step's work is below PARALLEL_MIN_WORK, then above it for every layer.
SHAPES = [(3, 4, 5, 7), (48, 5, 20, 349)]


def _assert_equal(fast, ref, dtype, what=""):
    assert len(fast) == len(ref)
    tol = TOL[dtype]
    for k, (a, r) in enumerate(zip(fast, ref, strict=True)):
        a, r = np.asarray(a), np.asarray(r)
        assert a.dtype == r.dtype == dtype, (what, k, a.dtype, r.dtype)
        assert a.shape == r.shape, (what, k)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol * scale, err_msg=f"{what} {k}")


def _both(fn):
    """fn() under the NumPy kernels, then under the numba kernels."""
    with nn.use_kernels("numpy"):
        ref = fn()
    with nn.use_kernels("numba"):
        assert nn.kernels_in_use() == "numba"
        fast = fn()
    return fast, ref


def _seq_args(layer, shape, dtype, seed=0):
    N, T, D, H = shape
    G = GATES[layer]
    rng = np.random.default_rng(seed)
    args = [
        rng.standard_normal((N, T, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((D, G * H)) / np.sqrt(D),
        rng.standard_normal((H, G * H)) / np.sqrt(H),
        rng.standard_normal(G * H) * 0.5,
    ]
    if layer == "gru":
        args.append(rng.standard_normal(G * H) * 0.5)
    dh = rng.standard_normal((N, T, H))
    return [a.astype(dtype) for a in args], dh.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_sequence_forward_and_backward(layer, shape, dtype):
    args, dh = _seq_args(layer, shape, dtype)
    fwd, bwd = getattr(nn, f"{layer}_forward"), getattr(nn, f"{layer}_backward")

    def run():
        h, cache = fwd(*args)
        return [h, *bwd(dh, cache)]

    fast, ref = _both(run)
    _assert_equal(fast, ref, dtype, f"{layer}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_recurrence_functions_equal_the_sequence_layers(layer, dtype):
    """``*_recurrence_*`` on ``x @ Wx`` are the sequence layers after their input GEMM."""
    args, dh = _seq_args(layer, SHAPES[1], dtype, seed=1)
    x, h0, Wx, Wh, b, *bh = args
    h, cache = getattr(nn, f"{layer}_forward")(*args)
    dx, dh0, _, dWh, db, *dbh = getattr(nn, f"{layer}_backward")(dh, cache)
    xa = x @ Wx
    xa_before = xa.copy()
    h2, cache2 = getattr(nn, f"{layer}_recurrence_forward")(xa, h0, Wh, b, *bh)
    np.testing.assert_array_equal(xa, xa_before)  # the input is left as found
    dxa, dh02, dWh2, db2, *dbh2 = getattr(nn, f"{layer}_recurrence_backward")(dh, cache2)
    tol = TOL[dtype]
    for a, r in [(h2, h), (dh02, dh0), (dWh2, dWh), (db2, db), *zip(dbh2, dbh, strict=True)]:
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol * np.max(np.abs(r)))
    np.testing.assert_allclose(dxa @ Wx.T, dx, rtol=tol, atol=tol * np.max(np.abs(dx)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_step_layers_forward_and_backward(shape, dtype):
    N, _, D, H = shape
    rng = np.random.default_rng(2)
    x, h, c = (rng.standard_normal(s).astype(dtype) for s in [(N, D), (N, H), (N, H)])
    dn_h, dn_c = (rng.standard_normal((N, H)).astype(dtype) for _ in range(2))

    def w(G):
        return [
            (rng.standard_normal((D, G * H)) / np.sqrt(D)).astype(dtype),
            (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype),
            rng.standard_normal(G * H).astype(dtype),
        ]

    Wr, Wl, Wg = w(1), w(4), w(3)
    bh = rng.standard_normal(3 * H).astype(dtype)

    def rnn():
        nh, cache = nn.rnn_step_forward(x, h, *Wr)
        return [nh, *nn.rnn_step_backward(dn_h, cache)]

    def lstm():
        nh, nc, cache = nn.lstm_step_forward(x, h, c, *Wl)
        return [nh, nc, *nn.lstm_step_backward(dn_h, dn_c, cache)]

    def gru():
        nh, cache = nn.gru_step_forward(x, h, *Wg, bh)
        return [nh, *nn.gru_step_backward(dn_h, cache)]

    def cells():
        xa = rng.standard_normal((N, 4 * H)).astype(dtype)
        _, _, gates = nn.lstm_cell_forward(xa, h, c, Wl[1])
        _, (r, z, n, ha_n) = nn.gru_cell_forward(xa[:, : 3 * H], h, Wg[1], bh)
        return [nn.rnn_cell_forward(xa[:, :H], h, Wr[1]), *gates, r, z, n, ha_n]

    for name, fn in [("rnn", rnn), ("lstm", lstm), ("gru", gru)]:
        fast, ref = _both(fn)
        _assert_equal(fast, ref, dtype, name)
    rng_state = rng.bit_generator.state
    with nn.use_kernels("numpy"):
        ref = cells()
    rng.bit_generator.state = rng_state  # the same xa again
    with nn.use_kernels("numba"):
        fast = cells()
    _assert_equal(fast, ref, dtype, "cells")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,V", [(5, 7), (300, 1004)])
def test_softmax_loss_and_embedding_scatter(M, V, dtype):
    rng = np.random.default_rng(3)
    N, T = 4, M
    x = (rng.standard_normal((N, T, V)) * 3).astype(dtype)
    y = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) < 0.7
    fast, ref = _both(lambda: nn.temporal_softmax_loss(x, y, mask))
    assert fast[0] == pytest.approx(ref[0], rel=TOL[dtype])
    _assert_equal([fast[1]], [ref[1]], dtype, "dx")
    # against the definition
    logp = x - x.max(axis=-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    want = -np.sum(mask * np.take_along_axis(logp, y[..., None], -1)[..., 0]) / N
    assert fast[0] == pytest.approx(want, rel=10 * TOL[dtype])

    words = rng.integers(0, 9, size=(N, T))  # many repeats: the scatter must sum them
    W = rng.standard_normal((9, V)).astype(dtype)
    dout = rng.standard_normal((N, T, V)).astype(dtype)
    _, cache = nn.word_embedding_forward(words, W)
    fast, ref = _both(lambda: [nn.word_embedding_backward(dout, cache)])
    _assert_equal(fast, ref, dtype, "dW_embed")
    want = np.zeros_like(W)
    for n in range(N):
        for t in range(T):
            want[words[n, t]] += dout[n, t]
    np.testing.assert_allclose(fast[0], want, rtol=TOL[dtype], atol=TOL[dtype] * 10 * T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("R", "C", "k"), [(5, 7, 3), (3, 4, 4), (128, 5020, 5), (40, 50, 10)])
def test_topk_rows_picks_the_k_best_ties_to_the_lower_column(R, C, k, dtype):
    """Beam search's choice: the k best columns of every row, best first, equal scores in
    column order, -inf allowed (finished beams); both kernel sets, exactly."""
    rng = np.random.default_rng(R + C)
    total = rng.standard_normal((R, C)).astype(dtype)
    total[:, ::3] = np.round(total[:, ::3], 1)  # many ties
    total[0, : C // 2] = -np.inf
    total[-1] = 0.5  # a row of one value: columns 0..k-1
    picks = []
    for name in ("numpy", "numba"):
        out = np.full((R, k), -1, dtype=np.intp)
        with nn.use_kernels(name):
            kernels.active().topk_rows(total, out)
        picks.append(out)
    np.testing.assert_array_equal(picks[1], picks[0])
    want = np.array([sorted(range(C), key=lambda j, r=r: (-total[r, j], j))[:k] for r in range(R)])
    np.testing.assert_array_equal(picks[0], want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_matches_numpy_everywhere(dtype):
    """The kernels' own exp: ~1 ulp, inf/0 where np.exp overflows/underflows, NaN kept."""
    from numba import njit

    from captionlab.nn.kernels_numba import fast_exp

    @njit
    def exp_all(a, out):
        for j in range(a.shape[0]):
            out[j] = fast_exp(a[j])

    lo, hi = (-110.0, 95.0) if dtype == np.float32 else (-760.0, 720.0)
    a = np.concatenate(
        [np.linspace(lo, hi, 200_001), np.random.default_rng(4).standard_normal(10_000) * 5]
    ).astype(dtype)
    a = np.concatenate([a, np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)])
    out = np.empty_like(a)
    exp_all(a, out)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(a)
    normal = np.isfinite(want) & (want >= np.finfo(dtype).tiny)
    rel = np.abs(out[normal] - want[normal]) / want[normal]
    assert rel.max() < 3 * np.finfo(dtype).eps
    np.testing.assert_array_equal(out[np.isinf(want)], want[np.isinf(want)])
    np.testing.assert_array_equal(out[want == 0], 0)
    assert np.isnan(out[np.isnan(a)]).all()
    subnormal = (want > 0) & (want < np.finfo(dtype).tiny)
    np.testing.assert_allclose(out[subnormal], want[subnormal], rtol=0.01, atol=0)


@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_saturated_gates_give_finite_results_without_warnings(layer):
    args, dh = _seq_args(layer, SHAPES[1], np.float32, seed=5)
    args[2] *= 1e4  # pre-activations of +-1e4: every exp overflows or underflows
    # (underflow is benign: gradients through saturated gates are tiny)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        h, cache = getattr(nn, f"{layer}_forward")(*args)
        grads = getattr(nn, f"{layer}_backward")(dh, cache)
    assert np.all(np.abs(h) <= max(1, np.abs(args[1]).max()))  # convex mixes of h0 and tanh
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_switch_sets_restores_and_rejects_unknown_names():
    before = nn.kernels_in_use()
    with nn.use_kernels("numpy"):
        assert nn.kernels_in_use() == "numpy"
        with nn.use_kernels("numba"):
            assert nn.kernels_in_use() == "numba"
        assert nn.kernels_in_use() == "numpy"
    assert nn.kernels_in_use() == before
    with pytest.raises(ValueError, match="numba"):
        nn.set_kernels("cuda")
    assert set(kernels.KERNEL_NAMES) == set(vars(kernels.active()))


def test_import_compiles_nothing_and_the_env_var_selects_numpy():
    code = (
        "import sys, captionlab, captionlab.nn, captionlab.captioning\n"
        "assert 'numba' not in sys.modules, 'numba imported at import time'\n"
        "from captionlab import nn\n"
        "print(nn.kernels_in_use())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV_VAR}
    for value, want in [(None, "numba"), ("numpy", "numpy"), ("NumPy ", "numpy")]:
        if value is not None:
            env[kernels.ENV_VAR] = value
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        assert out.stdout.strip() == want


def test_a_kernel_that_fails_to_compile_falls_back_to_numpy_with_one_warning():
    from numba.core.errors import TypingError

    switch = kernels._KernelSwitch("numba")
    calls = []

    def broken(*args):
        calls.append(1)
        raise TypingError("cannot type this")

    ref = kernels.rnn_cell
    guarded = switch._guarded(broken, ref, TypingError, 0, numba)
    a = np.linspace(-2, 2, 12).reshape(3, 4)
    with pytest.warns(RuntimeWarning, match="NumPy kernels"):
        guarded(a)
    np.testing.assert_allclose(a, np.tanh(np.linspace(-2, 2, 12).reshape(3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        guarded(np.zeros((2, 2)))
    assert calls == [1] and switch.failed and switch.active() is switch.numpy


def test_missing_numba_falls_back_to_numpy_with_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" now raises ImportError
    switch = kernels._KernelSwitch("numba")
    with pytest.warns(RuntimeWarning, match="numba kernels are unavailable"):
        ns = switch.active()
    assert ns is switch.numpy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert switch.active() is switch.numpy
