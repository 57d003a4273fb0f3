"""Fused element-wise kernels for the recurrent layers, compiled with numba.

Not imported by ``import captionlab``: :mod:`captionlab.nn.kernels` imports this module the
first time a layer asks for the ``"numba"`` kernels, and numba compiles each kernel on its
first call for a dtype and caches the machine code on disk (``cache=True``: in the
``__pycache__`` folder next to this file, or numba's per-user cache folder when that one is
read-only), so later processes load it in milliseconds.

Every kernel here has a NumPy twin of the same name and signature in
:mod:`captionlab.nn.kernels` (the readable reference; the tests hold the two equal). Each does
one step's gate arithmetic in **one pass over memory**, in place in the layer's buffers, split
over the cores by rows of the batch (``prange``); the backward kernels sum their bias
gradients per block of rows and add the blocks at the end, so no two threads write one
element. Within a row the work is a few short loops over the row's gate columns, which stay
in the core's L1 cache between loops (still one pass over main memory); each loop writes one
array, so that LLVM, which cannot prove that numba's arrays do not overlap, can check the
overlap cheaply at run time and vectorise the loop. For the same reason a kernel takes the
layer's whole batch-major, C-contiguous ``(N, T, G*H)`` buffer and the step ``t`` and loops
over 1-D row views from index 0 (a strided ``(N, H)`` slice, or a loop starting at a
run-time offset, does not vectorise).

``exp`` is written out (Cephes' ``expf`` and ``exp``: range reduction by ``n ln 2``, a
polynomial or rational approximation, scaling by ``2**n`` built in the exponent bits) so that
the loops vectorise; libm's scalar ``exp`` would not. Its error is about one ulp, like
NumPy's, and it overflows to ``inf`` and underflows to ``0`` where ``np.exp`` does, and
propagates NaN. ``sigmoid(a) = 1 / (1 + exp(-a))`` and ``tanh(a) = 2 sigmoid(2a) - 1`` in the
layer's dtype, written in the same order of operations as the NumPy twins; the kernels are
compiled without fastmath, so the only differences from NumPy are ``exp``'s last bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

#: Blocks of rows (columns for the scatter) a reduction is split into: at least the number
#: of threads, so that every core gets work (prange deals the blocks out).
BLOCKS = 32

_OPT = {"cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}

# Cephes expf (float32) and exp (float64) constants.
_F32 = np.float32
_LO32, _HI32 = _F32(-104.0), _F32(89.0)  # beyond these expf is 0 or inf
_LOG2E32, _MAGIC32 = _F32(1.44269504088896341), _F32(12582912.0)  # 1.5 * 2**23
_C1_32, _C2_32 = _F32(0.693359375), _F32(-2.12194440e-4)
_P32 = tuple(
    _F32(v)
    for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
              1.6666665459e-1, 5.0000001201e-1)
)  # fmt: skip
_LO64, _HI64 = -746.0, 710.0
_LOG2E64, _MAGIC64 = 1.4426950408889634, 6755399441055744.0  # 1.5 * 2**52
_C1_64, _C2_64 = 6.93145751953125e-1, 1.42860682030941723212e-6
_P64 = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_Q64 = (
    3.00198505138664455042e-6,
    2.52448340349684104192e-3,
    2.27265548208155028766e-1,
    2.00000000000000000009e0,
)


def fast_exp(x):
    """``exp(x)`` for a float32 or float64 scalar inside a numba kernel (vectorisable)."""
    return np.exp(x)


def _exp32(x):
    x = _LO32 if x < _LO32 else x  # comparisons are False for NaN: NaN stays NaN
    x = _HI32 if x > _HI32 else x
    n = (x * _LOG2E32 + _MAGIC32) - _MAGIC32  # round(x / ln 2)
    r = x - n * _C1_32
    r = r - n * _C2_32
    p = _P32[0]
    p = p * r + _P32[1]
    p = p * r + _P32[2]
    p = p * r + _P32[3]
    p = p * r + _P32[4]
    p = p * r + _P32[5]
    p = p * r * r + r + _F32(1.0)
    k = np.int32(n)
    k1 = k >> 1  # 2**n as 2**k1 * 2**(n - k1): both factors stay normal numbers
    s1 = np.int32((k1 + 127) << 23).view(np.float32)
    s2 = np.int32((k - k1 + 127) << 23).view(np.float32)
    return p * s1 * s2


def _exp64(x):
    x = _LO64 if x < _LO64 else x
    x = _HI64 if x > _HI64 else x
    n = (x * _LOG2E64 + _MAGIC64) - _MAGIC64
    r = x - n * _C1_64
    r = r - n * _C2_64
    rr = r * r
    px = r * ((_P64[0] * rr + _P64[1]) * rr + _P64[2])
    q = ((_Q64[0] * rr + _Q64[1]) * rr + _Q64[2]) * rr + _Q64[3]
    e = 1.0 + 2.0 * (px / (q - px))
    k = np.int64(n)
    k1 = k >> 1
    s1 = np.int64((k1 + 1023) << 52).view(np.float64)
    s2 = np.int64((k - k1 + 1023) << 52).view(np.float64)
    return e * s1 * s2


@overload(fast_exp)
def _fast_exp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return None


# ------------------------------------------------------------------------------ RNN
@njit(parallel=True, **_OPT)
def rnn_forward_step(xa, hw, b, h, hprev, t):
    """``h[:, t] = tanh(xa[:, t] + hw + b)``; also into ``hprev[:, t + 1]`` if ``t + 1 < T``.

    xa (N, T, H) input projections, hw (N, H) ``h_{t-1} @ Wh``, b (H,), h and hprev (N, T, H).
    """
    N, T, H = h.shape
    one, two = h.dtype.type(1), h.dtype.type(2)
    for n in prange(N):
        x, w, hr = xa[n, t], hw[n], h[n, t]
        for j in range(H):
            hr[j] = (one / (one + fast_exp(((x[j] + w[j]) + b[j]) * -two))) * two - one
        if t + 1 < T:
            hprev[n, t + 1] = hr


@njit(parallel=True, **_OPT)
def rnn_backward_step(dh, dhw, h, da, db, t):
    """``da[:, t] = (dh[:, t] + dhw) * (1 - h[:, t]**2)``; ``db += sum_n da[:, t]``.

    dh, h, da (N, T, H); dhw (N, H) the gradient from step t + 1; db (H,).
    """
    N, H = h.shape[0], h.shape[2]
    one = h.dtype.type(1)
    blocks = min(N, BLOCKS)
    partial = np.zeros((blocks, H), dtype=db.dtype)
    for p in prange(blocks):
        acc = partial[p]
        for n in range(p * N // blocks, (p + 1) * N // blocks):
            d, g, w, hr = da[n, t], dh[n, t], dhw[n], h[n, t]
            for j in range(H):
                d[j] = (g[j] + w[j]) * (one - hr[j] * hr[j])
            for j in range(H):
                acc[j] += d[j]
    _add_rows(partial, db)


@njit(parallel=True, **_OPT)
def rnn_cell(a):
    """In place: ``a`` (N, H) pre-activations -> ``tanh(a)``."""
    N, H = a.shape
    one, two = a.dtype.type(1), a.dtype.type(2)
    for n in prange(N):
        r = a[n]
        for j in range(H):
            r[j] = (one / (one + fast_exp(r[j] * -two))) * two - one


# ----------------------------------------------------------------------------- LSTM
@njit(**_OPT)
def _lstm_row(g, w, b, cp, cn, tc, hr):
    """One row of an LSTM step: g (4H,) pre-activations (less ``w + b``) -> i, f, o, g;
    cp (H,) c_{t-1}; writes cn = c_t, tc = tanh(c_t), hr = h_t."""
    H = cp.shape[0]
    one, two = g.dtype.type(1), g.dtype.type(2)
    for j in range(3 * H):
        g[j] = one / (one + fast_exp(-((g[j] + w[j]) + b[j])))
    gg, wg, bg = g[3 * H :], w[3 * H :], b[3 * H :]
    for j in range(H):
        gg[j] = (one / (one + fast_exp(((gg[j] + wg[j]) + bg[j]) * -two))) * two - one
    i, f, o = g[:H], g[H : 2 * H], g[2 * H : 3 * H]
    for j in range(H):
        cn[j] = f[j] * cp[j] + i[j] * gg[j]
    for j in range(H):
        tc[j] = (one / (one + fast_exp(cn[j] * -two))) * two - one
    for j in range(H):
        hr[j] = o[j] * tc[j]


@njit(parallel=True, **_OPT)
def lstm_forward_step(gates, hw, b, c, tanh_c, h, hprev, t):
    """One LSTM step after the GEMMs (gates i, f, o, g).

    gates (N, T, 4H): in, ``x_t @ Wx``; out, the activations i, f, o, g. hw (N, 4H)
    ``h_{t-1} @ Wh``; b (4H,). c (N, T+1, H) with ``c[:, t]`` = c_{t-1} read and
    ``c[:, t+1]`` = c_t written. tanh_c, h (N, T, H) written at t; hprev (N, T, H) gets h_t
    at t + 1 if ``t + 1 < T``.
    """
    N, T = h.shape[0], h.shape[1]
    for n in prange(N):
        _lstm_row(gates[n, t], hw[n], b, c[n, t], c[n, t + 1], tanh_c[n, t], h[n, t])
        if t + 1 < T:
            hprev[n, t + 1] = h[n, t]


@njit(parallel=True, **_OPT)
def lstm_cell(a, prev_c, next_c, tanh_c, next_h):
    """In place: a (N, 4H) pre-activations -> gates i, f, o, g; writes next_c, tanh_c, next_h."""
    N = a.shape[0]
    zero = np.zeros(a.shape[1], dtype=a.dtype)
    for n in prange(N):
        _lstm_row(a[n], zero, zero, prev_c[n], next_c[n], tanh_c[n], next_h[n])


@njit(parallel=True, **_OPT)
def lstm_backward_step(dh, dhw, dc, gates, c, tanh_c, da, db, t):
    """One LSTM backward step before the GEMMs.

    dh (N, T, H) upstream; dhw (N, H) ``da_{t+1} @ Wh.T``; dc (N, H) the gradient of c_t,
    updated to that of c_{t-1}; gates (N, T, 4H) i, f, o, g; c (N, T+1, H) (``c[:, t]`` is
    c_{t-1}); tanh_c (N, T, H); da (N, T, 4H) written at t; db (4H,) accumulated.
    """
    N, H = tanh_c.shape[0], tanh_c.shape[2]
    one = dh.dtype.type(1)
    blocks = min(N, BLOCKS)
    partial = np.zeros((blocks, 4 * H), dtype=db.dtype)
    for p in prange(blocks):
        acc = partial[p]
        for n in range(p * N // blocks, (p + 1) * N // blocks):
            g, tc, cp, dhn, w, dcn, d = (
                gates[n, t],
                tanh_c[n, t],
                c[n, t],
                dh[n, t],
                dhw[n],
                dc[n],
                da[n, t],
            )
            i, f, o, gg = g[:H], g[H : 2 * H], g[2 * H : 3 * H], g[3 * H :]
            di, df, do, dg = d[:H], d[H : 2 * H], d[2 * H : 3 * H], d[3 * H :]
            for j in range(H):  # dc_t += dh_t * o * (1 - tanh(c_t)^2)
                dcn[j] = dcn[j] + ((one - tc[j] * tc[j]) * o[j]) * (dhn[j] + w[j])
            for j in range(H):
                do[j] = ((dhn[j] + w[j]) * tc[j]) * ((one - o[j]) * o[j])
            for j in range(H):
                di[j] = (dcn[j] * gg[j]) * ((one - i[j]) * i[j])
            for j in range(H):
                df[j] = (dcn[j] * cp[j]) * ((one - f[j]) * f[j])
            for j in range(H):
                dg[j] = dcn[j] * ((one - gg[j] * gg[j]) * i[j])
            for j in range(H):
                dcn[j] = dcn[j] * f[j]
            for j in range(4 * H):
                acc[j] += d[j]
    _add_rows(partial, db)


# ------------------------------------------------------------------------------ GRU
@njit(**_OPT)
def _gru_row(g, ha, hp, hr):
    """One row of a GRU step, in place: g (3H,) ``x_t Wx + b`` -> gates r, z, n; ha (3H,)
    ``h_{t-1} Wh + bh``, hp (H,) h_{t-1}; writes hr (H,) h_t.

    In place on purpose: with the input in a second array that is the same memory as ``g``
    (the sequence step's case), LLVM's run-time overlap check fails and the loops run
    scalar, 4x slower (measured, float32, N=128, H=512)."""
    H = hp.shape[0]
    one, two = hr.dtype.type(1), hr.dtype.type(2)
    for j in range(2 * H):
        g[j] = one / (one + fast_exp(-(g[j] + ha[j])))
    r, z, gn, hn = g[:H], g[H : 2 * H], g[2 * H :], ha[2 * H :]
    for j in range(H):
        gn[j] = (one / (one + fast_exp((gn[j] + r[j] * hn[j]) * -two))) * two - one
    for j in range(H):
        hr[j] = (hp[j] - gn[j]) * z[j] + gn[j]


@njit(parallel=True, **_OPT)
def gru_forward_step(gates, hw, b, bh, ha_n, h, hprev, t):
    """One GRU step after the GEMMs (gates r, z, n).

    gates (N, T, 3H): in, ``x_t @ Wx``; out, r, z, n. hw (N, 3H) ``h_{t-1} @ Wh``; b, bh
    (3H,). ha_n (N, T, H) gets ``h_{t-1} @ Wh_n + bh_n``. hprev (N, T, H): ``hprev[:, t]`` is
    h_{t-1}; h_t goes to ``h[:, t]`` and, if ``t + 1 < T``, to ``hprev[:, t+1]``.
    """
    N, T, H = h.shape
    for n in prange(N):
        g, w = gates[n, t], hw[n]
        for j in range(3 * H):
            g[j] = g[j] + b[j]
        for j in range(3 * H):
            w[j] = w[j] + bh[j]
        ha_n[n, t] = w[2 * H :]
        _gru_row(g, w, hprev[n, t], h[n, t])
        if t + 1 < T:
            hprev[n, t + 1] = h[n, t]


@njit(parallel=True, **_OPT)
def gru_cell(xa, ha, prev_h, gates, next_h):
    """xa, ha (N, 3H) input and recurrent pre-activations (ha includes bh), prev_h (N, H)
    -> gates (N, 3H) r, z, n and next_h (N, H)."""
    G = xa.shape[1]
    for n in prange(xa.shape[0]):
        g, x = gates[n], xa[n]
        for j in range(G):
            g[j] = x[j]
        _gru_row(g, ha[n], prev_h[n], next_h[n])


@njit(parallel=True, **_OPT)
def gru_backward_step(dh, dhw, carry, gates, ha_n, hprev, dxa, dha, db, dbh, t):
    """One GRU backward step before the GEMM.

    dh (N, T, H) upstream; dhw (N, H) ``dha_{t+1} @ Wh.T`` and carry (N, H)
    ``dh_{t+1} * z_{t+1}`` (their sum is the gradient reaching h_t from step t + 1; carry is
    updated to this step's ``dh_t * z_t``). gates (N, T, 3H) r, z, n; ha_n, hprev (N, T, H).
    dxa, dha (N, T, 3H) written at t; db, dbh (3H,) accumulated.
    """
    N, H = ha_n.shape[0], ha_n.shape[2]
    one = dh.dtype.type(1)
    blocks = min(N, BLOCKS)
    partial = np.zeros((blocks, 2, 3 * H), dtype=db.dtype)
    for p in prange(blocks):
        acc, acch = partial[p, 0], partial[p, 1]
        for n in range(p * N // blocks, (p + 1) * N // blocks):
            g, an, hp, dhn, w, cr, dx, dhr = (
                gates[n, t], ha_n[n, t], hprev[n, t], dh[n, t], dhw[n], carry[n],
                dxa[n, t], dha[n, t],
            )  # fmt: skip
            r, z, nv = g[:H], g[H : 2 * H], g[2 * H :]
            dr, dz, dn = dx[:H], dx[H : 2 * H], dx[2 * H :]
            for j in range(H):  # the total gradient of h_t, kept in carry for now
                cr[j] = dhn[j] + (w[j] + cr[j])
            for j in range(H):
                dz[j] = ((hp[j] - nv[j]) * cr[j]) * ((one - z[j]) * z[j])
            for j in range(H):
                dn[j] = ((one - z[j]) * cr[j]) * (one - nv[j] * nv[j])
            for j in range(H):
                dr[j] = (dn[j] * an[j]) * ((one - r[j]) * r[j])
            for j in range(2 * H):
                dhr[j] = dx[j]
            dhn_ = dhr[2 * H :]
            for j in range(H):
                dhn_[j] = dn[j] * r[j]
            for j in range(H):
                cr[j] = cr[j] * z[j]
            for j in range(3 * H):
                acc[j] += dx[j]
            for j in range(3 * H):
                acch[j] += dhr[j]
    _add_rows(partial[:, 0], db)
    _add_rows(partial[:, 1], dbh)


# ------------------------------------------------------------------- loss, embedding
@njit(**_OPT)
def _add_rows(partial, out):
    """``out += partial.sum(axis=0)``, rows in order: partial (B, K), out (K,)."""
    for p in range(partial.shape[0]):
        row = partial[p]
        for j in range(out.shape[0]):
            out[j] += row[j]


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _row_sum(a):
    """Sum of a 1-D array in float64 (reassociated, so that it vectorises)."""
    s = 0.0
    for v in range(a.shape[0]):
        s += a[v]
    return s


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz", "nnan"})
def _row_max(a):
    """Largest element of a non-empty 1-D array (vectorised; NaN handled by the caller)."""
    m = a[0]
    for v in range(a.shape[0]):
        m = a[v] if a[v] > m else m
    return m


@njit(parallel=True, **_OPT)
def softmax_cross_entropy(x, y, weight, dx):
    """Rows of scores x (M, V), targets y (M,), weights (M,) -> loss, and dx (M, V).

    ``loss = sum_m weight[m] * (logsumexp(x[m]) - x[m, y[m]])`` (sums in float64),
    ``dx[m] = weight[m] * (softmax(x[m]) - onehot(y[m]))``; dx may be x.
    """
    M = x.shape[0]
    losses = np.zeros(M)
    for m in prange(M):
        xr, dr = x[m], dx[m]
        mx = _row_max(xr)
        xy = xr[y[m]]  # read before dx (which may be x) overwrites it
        for v in range(xr.shape[0]):
            dr[v] = fast_exp(xr[v] - mx)
        s = _row_sum(dr)
        w = weight[m]
        losses[m] = w * (np.log(s) + (mx - xy))
        scale = dr.dtype.type(w / s)
        for v in range(dr.shape[0]):
            dr[v] = dr[v] * scale
        dr[y[m]] -= w
    return losses.sum()


@njit(parallel=True, **_OPT)
def scatter_add_rows(idx, src, out):
    """``out[idx[r]] += src[r]`` for every row r, duplicates summed: idx (R,), src (R, W),
    out (V, W). Parallel over blocks of columns, so no two threads touch one element."""
    R, W = src.shape
    blocks = min(W, BLOCKS)
    for p in prange(blocks):
        j0, j1 = p * W // blocks, (p + 1) * W // blocks
        for r in range(R):
            o, s = out[idx[r], j0:j1], src[r, j0:j1]
            for j in range(o.shape[0]):
                o[j] += s[j]


@njit(parallel=True, **_OPT)
def topk_rows(total, out):
    """The k = out.shape[1] largest entries' columns of each row of total (R, C), best
    first, ties to the lower column: one pass per row keeping the k best in order (k is a
    beam's width, so most entries cost one comparison)."""
    R, C = total.shape
    k = out.shape[1]
    for r in prange(R):
        row, best = total[r], out[r]
        vals = np.empty(k, dtype=total.dtype)
        n = 0
        for j in range(C):
            v = row[j]
            if n == k and not v > vals[k - 1]:
                continue
            i = n if n < k else k - 1  # the slot it takes, then bubble it up
            while i > 0 and v > vals[i - 1]:  # strictly: an equal earlier column stays first
                vals[i] = vals[i - 1]
                best[i] = best[i - 1]
                i -= 1
            vals[i] = v
            best[i] = j
            if n < k:
                n += 1
