"""Fused element-wise kernels for the recurrent layers, compiled with numba.

Not imported by ``import captionlab``: :mod:`captionlab.nn.kernels` imports this module the
first time a layer asks for the ``"numba"`` kernels, and numba compiles each kernel on its
first call for a dtype and caches the machine code on disk (``cache=True``: in the
``__pycache__`` folder next to this file, or numba's per-user cache folder when that one is
read-only), so later processes load it in milliseconds.

Every kernel here has a NumPy twin of the same name and signature in
:mod:`captionlab.nn.kernels` (the readable reference; the tests hold the two equal). Each does
one step's gate arithmetic in **one pass over memory**, in place in the layer's buffers,
split over the cores by hidden unit (``prange`` over chunks of :data:`CHUNK` units, each
thread owning all the gate columns of its units, so the bias gradients accumulate without
races). The buffers are batch-major and C-contiguous, ``(N, T, G*H)``, and a kernel takes
the whole buffer and the step ``t``: numba then knows the inner loop runs over contiguous
memory and vectorises it (a strided ``(N, H)`` slice would not vectorise).

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

#: Hidden units per parallel work item.
CHUNK = 64

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
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                a = (xa[n, t, j] + hw[n, j]) + b[j]
                v = (one / (one + fast_exp(a * -two))) * two - one
                h[n, t, j] = v
            if t + 1 < T:
                for j in range(j0, j1):
                    hprev[n, t + 1, j] = h[n, t, j]


@njit(parallel=True, **_OPT)
def rnn_backward_step(dh, dhw, h, da, db, t):
    """``da[:, t] = (dh[:, t] + dhw) * (1 - h[:, t]**2)``; ``db += sum_n da[:, t]``.

    dh, h, da (N, T, H); dhw (N, H) the gradient from step t + 1; db (H,).
    """
    N, H = h.shape[0], h.shape[2]
    one = h.dtype.type(1)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                hv = h[n, t, j]
                d = (dh[n, t, j] + dhw[n, j]) * (one - hv * hv)
                da[n, t, j] = d
                db[j] += d


@njit(parallel=True, **_OPT)
def rnn_cell(a):
    """In place: ``a`` (N, H) pre-activations -> ``tanh(a)``."""
    N, H = a.shape
    one, two = a.dtype.type(1), a.dtype.type(2)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                a[n, j] = (one / (one + fast_exp(a[n, j] * -two))) * two - one


# ----------------------------------------------------------------------------- LSTM
@njit(parallel=True, **_OPT)
def lstm_forward_step(gates, hw, b, c, tanh_c, h, hprev, t):
    """One LSTM step after the GEMMs (gates i, f, o, g).

    gates (N, T, 4H): in, ``x_t @ Wx``; out, the activations i, f, o, g. hw (N, 4H)
    ``h_{t-1} @ Wh``; b (4H,). c (N, T+1, H) with ``c[:, t]`` = c_{t-1} read and
    ``c[:, t+1]`` = c_t written. tanh_c, h (N, T, H) written at t; hprev (N, T, H) gets h_t
    at t + 1 if ``t + 1 < T``.
    """
    N, T, H = h.shape
    one, two = h.dtype.type(1), h.dtype.type(2)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                ai = (gates[n, t, j] + hw[n, j]) + b[j]
                af = (gates[n, t, H + j] + hw[n, H + j]) + b[H + j]
                ao = (gates[n, t, 2 * H + j] + hw[n, 2 * H + j]) + b[2 * H + j]
                ag = (gates[n, t, 3 * H + j] + hw[n, 3 * H + j]) + b[3 * H + j]
                i = one / (one + fast_exp(-ai))
                f = one / (one + fast_exp(-af))
                o = one / (one + fast_exp(-ao))
                g = (one / (one + fast_exp(ag * -two))) * two - one
                gates[n, t, j] = i
                gates[n, t, H + j] = f
                gates[n, t, 2 * H + j] = o
                gates[n, t, 3 * H + j] = g
                cc = f * c[n, t, j] + i * g
                c[n, t + 1, j] = cc
                tc = (one / (one + fast_exp(cc * -two))) * two - one
                tanh_c[n, t, j] = tc
                h[n, t, j] = o * tc
            if t + 1 < T:
                for j in range(j0, j1):
                    hprev[n, t + 1, j] = h[n, t, j]


@njit(parallel=True, **_OPT)
def lstm_backward_step(dh, dhw, dc, gates, c, tanh_c, da, db, t):
    """One LSTM backward step before the GEMMs.

    dh (N, T, H) upstream; dhw (N, H) ``da_{t+1} @ Wh.T``; dc (N, H) the gradient of c_t,
    updated to that of c_{t-1}; gates (N, T, 4H) i, f, o, g; c (N, T+1, H) (``c[:, t]`` is
    c_{t-1}); tanh_c (N, T, H); da (N, T, 4H) written at t; db (4H,) accumulated.
    """
    N, H = tanh_c.shape[0], tanh_c.shape[2]
    one = dh.dtype.type(1)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                dht = dh[n, t, j] + dhw[n, j]
                i = gates[n, t, j]
                f = gates[n, t, H + j]
                o = gates[n, t, 2 * H + j]
                g = gates[n, t, 3 * H + j]
                tc = tanh_c[n, t, j]
                d = dc[n, j] + ((one - tc * tc) * o) * dht
                do = (dht * tc) * ((one - o) * o)
                di = (d * g) * ((one - i) * i)
                df = (d * c[n, t, j]) * ((one - f) * f)
                dg = d * ((one - g * g) * i)
                dc[n, j] = d * f
                da[n, t, j] = di
                da[n, t, H + j] = df
                da[n, t, 2 * H + j] = do
                da[n, t, 3 * H + j] = dg
                db[j] += di
                db[H + j] += df
                db[2 * H + j] += do
                db[3 * H + j] += dg


@njit(parallel=True, **_OPT)
def lstm_cell(a, prev_c, next_c, tanh_c, next_h):
    """In place: a (N, 4H) pre-activations -> gates i, f, o, g; writes next_c, tanh_c, next_h."""
    N, H = prev_c.shape
    one, two = a.dtype.type(1), a.dtype.type(2)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                i = one / (one + fast_exp(-a[n, j]))
                f = one / (one + fast_exp(-a[n, H + j]))
                o = one / (one + fast_exp(-a[n, 2 * H + j]))
                g = (one / (one + fast_exp(a[n, 3 * H + j] * -two))) * two - one
                a[n, j] = i
                a[n, H + j] = f
                a[n, 2 * H + j] = o
                a[n, 3 * H + j] = g
                cc = f * prev_c[n, j] + i * g
                next_c[n, j] = cc
                tc = (one / (one + fast_exp(cc * -two))) * two - one
                tanh_c[n, j] = tc
                next_h[n, j] = o * tc


# ------------------------------------------------------------------------------ GRU
@njit(parallel=True, **_OPT)
def gru_forward_step(gates, hw, b, bh, ha_n, h, hprev, t):
    """One GRU step after the GEMMs (gates r, z, n).

    gates (N, T, 3H): in, ``x_t @ Wx``; out, r, z, n. hw (N, 3H) ``h_{t-1} @ Wh``; b, bh
    (3H,). ha_n (N, T, H) gets ``h_{t-1} @ Wh_n + bh_n``. hprev (N, T, H): ``hprev[:, t]`` is
    h_{t-1}; h_t goes to ``h[:, t]`` and, if ``t + 1 < T``, to ``hprev[:, t+1]``.
    """
    N, T, H = h.shape
    one, two = h.dtype.type(1), h.dtype.type(2)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                hr = hw[n, j] + bh[j]
                hz = hw[n, H + j] + bh[H + j]
                hn = hw[n, 2 * H + j] + bh[2 * H + j]
                r = one / (one + fast_exp(-((gates[n, t, j] + b[j]) + hr)))
                z = one / (one + fast_exp(-((gates[n, t, H + j] + b[H + j]) + hz)))
                an = (gates[n, t, 2 * H + j] + b[2 * H + j]) + r * hn
                nv = (one / (one + fast_exp(an * -two))) * two - one
                gates[n, t, j] = r
                gates[n, t, H + j] = z
                gates[n, t, 2 * H + j] = nv
                ha_n[n, t, j] = hn
                h[n, t, j] = (hprev[n, t, j] - nv) * z + nv
            if t + 1 < T:
                for j in range(j0, j1):
                    hprev[n, t + 1, j] = h[n, t, j]


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
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                dht = dh[n, t, j] + (dhw[n, j] + carry[n, j])
                r = gates[n, t, j]
                z = gates[n, t, H + j]
                nv = gates[n, t, 2 * H + j]
                dz = ((hprev[n, t, j] - nv) * dht) * ((one - z) * z)
                dn = ((one - z) * dht) * (one - nv * nv)
                dr = (dn * ha_n[n, t, j]) * ((one - r) * r)
                dhn = dn * r
                carry[n, j] = dht * z
                dxa[n, t, j] = dr
                dxa[n, t, H + j] = dz
                dxa[n, t, 2 * H + j] = dn
                dha[n, t, j] = dr
                dha[n, t, H + j] = dz
                dha[n, t, 2 * H + j] = dhn
                db[j] += dr
                db[H + j] += dz
                db[2 * H + j] += dn
                dbh[j] += dr
                dbh[H + j] += dz
                dbh[2 * H + j] += dhn


@njit(parallel=True, **_OPT)
def gru_cell(xa, ha, prev_h, gates, next_h):
    """xa, ha (N, 3H) input and recurrent pre-activations (ha includes bh), prev_h (N, H)
    -> gates (N, 3H) r, z, n and next_h (N, H)."""
    N, H = prev_h.shape
    one, two = prev_h.dtype.type(1), prev_h.dtype.type(2)
    for k in prange((H + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, H)
        for n in range(N):
            for j in range(j0, j1):
                r = one / (one + fast_exp(-(xa[n, j] + ha[n, j])))
                z = one / (one + fast_exp(-(xa[n, H + j] + ha[n, H + j])))
                an = xa[n, 2 * H + j] + r * ha[n, 2 * H + j]
                nv = (one / (one + fast_exp(an * -two))) * two - one
                gates[n, j] = r
                gates[n, H + j] = z
                gates[n, 2 * H + j] = nv
                next_h[n, j] = (prev_h[n, j] - nv) * z + nv


# ------------------------------------------------------------------- loss, embedding
@njit(parallel=True, **_OPT)
def softmax_cross_entropy(x, y, weight, dx):
    """Rows of scores x (M, V), targets y (M,), weights (M,) -> loss, and dx (M, V).

    ``loss = sum_m weight[m] * (logsumexp(x[m]) - x[m, y[m]])`` (sums in float64),
    ``dx[m] = weight[m] * (softmax(x[m]) - onehot(y[m]))``; dx may be x itself.
    """
    M, V = x.shape
    losses = np.zeros(M)
    for m in prange(M):
        mx = x[m, 0]
        for v in range(1, V):
            mx = max(mx, x[m, v])
        xy = x[m, y[m]]  # read before dx (which may be x) overwrites it
        s = 0.0  # float64 accumulator
        for v in range(V):
            e = fast_exp(x[m, v] - mx)
            dx[m, v] = e
            s += e
        w = weight[m]
        losses[m] = w * (np.log(s) + (mx - xy))
        scale = x.dtype.type(w / s)
        for v in range(V):
            dx[m, v] = dx[m, v] * scale
        dx[m, y[m]] -= w
    return losses.sum()


@njit(parallel=True, **_OPT)
def scatter_add_rows(idx, src, out):
    """``out[idx[r]] += src[r]`` for every row r, duplicates summed: idx (R,), src (R, W),
    out (V, W). Parallel over column chunks, so no two threads touch one element."""
    R, W = src.shape
    for k in prange((W + CHUNK - 1) // CHUNK):
        j0, j1 = k * CHUNK, min(k * CHUNK + CHUNK, W)
        for r in range(R):
            row = idx[r]
            for j in range(j0, j1):
                out[row, j] += src[r, j]
