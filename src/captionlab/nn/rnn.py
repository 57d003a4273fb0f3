"""Vanilla (Elman) RNN with a tanh non-linearity: one step, and a whole sequence.

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size.

Recurrence (the same as ``torch.nn.RNN(nonlinearity="tanh")`` with ``b = b_ih + b_hh``)::

    h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)

Backward, with ``a_t`` the pre-activation and ``da_t = dh_t * (1 - h_t**2)``::

    dx_t = da_t @ Wx.T    dh_{t-1} = da_t @ Wh.T    dWx += x_t.T @ da_t
    dWh += h_{t-1}.T @ da_t    db += sum_n da_t

The sequence functions are not a loop over the step functions: the input projection of all
steps is one GEMM before the loop (:func:`rnn_recurrence_forward` takes it from there), and
dx, dWx and dWh are single GEMMs over all steps after the backward loop; only ``h @ Wh`` and
``da @ Wh.T`` stay inside the loops. Between the GEMMs each step's element-wise work is one
kernel call (:mod:`captionlab.nn.kernels`: fused and multi-threaded with numba, or plain
NumPy). Buffers are batch-major ``(N, T, H)``: h is written where it is returned, and the
previous states ``h_{t-1}`` are kept side by side for the single dWh GEMM.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn import kernels
from captionlab.nn.functional import Lengths, check_recurrence, check_recurrent, check_shape


def rnn_cell_forward(xa: np.ndarray, prev_h: np.ndarray, Wh: np.ndarray) -> np.ndarray:
    """The recurrence given the input pre-activation: ``tanh(xa + prev_h @ Wh)``.

    Shared by :func:`rnn_step_forward` and the decoders, which look ``xa = x @ Wx + b`` up
    in a table instead of computing it (no cache, no checks: callers check).

    Args:
        xa: input pre-activation ``x @ Wx + b`` of shape (N, H).
        prev_h: previous hidden state of shape (N, H).
        Wh: hidden-to-hidden weights of shape (H, H).

    Returns:
        next_h of shape (N, H) (a new array).
    """
    a = prev_h @ Wh  # (N, H)
    a += xa
    kernels.active().rnn_cell(a)
    return a


def rnn_step_forward(
    x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """One time step of the vanilla RNN.

    Args:
        x: input of shape (N, D).
        prev_h: previous hidden state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, H).
        Wh: hidden-to-hidden weights of shape (H, H).
        b: bias of shape (H,).

    Returns:
        next_h of shape (N, H) and the cache for :func:`rnn_step_backward`.
    """
    check_recurrent(x, "prev_h", prev_h, Wx, Wh, b, gates=1, sequence=False)
    next_h = rnn_cell_forward(x @ Wx + b, prev_h, Wh)  # (N, H)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`rnn_step_forward`.

    Args:
        dnext_h: gradient of the loss with respect to next_h, shape (N, H).
        cache: from the forward pass.

    Returns:
        ``(dx, dprev_h, dWx, dWh, db)`` of shapes (N, D), (N, H), (D, H), (H, H), (H,).
    """
    x, prev_h, Wx, Wh, next_h = cache
    check_shape("dnext_h", dnext_h, next_h.shape, "(N, H)")
    N, H = next_h.shape
    dtype = next_h.dtype
    # The sequence kernel with T = 1: da = dnext_h * (1 - next_h**2), db = sum_n da.
    da = np.empty((N, 1, H), dtype=dtype)
    db = np.zeros(H, dtype=dtype)
    dh = np.ascontiguousarray(dnext_h, dtype=dtype)[:, None]
    kernels.active().rnn_backward_step(
        dh, np.zeros((N, H), dtype), np.ascontiguousarray(next_h)[:, None], da, db, 0
    )
    da = da[:, 0]  # (N, H)
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, H)
    dWh = prev_h.T @ da  # (H, H)
    return dx, dprev_h, dWx, dWh, db


