"""Long short-term memory (LSTM): one step, and a whole sequence (c0 = 0).

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size.

Gate order along the last axis of ``Wx`` (D, 4H), ``Wh`` (H, 4H) and ``b`` (4H,) is
**i, f, o, g** (cs231n), from one matmul ``a = x @ Wx + prev_h @ Wh + b``::

    i = sigmoid(a[:, 0:H])      input gate
    f = sigmoid(a[:, H:2H])     forget gate
    o = sigmoid(a[:, 2H:3H])    output gate
    g = tanh(a[:, 3H:4H])       candidate cell
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

(torch.nn.LSTM orders its gates i, f, g, o and has two biases; ``b = b_ih + b_hh``.)

Backward, with ``dc`` the total gradient of ``c_t``::

    do = dh * tanh(c_t)              dc += dh * o * (1 - tanh(c_t)**2)
    di = dc * g     df = dc * c_{t-1}     dg = dc * i     dc_{t-1} = dc * f
    da = [di * i(1-i), df * f(1-f), do * o(1-o), dg * (1-g**2)]

The sequence functions hoist the input projection of all steps into one GEMM
(:func:`lstm_recurrence_forward` takes it from there) and compute dx, dWx and dWh as single
GEMMs after the backward loop; only ``h @ Wh`` and ``da @ Wh.T`` stay per step. Between the
GEMMs each step's gate arithmetic is one kernel call (:mod:`captionlab.nn.kernels`: fused and
multi-threaded with numba, or plain NumPy), in place in batch-major ``(N, T, ...)`` buffers.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn import kernels
from captionlab.nn.functional import Lengths, check_recurrence, check_recurrent, check_shape


def lstm_cell_forward(
    xa: np.ndarray, prev_h: np.ndarray, prev_c: np.ndarray, Wh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The recurrence given the input pre-activation ``xa = x @ Wx + b``.

    Shared by :func:`lstm_step_forward` and the decoders, which look ``xa`` up in a table
    instead of computing it (no checks: callers check).

    Args:
        xa: input pre-activation of shape (N, 4H), gates i, f, o, g.
        prev_h: previous hidden state of shape (N, H).
        prev_c: previous cell state of shape (N, H).
        Wh: hidden-to-hidden weights of shape (H, 4H).

    Returns:
        ``(next_h, next_c, (i, f, o, g, tanh_c))``, each (N, H); the gates are what the
        backward pass needs.
    """
    a = prev_h @ Wh  # (N, 4H)
    a += xa
    return lstm_gates_forward(a, prev_c)


