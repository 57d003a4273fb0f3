"""Gated recurrent unit (GRU) with exactly the equations of ``torch.nn.GRU``.

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size.

Gate order along the last axis of ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` and ``bh`` (3H,) is
**r, z, n** (torch's ``W_ir|W_iz|W_in``). The GRU has two biases because the reset gate
multiplies the recurrent term *including its bias*::

    xa = x @ Wx + b                     (N, 3H)   input part
    ha = h_{t-1} @ Wh + bh              (N, 3H)   recurrent part
    r = sigmoid(xa_r + ha_r)            reset gate
    z = sigmoid(xa_z + ha_z)            update gate
    n = tanh(xa_n + r * ha_n)           candidate
    h_t = (1 - z) * n + z * h_{t-1}

Mapping from torch: ``Wx = weight_ih_l0.T``, ``Wh = weight_hh_l0.T``, ``b = bias_ih_l0``,
``bh = bias_hh_l0``.

Backward::

    dn = dh * (1 - z)     dz = dh * (h_{t-1} - n)     dh_{t-1} = dh * z + dha @ Wh.T
    dxa_n = dn * (1 - n**2)    dha_n = dxa_n * r    dr = dxa_n * ha_n
    dxa_r = dha_r = dr * r(1-r)    dxa_z = dha_z = dz * z(1-z)

The sequence functions hoist the input projection of all steps into one GEMM (``b`` rides
in it as a column of ones on x), do the gate arithmetic in place in time-major buffers
(each step's slice contiguous), and compute dx, [dWx; db], dWh as single GEMMs and dbh as
one sum after the backward loop; only ``h @ Wh`` and
``dha @ Wh.T`` stay per step. Sigmoid and tanh are ``1 / (1 + exp(-a))`` and
``2 sigmoid(2a) - 1``, with the factors -1 and -2 folded into scaled copies of the weights.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn.functional import (
    check_recurrent,
    check_shape,
    sigmoid,
    sigmoid_from_negated_,
    tanh_from_negated_double_,
    time_major_with_ones,
)


def gru_cell_forward(
    xa: np.ndarray, prev_h: np.ndarray, Wh: np.ndarray, bh: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """The recurrence given the input pre-activation ``xa = x @ Wx + b``.

    Shared by :func:`gru_step_forward` and the decoders, which look ``xa`` up in a table
    instead of computing it (no checks: callers check).

    Args:
        xa: input pre-activation of shape (N, 3H), gates r, z, n.
        prev_h: previous hidden state of shape (N, H).
        Wh: hidden-to-hidden weights of shape (H, 3H).
        bh: recurrent bias of shape (3H,).

    Returns:
        ``(next_h, (r, z, n, ha_n))``, each (N, H); the gates are what backward needs.
    """
    H = prev_h.shape[1]
    ha = prev_h @ Wh  # (N, 3H)
    ha += bh
    rz = xa[:, : 2 * H] + ha[:, : 2 * H]  # (N, 2H)
    sigmoid(rz, out=rz)
    r, z = rz[:, :H], rz[:, H:]
    ha_n = ha[:, 2 * H :]
    n = r * ha_n  # (N, H)
    n += xa[:, 2 * H :]
    np.tanh(n, out=n)
    next_h = prev_h - n  # h' = (1 - z) n + z h = n + z (h - n)
    next_h *= z
    next_h += n
    return next_h, (r, z, n, ha_n)


def gru_step_forward(
    x: np.ndarray,
    prev_h: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    bh: np.ndarray,
) -> tuple[np.ndarray, tuple]:
    """One time step of the GRU.

    Args:
        x: input of shape (N, D).
        prev_h: previous hidden state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, 3H), gates r, z, n.
        Wh: hidden-to-hidden weights of shape (H, 3H).
        b: input bias of shape (3H,).
        bh: recurrent bias of shape (3H,).

    Returns:
        next_h of shape (N, H) and the cache for :func:`gru_step_backward`.
    """
    _, _, _, H = check_recurrent(x, "prev_h", prev_h, Wx, Wh, b, gates=3, sequence=False)
    check_shape("bh", bh, (3 * H,), "(3H,)")
    next_h, gates = gru_cell_forward(x @ Wx + b, prev_h, Wh, bh)  # (N, H)
    return next_h, (x, prev_h, Wx, Wh, *gates)


def gru_step_backward(dnext_h: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`gru_step_forward`.

    Args:
        dnext_h: gradient with respect to next_h, shape (N, H).
        cache: from the forward pass.

    Returns:
        ``(dx, dprev_h, dWx, dWh, db, dbh)`` of shapes (N, D), (N, H), (D, 3H), (H, 3H),
        (3H,), (3H,).
    """
    x, prev_h, Wx, Wh, r, z, n, ha_n = cache
    check_shape("dnext_h", dnext_h, prev_h.shape, "(N, H)")
    dn = dnext_h * (1 - z)
    dz = dnext_h * (prev_h - n)
    dxa_n = dn * (1 - n * n)
    dr = dxa_n * ha_n
    dxa_r = dr * r * (1 - r)
    dxa_z = dz * z * (1 - z)
    dxa = np.concatenate([dxa_r, dxa_z, dxa_n], axis=1)  # (N, 3H)
    dha = np.concatenate([dxa_r, dxa_z, dxa_n * r], axis=1)  # (N, 3H)
    dx = dxa @ Wx.T  # (N, D)
    dprev_h = dnext_h * z + dha @ Wh.T  # (N, H)
    dWx = x.T @ dxa  # (D, 3H)
    dWh = prev_h.T @ dha  # (H, 3H)
    db = dxa.sum(axis=0)  # (3H,)
    dbh = dha.sum(axis=0)  # (3H,)
    return dx, dprev_h, dWx, dWh, db, dbh


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    bh: np.ndarray,
) -> tuple[np.ndarray, tuple]:
    """Run the GRU over a whole sequence.

    Args:
        x: inputs of shape (N, T, D).
        h0: initial hidden state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, 3H), gates r, z, n.
        Wh: hidden-to-hidden weights of shape (H, 3H).
        b: input bias of shape (3H,).
        bh: recurrent bias of shape (3H,).

    Returns:
        h, the hidden states of all steps, shape (N, T, H), and the cache for
        :func:`gru_backward`.
    """
    N, T, D, H = check_recurrent(x, "h0", h0, Wx, Wh, b, gates=3, sequence=True)
    check_shape("bh", bh, (3 * H,), "(3H,)")
    dtype = np.result_type(x, h0, Wx, Wh, b, bh)
    # Internally time-major (T, N, ...), so that each step's slices are contiguous. The
    # weights and biases are copied with the columns scaled by -1 (r, z: sigmoid) or -2
    # (n: tanh), exactly, so the GEMMs give what the in-place kernels take.
    scale = np.full(3 * H, -1, dtype=dtype)
    scale[2 * H :] = -2
    Wxb_s = np.concatenate([Wx, b[None]], dtype=dtype)  # (D+1, 3H)
    Wxb_s *= scale
    Wh_s, bh_s = Wh * scale, bh * scale
    x1 = time_major_with_ones(x, dtype)  # (T, N, D+1)
    # Hoisted: the input projection of all steps, bias included, as one GEMM. The buffer
    # then holds the gate activations r, z, n of every step, computed in place.
    gates = (x1.reshape(T * N, D + 1) @ Wxb_s).reshape(T, N, 3 * H)  # (T, N, 3H)
    hs = np.empty((T + 1, N, H), dtype=dtype)  # hs[0] = h0, hs[t + 1] = h_t
    hs[0] = h0
    ha_n = np.empty((T, N, H), dtype=dtype)  # h_{t-1} @ Wh_n + bh_n, kept for backward
    tmp = np.empty((N, 3 * H), dtype=dtype)
    for t in range(T):
        at = gates[t]  # (N, 3H)
        np.matmul(hs[t], Wh_s, out=tmp)
        tmp += bh_s  # -ha_r, -ha_z, -2 ha_n
        rz = at[:, : 2 * H]
        rz += tmp[:, : 2 * H]
        sigmoid_from_negated_(rz)  # r, z
        r, z, n = at[:, :H], at[:, H : 2 * H], at[:, 2 * H :]
        hn2 = tmp[:, 2 * H :]
        np.multiply(hn2, -0.5, out=ha_n[t])
        rhn = tmp[:, :H]
        np.multiply(r, hn2, out=rhn)
        n += rhn  # -2 (xa_n + r * ha_n)
        tanh_from_negated_double_(n)
        ht = hs[t + 1]
        np.subtract(hs[t], n, out=ht)
        ht *= z
        ht += n  # h_t = n + z * (h_{t-1} - n) = (1 - z) n + z h_{t-1}
    h = np.ascontiguousarray(hs[1:].transpose(1, 0, 2))  # (N, T, H)
    return h, (x1, Wx, Wh, gates, ha_n, hs)


