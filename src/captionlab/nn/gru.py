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

The sequence functions hoist the input projection of all steps into one GEMM
(:func:`gru_recurrence_forward` takes it from there) and compute dx, dWx and dWh as single
GEMMs after the backward loop; only ``h @ Wh`` and ``dha @ Wh.T`` stay per step. Between the
GEMMs each step's gate arithmetic is one kernel call (:mod:`captionlab.nn.kernels`: fused and
multi-threaded with numba, or plain NumPy), in place in batch-major ``(N, T, ...)`` buffers;
the kernels also accumulate db and dbh.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn import kernels
from captionlab.nn.functional import Lengths, check_recurrence, check_recurrent, check_shape


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
    next_h, gates, ha = _gru_cell(xa, prev_h, Wh, bh)
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    return next_h, (r, z, n, ha[:, 2 * H :])


def _gru_cell(xa, prev_h, Wh, bh):
    """:func:`gru_cell_forward` returning gates r, z, n (N, 3H) and ``ha`` (N, 3H) whole."""
    ha = prev_h @ Wh  # (N, 3H)
    ha += bh
    dtype = ha.dtype
    gates = np.empty(ha.shape, dtype=dtype)
    next_h = np.empty(prev_h.shape, dtype=dtype)
    kernels.active().gru_cell(
        np.ascontiguousarray(xa, dtype=dtype),
        ha,
        np.ascontiguousarray(prev_h, dtype=dtype),
        gates,
        next_h,
    )
    return next_h, gates, ha


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
    next_h, gates, ha = _gru_cell(x @ Wx + b, prev_h, Wh, bh)  # (N, H)
    ha_n = np.ascontiguousarray(ha[:, 2 * H :])
    prev_h = np.ascontiguousarray(prev_h, dtype=gates.dtype)
    return next_h, (x, prev_h, Wx, Wh, gates, ha_n)