def rnn_recurrence_forward(
    xa: np.ndarray,
    h0: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple]:
    """The RNN over a sequence given its input projections (``rnn_forward`` after ``x @ Wx``).

    ``rnn_forward(x, h0, Wx, Wh, b)`` equals ``rnn_recurrence_forward(x @ Wx, h0, Wh, b)``;
    a caller that has ``x @ Wx`` cheaper (an embedding folded into a table) calls this.

    Args:
        xa: input projections ``x @ Wx`` (without the bias) of shape (N, T, H).
        h0: initial hidden state of shape (N, H).
        Wh: hidden-to-hidden weights of shape (H, H).
        b: bias of shape (H,).
        lengths: (N,) steps each row runs, non-increasing (longest row first), or a
            :class:`~captionlab.nn.functional.Lengths` already made of them; the steps past
            a row's length are skipped (``h`` is 0 there) and so are their products.
            ``None``: all T steps.

    Returns:
        h, the hidden states of all steps, shape (N, T, H) (kept in the cache too: do not
        modify it in place before the backward pass), and the cache for
        :func:`rnn_recurrence_backward`.
    """
    N, T, H = check_recurrence(xa, h0, Wh, b, gates=1)
    packed = Lengths.of(lengths, N, T)
    dtype = np.result_type(xa, h0, Wh, b)
    xa = np.ascontiguousarray(xa, dtype=dtype)
    Wh = np.asarray(Wh, dtype=dtype)
    b = np.ascontiguousarray(b, dtype=dtype)
    k = kernels.active()
    h = np.empty((N, T, H), dtype=dtype)
    hprev = np.empty((N, T, H), dtype=dtype)  # hprev[:, t] = h_{t-1}
    hprev[:, 0] = h0
    hw = np.empty((N, H), dtype=dtype)
    for t in range(T):
        n = N if packed is None else packed.counts[t]  # rows still running: a prefix
        np.matmul(hprev[:n, t], Wh, out=hw[:n])  # (n, H)
        # h_t = tanh(x_t Wx + h_{t-1} Wh + b)
        k.rnn_forward_step(xa[:n], hw[:n], b, h[:n], hprev[:n], t)
    if packed is not None:
        packed.zero_padding(h)
    return h, (Wh, h, hprev, packed)


def rnn_recurrence_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`rnn_recurrence_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that); ignored
            past each row's length when the forward had ``lengths``.
        cache: from the forward pass.

    Returns:
        ``(dxa, dh0, dWh, db)`` of shapes (N, T, H), (N, H), (H, H), (H,); ``dxa`` is the
        gradient of the input projections (and of the pre-activations), 0 past each row's
        length.
    """
    Wh, h, hprev, packed = cache
    N, T, H = h.shape
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = h.dtype
    dh = np.ascontiguousarray(dh, dtype=dtype)
    k = kernels.active()
    da = np.empty((N, T, H), dtype=dtype)  # gradients of the pre-activations, all steps
    db = np.zeros(H, dtype=dtype)
    dhw = np.zeros((N, H), dtype=dtype)  # gradient reaching h_t from step t + 1
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        n = N if packed is None else packed.counts[t]  # rows [n:] have da = 0 here
        k.rnn_backward_step(dh[:n], dhw[:n], h[:n], da[:n], db, t)  # da_t = dh_t (1 - h_t^2)
        np.matmul(da[:n, t], WhT, out=dhw[:n])
    # Hoisted: the weight gradient as one GEMM over the N*T rows (the real steps' rows).
    if packed is None:
        dWh = hprev.reshape(N * T, H).T @ da.reshape(N * T, H)  # (H, H)
    else:
        packed.zero_padding(da)
        dWh = packed.rows_product(hprev, da)
    return da, dhw, dWh, db


def rnn_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """Run the vanilla RNN over a whole sequence.

    Args:
        x: inputs of shape (N, T, D).
        h0: initial hidden state of shape (N, H).
        Wx: input-to-hidden weights of shape (D, H).
        Wh: hidden-to-hidden weights of shape (H, H).
        b: bias of shape (H,).

    Returns:
        h, the hidden states of all steps, shape (N, T, H), and the cache for
        :func:`rnn_backward`.
    """
    N, T, D, H = check_recurrent(x, "h0", h0, Wx, Wh, b, gates=1, sequence=True)
    dtype = np.result_type(x, h0, Wx, Wh, b)
    x2 = np.ascontiguousarray(x, dtype=dtype).reshape(N * T, D)
    Wx = np.asarray(Wx, dtype=dtype)
    # Hoisted: the input projection of all steps as one GEMM.
    xa = (x2 @ Wx).reshape(N, T, H)  # (N, T, H)
    h, cache = rnn_recurrence_forward(xa, h0, Wh, b)
    return h, (x2, Wx, cache)


def rnn_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`rnn_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db)`` of shapes (N, T, D), (N, H), (D, H), (H, H), (H,).
    """
    x2, Wx, rcache = cache
    da, dh0, dWh, db = rnn_recurrence_backward(dh, rcache)
    N, T, H = da.shape
    da2 = da.reshape(N * T, H)
    # Hoisted: dx and dWx as single GEMMs over the N*T rows.
    dx = (da2 @ Wx.T).reshape(N, T, -1)  # (N, T, D)
    dWx = x2.T @ da2  # (D, H)
    return dx, dh0, dWx, dWh, db