def lstm_gates_forward(a: np.ndarray, prev_c: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The gates and the new state from the full pre-activation ``a``, which is overwritten.

    For callers that build ``a = x @ Wx + prev_h @ Wh + b`` their own way (the attention
    captioner adds a context term and fuses ``prev_h``'s GEMMs). No checks: callers check.

    Args:
        a: pre-activation of shape (N, 4H), gates i, f, o, g; on return it holds the gate
            activations i, f, o, g.
        prev_c: previous cell state of shape (N, H).

    Returns:
        ``(next_h, next_c, (i, f, o, g, tanh_c))``, each (N, H), the gates views into ``a``.
    """
    H = prev_c.shape[1]
    work = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    next_h, next_c, tanh_c = _lstm_gates(work, prev_c)
    if work is not a:
        a[...] = work
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    return next_h, next_c, (i, f, o, g, tanh_c)


def _lstm_gates(a, prev_c):
    """The kernel behind :func:`lstm_gates_forward`: ``a`` C-contiguous (N, 4H), in place."""
    prev_c = np.ascontiguousarray(prev_c, dtype=a.dtype)
    next_c, tanh_c, next_h = (np.empty(prev_c.shape, dtype=a.dtype) for _ in range(3))
    kernels.active().lstm_cell(a, prev_c, next_c, tanh_c, next_h)  # a -> i, f, o, g
    return next_h, next_c, tanh_c


def lstm_gates_backward(
    dnext_h: np.ndarray, dnext_c: np.ndarray, prev_c: np.ndarray, gates: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Backward of :func:`lstm_gates_forward` (the equations in the module docstring).

    Args:
        dnext_h: gradient of next_h, (N, H).
        dnext_c: gradient of next_c from later steps, (N, H).
        prev_c: previous cell state, (N, H).
        gates: ``(i, f, o, g, tanh_c)`` from the forward, each (N, H).

    Returns:
        ``(da, dprev_c)``: the gradient of the pre-activation (N, 4H), gates i, f, o, g,
        and of prev_c (N, H).
    """
    i, f, o, g, tanh_c = gates
    a = np.concatenate([i, f, o, g], axis=1)  # (N, 4H)
    da, dprev_c, _ = _lstm_gates_backward(dnext_h, dnext_c, prev_c, a, tanh_c)
    return da, dprev_c


def _lstm_gates_backward(dnext_h, dnext_c, prev_c, a, tanh_c):
    """The sequence backward kernel with T = 1 (it reads ``c[:, 0]`` = prev_c as c_{t-1}):
    a (N, 4H) C-contiguous gates -> ``(da (N, 4H), dprev_c (N, H), db (4H,))``."""
    N, H = tanh_c.shape
    dtype = a.dtype
    dc = np.array(dnext_c, dtype=dtype)  # (N, H), becomes dprev_c
    da = np.empty((N, 1, 4 * H), dtype=dtype)
    db = np.zeros(4 * H, dtype=dtype)
    kernels.active().lstm_backward_step(
        np.ascontiguousarray(dnext_h, dtype=dtype)[:, None],
        np.zeros((N, H), dtype=dtype),
        dc,
        a[:, None],
        np.ascontiguousarray(prev_c, dtype=dtype)[:, None],
        np.ascontiguousarray(tanh_c, dtype=dtype)[:, None],
        da,
        db,
        0,
    )
    return da[:, 0], dc, db


def lstm_step_forward(
    x: np.ndarray,
    prev_h: np.ndarray,
    prev_c: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One time step of the LSTM.

    Args:
        x: input of shape (N, D).
        prev_h: previous hidden state of shape (N, H).
        prev_c: previous cell state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, 4H), gates i, f, o, g.
        Wh: hidden-to-hidden weights of shape (H, 4H).
        b: bias of shape (4H,).

    Returns:
        ``(next_h, next_c, cache)`` with next_h and next_c of shape (N, H).
    """
    N, _, _, H = check_recurrent(x, "prev_h", prev_h, Wx, Wh, b, gates=4, sequence=False)
    check_shape("prev_c", prev_c, (N, H), "(N, H)")
    a = prev_h @ Wh  # (N, 4H)
    a += x @ Wx + b
    next_h, next_c, tanh_c = _lstm_gates(a, prev_c)  # a -> i, f, o, g
    cache = (x, prev_h, np.ascontiguousarray(prev_c, dtype=a.dtype), Wx, Wh, a, tanh_c)
    return next_h, next_c, cache


def lstm_step_backward(
    dnext_h: np.ndarray, dnext_c: np.ndarray, cache: tuple
) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`lstm_step_forward`.

    Args:
        dnext_h: gradient with respect to next_h, shape (N, H).
        dnext_c: gradient with respect to next_c, shape (N, H).
        cache: from the forward pass.

    Returns:
        ``(dx, dprev_h, dprev_c, dWx, dWh, db)`` of shapes (N, D), (N, H), (N, H),
        (D, 4H), (H, 4H), (4H,).
    """
    x, prev_h, prev_c, Wx, Wh, a, tanh_c = cache
    check_shape("dnext_h", dnext_h, prev_h.shape, "(N, H)")
    check_shape("dnext_c", dnext_c, prev_c.shape, "(N, H)")
    da, dprev_c, db = _lstm_gates_backward(dnext_h, dnext_c, prev_c, a, tanh_c)
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, 4H)
    dWh = prev_h.T @ da  # (H, 4H)
    return dx, dprev_h, dprev_c, dWx, dWh, db


def lstm_recurrence_forward(
    xa: np.ndarray,
    h0: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple]:
    """The LSTM over a sequence given its input projections (``lstm_forward`` after ``x @ Wx``).

    ``lstm_forward(x, h0, Wx, Wh, b)`` equals ``lstm_recurrence_forward(x @ Wx, h0, Wh, b)``;
    a caller that has ``x @ Wx`` cheaper (an embedding folded into a table) calls this.

    Args:
        xa: input projections ``x @ Wx`` (without the bias) of shape (N, T, 4H).
        h0: initial hidden state of shape (N, H); the initial cell state is zero.
        Wh: hidden-to-hidden weights of shape (H, 4H).
        b: bias of shape (4H,).
        lengths: (N,) steps each row runs, non-increasing (longest row first), or a
            :class:`~captionlab.nn.functional.Lengths` already made of them; the steps past
            a row's length are skipped (``h`` is 0 there) and so are their products.
            ``None``: all T steps.

    Returns:
        h, the hidden states of all steps, shape (N, T, H), and the cache for
        :func:`lstm_recurrence_backward`.
    """
    N, T, _ = check_recurrence(xa, h0, Wh, b, gates=4)
    packed = Lengths.of(lengths, N, T)
    dtype = np.result_type(xa, h0, Wh, b)
    return _lstm_recurrence(np.array(xa, dtype=dtype), h0, Wh, b, packed)


def _lstm_recurrence(gates, h0, Wh, b, packed=None):
    """:func:`lstm_recurrence_forward` on ``gates`` = xa, a C-contiguous array it may own."""
    N, T, G = gates.shape
    H = G // 4
    dtype = gates.dtype
    Wh = np.asarray(Wh, dtype=dtype)
    b = np.ascontiguousarray(b, dtype=dtype)
    k = kernels.active()
    c = np.empty((N, T + 1, H), dtype=dtype)  # c[:, t + 1] = c_t
    c[:, 0] = 0  # c_{-1}
    tanh_c = np.empty((N, T, H), dtype=dtype)
    h = np.empty((N, T, H), dtype=dtype)
    hprev = np.empty((N, T, H), dtype=dtype)  # hprev[:, t] = h_{t-1}
    hprev[:, 0] = h0
    hw = np.empty((N, 4 * H), dtype=dtype)
    for t in range(T):
        n = N if packed is None else packed.counts[t]  # rows still running: a prefix
        np.matmul(hprev[:n, t], Wh, out=hw[:n])  # (n, 4H)
        # gates[:, t] = i, f, o, g
        k.lstm_forward_step(gates[:n], hw[:n], b, c[:n], tanh_c[:n], h[:n], hprev[:n], t)
    if packed is not None:
        packed.zero_padding(h)
    return h, (Wh, gates, c, tanh_c, hprev, packed)


def lstm_recurrence_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`lstm_recurrence_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that); ignored
            past each row's length when the forward had ``lengths``.
        cache: from the forward pass.

    Returns:
        ``(dxa, dh0, dWh, db)`` of shapes (N, T, 4H), (N, H), (H, 4H), (4H,); ``dxa`` is the
        gradient of the input projections (and of the pre-activations), 0 past each row's
        length.
    """
    Wh, gates, c, tanh_c, hprev, packed = cache
    N, T, H = tanh_c.shape
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = gates.dtype
    dh = np.ascontiguousarray(dh, dtype=dtype)
    k = kernels.active()
    da = np.empty((N, T, 4 * H), dtype=dtype)  # pre-activation gradients of all steps
    db = np.zeros(4 * H, dtype=dtype)
    dhw = np.zeros((N, H), dtype=dtype)  # gradient reaching h_t from step t + 1
    dc = np.zeros((N, H), dtype=dtype)  # gradient of c_t, carried backwards
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        n = N if packed is None else packed.counts[t]  # rows [n:] have da = 0 here
        k.lstm_backward_step(dh[:n], dhw[:n], dc[:n], gates[:n], c[:n], tanh_c[:n], da[:n], db, t)
        np.matmul(da[:n, t], WhT, out=dhw[:n])
    # Hoisted: the weight gradient as one GEMM over the N*T rows (the real steps' rows).
    if packed is None:
        dWh = hprev.reshape(N * T, H).T @ da.reshape(N * T, 4 * H)  # (H, 4H)
    else:
        packed.zero_padding(da)
        dWh = packed.rows_product(hprev, da)
    return da, dhw, dWh, db


def lstm_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """Run the LSTM over a whole sequence; the initial cell state is zero.

    Args:
        x: inputs of shape (N, T, D).
        h0: initial hidden state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, 4H), gates i, f, o, g.
        Wh: hidden-to-hidden weights of shape (H, 4H).
        b: bias of shape (4H,).

    Returns:
        h, the hidden states of all steps, shape (N, T, H), and the cache for
        :func:`lstm_backward`.
    """
    N, T, D, H = check_recurrent(x, "h0", h0, Wx, Wh, b, gates=4, sequence=True)
    dtype = np.result_type(x, h0, Wx, Wh, b)
    x2 = np.ascontiguousarray(x, dtype=dtype).reshape(N * T, D)
    Wx = np.asarray(Wx, dtype=dtype)
    # Hoisted: the input projection of all steps as one GEMM; the buffer then holds the
    # gate activations i, f, o, g of every step, computed in place.
    gates = (x2 @ Wx).reshape(N, T, 4 * H)  # (N, T, 4H)
    h, cache = _lstm_recurrence(gates, h0, Wh, b)
    return h, (x2, Wx, cache)


def lstm_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`lstm_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db)`` of shapes (N, T, D), (N, H), (D, 4H), (H, 4H), (4H,).
    """
    x2, Wx, rcache = cache
    da, dh0, dWh, db = lstm_recurrence_backward(dh, rcache)
    N, T, G = da.shape
    da2 = da.reshape(N * T, G)
    # Hoisted: dx and dWx as single GEMMs over the N*T rows.
    dx = (da2 @ Wx.T).reshape(N, T, -1)  # (N, T, D)
    dWx = x2.T @ da2  # (D, 4H)
    return dx, dh0, dWx, dWh, db