def gru_step_backward(dnext_h: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`gru_step_forward`.

    Args:
        dnext_h: gradient with respect to next_h, shape (N, H).
        cache: from the forward pass.

    Returns:
        ``(dx, dprev_h, dWx, dWh, db, dbh)`` of shapes (N, D), (N, H), (D, 3H), (H, 3H),
        (3H,), (3H,).
    """
    x, prev_h, Wx, Wh, gates, ha_n = cache
    check_shape("dnext_h", dnext_h, prev_h.shape, "(N, H)")
    N, H = prev_h.shape
    dtype = gates.dtype
    # The sequence kernel with T = 1; carry comes back as dnext_h * z.
    carry = np.zeros((N, H), dtype=dtype)
    dxa = np.empty((N, 1, 3 * H), dtype=dtype)
    dha = np.empty((N, 1, 3 * H), dtype=dtype)
    db = np.zeros(3 * H, dtype=dtype)
    dbh = np.zeros(3 * H, dtype=dtype)
    kernels.active().gru_backward_step(
        np.ascontiguousarray(dnext_h, dtype=dtype)[:, None],
        np.zeros((N, H), dtype=dtype),
        carry,
        gates[:, None],
        ha_n[:, None],
        prev_h[:, None],
        dxa,
        dha,
        db,
        dbh,
        0,
    )
    dxa, dha = dxa[:, 0], dha[:, 0]  # (N, 3H)
    dx = dxa @ Wx.T  # (N, D)
    dprev_h = carry + dha @ Wh.T  # (N, H): dnext_h * z + dha @ Wh.T
    dWx = x.T @ dxa  # (D, 3H)
    dWh = prev_h.T @ dha  # (H, 3H)
    return dx, dprev_h, dWx, dWh, db, dbh


def gru_recurrence_forward(
    xa: np.ndarray,
    h0: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    bh: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple]:
    """The GRU over a sequence given its input projections (``gru_forward`` after ``x @ Wx``).

    ``gru_forward(x, h0, Wx, Wh, b, bh)`` equals ``gru_recurrence_forward(x @ Wx, h0, Wh, b,
    bh)``; a caller that has ``x @ Wx`` cheaper (an embedding folded into a table) calls this.

    Args:
        xa: input projections ``x @ Wx`` (without the bias) of shape (N, T, 3H).
        h0: initial hidden state of shape (N, H).
        Wh: hidden-to-hidden weights of shape (H, 3H).
        b: input bias of shape (3H,).
        bh: recurrent bias of shape (3H,).
        lengths: (N,) steps each row runs, non-increasing (longest row first), or a
            :class:`~captionlab.nn.functional.Lengths` already made of them; the steps past
            a row's length are skipped (``h`` is 0 there) and so are their products.
            ``None``: all T steps.

    Returns:
        h, the hidden states of all steps, shape (N, T, H), and the cache for
        :func:`gru_recurrence_backward`.
    """
    N, T, H = check_recurrence(xa, h0, Wh, b, gates=3)
    check_shape("bh", bh, (3 * H,), "(3H,)")
    packed = Lengths.of(lengths, N, T)
    dtype = np.result_type(xa, h0, Wh, b, bh)
    return _gru_recurrence(np.array(xa, dtype=dtype), h0, Wh, b, bh, packed)


def _gru_recurrence(gates, h0, Wh, b, bh, packed=None):
    """:func:`gru_recurrence_forward` on ``gates`` = xa, a C-contiguous array it may own."""
    N, T, G = gates.shape
    H = G // 3
    dtype = gates.dtype
    Wh = np.asarray(Wh, dtype=dtype)
    b = np.ascontiguousarray(b, dtype=dtype)
    bh = np.ascontiguousarray(bh, dtype=dtype)
    k = kernels.active()
    ha_n = np.empty((N, T, H), dtype=dtype)  # h_{t-1} @ Wh_n + bh_n, kept for backward
    h = np.empty((N, T, H), dtype=dtype)
    hprev = np.empty((N, T, H), dtype=dtype)  # hprev[:, t] = h_{t-1}
    hprev[:, 0] = h0
    hw = np.empty((N, 3 * H), dtype=dtype)
    for t in range(T):
        n = N if packed is None else packed.counts[t]  # rows still running: a prefix
        np.matmul(hprev[:n, t], Wh, out=hw[:n])  # (n, 3H)
        # gates[:, t] = r, z, n
        k.gru_forward_step(gates[:n], hw[:n], b, bh, ha_n[:n], h[:n], hprev[:n], t)
    if packed is not None:
        packed.zero_padding(h)
    return h, (Wh, gates, ha_n, hprev, packed)


def gru_recurrence_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`gru_recurrence_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that); ignored
            past each row's length when the forward had ``lengths``.
        cache: from the forward pass.

    Returns:
        ``(dxa, dh0, dWh, db, dbh)`` of shapes (N, T, 3H), (N, H), (H, 3H), (3H,), (3H,);
        ``dxa`` is the gradient of the input projections, 0 past each row's length.
    """
    Wh, gates, ha_n, hprev, packed = cache
    N, T, H = ha_n.shape
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = gates.dtype
    dh = np.ascontiguousarray(dh, dtype=dtype)
    k = kernels.active()
    dxa = np.empty((N, T, 3 * H), dtype=dtype)  # gradients of x @ Wx + b, all steps
    dha = np.empty((N, T, 3 * H), dtype=dtype)  # gradients of h @ Wh + bh, all steps
    db = np.zeros(3 * H, dtype=dtype)
    dbh = np.zeros(3 * H, dtype=dtype)
    dhw = np.zeros((N, H), dtype=dtype)  # dha_{t+1} @ Wh.T
    carry = np.zeros((N, H), dtype=dtype)  # dh_{t+1} * z_{t+1}
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        n = N if packed is None else packed.counts[t]  # rows [n:] have dxa = dha = 0 here
        k.gru_backward_step(
            dh[:n],
            dhw[:n],
            carry[:n],
            gates[:n],
            ha_n[:n],
            hprev[:n],
            dxa[:n],
            dha[:n],
            db,
            dbh,
            t,
        )
        np.matmul(dha[:n, t], WhT, out=dhw[:n])
    dh0 = dhw + carry  # dh_{-1} = dha_0 @ Wh.T + dh_0 * z_0
    # Hoisted: the weight gradient as one GEMM over the N*T rows (the real steps' rows).
    if packed is None:
        dWh = hprev.reshape(N * T, H).T @ dha.reshape(N * T, 3 * H)  # (H, 3H)
    else:
        packed.zero_padding(dxa)
        dWh = packed.rows_product(hprev, dha)
    return dxa, dh0, dWh, db, dbh


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
    x2 = np.ascontiguousarray(x, dtype=dtype).reshape(N * T, D)
    Wx = np.asarray(Wx, dtype=dtype)
    # Hoisted: the input projection of all steps as one GEMM; the buffer then holds the
    # gate activations r, z, n of every step, computed in place.
    gates = (x2 @ Wx).reshape(N, T, 3 * H)  # (N, T, 3H)
    h, cache = _gru_recurrence(gates, h0, Wh, b, bh)
    return h, (x2, Wx, cache)


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
    x2, Wx, rcache = cache
    dxa, dh0, dWh, db, dbh = gru_recurrence_backward(dh, rcache)
    N, T, G = dxa.shape
    dxa2 = dxa.reshape(N * T, G)
    # Hoisted: dx and dWx as single GEMMs over the N*T rows.
    dx = (dxa2 @ Wx.T).reshape(N, T, -1)  # (N, T, D)
    dWx = x2.T @ dxa2  # (D, 3H)
    return dx, dh0, dWx, dWh, db, dbh