def gru_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`gru_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db, dbh)`` of shapes (N, T, D), (N, H), (D, 3H), (H, 3H),
        (3H,), (3H,).
    """
    x1, Wx, Wh, gates, ha_n, hs = cache
    T, N, D = x1.shape[0], x1.shape[1], x1.shape[2] - 1
    H = hs.shape[2]
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = gates.dtype
    dxa = np.empty((T, N, 3 * H), dtype=dtype)  # gradients of x @ Wx + b, all steps
    dha = np.empty((T, N, 3 * H), dtype=dtype)  # gradients of h @ Wh + bh, all steps
    dprev = np.zeros((N, H), dtype=dtype)
    dht = np.empty((N, H), dtype=dtype)
    tmp = np.empty((N, H), dtype=dtype)
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        at = gates[t]
        r, z, n = at[:, :H], at[:, H : 2 * H], at[:, 2 * H :]
        prev = hs[t]
        dxt, dhat = dxa[t], dha[t]
        dr, dz, dn = dxt[:, :H], dxt[:, H : 2 * H], dxt[:, 2 * H :]
        np.add(dh[:, t], dprev, out=dht)
        # dz = dh * (h_{t-1} - n) * z(1-z)
        np.subtract(prev, n, out=dz)
        dz *= dht
        np.subtract(1, z, out=tmp)
        tmp *= z
        dz *= tmp
        # dxa_n = dh * (1-z) * (1-n^2)
        np.subtract(1, z, out=dn)
        dn *= dht
        np.multiply(n, n, out=tmp)
        np.subtract(1, tmp, out=tmp)
        dn *= tmp
        # dr = dxa_n * ha_n * r(1-r)
        np.multiply(dn, ha_n[t], out=dr)
        np.subtract(1, r, out=tmp)
        tmp *= r
        dr *= tmp
        dhat[:, : 2 * H] = dxt[:, : 2 * H]
        np.multiply(dn, r, out=dhat[:, 2 * H :])
        # dh_{t-1} = dh * z + dha @ Wh.T
        np.matmul(dhat, WhT, out=dprev)
        np.multiply(dht, z, out=tmp)
        dprev += tmp
    # Hoisted: all weight gradients and dx as single GEMMs over the T*N rows.
    dxa2 = dxa.reshape(T * N, 3 * H)
    dha2 = dha.reshape(T * N, 3 * H)
    dx = np.ascontiguousarray((dxa2 @ Wx.T).reshape(T, N, D).transpose(1, 0, 2))  # (N, T, D)
    dWxb = x1.reshape(T * N, D + 1).T @ dxa2  # (D+1, 3H) = [dWx; db]
    dWx, db = dWxb[:D], dWxb[D]  # (D, 3H), (3H,)
    dWh = hs[:T].reshape(T * N, H).T @ dha2  # (H, 3H); hs[t] = h_{t-1}
    dbh = dha2.sum(axis=0)  # (3H,)
    return dx, dprev, dWx, dWh, db, dbh
