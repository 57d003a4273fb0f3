"""Vanilla (Elman) RNN with a tanh non-linearity: one step, and a whole sequence.

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size.

Recurrence (the same as ``torch.nn.RNN(nonlinearity="tanh")`` with ``b = b_ih + b_hh``)::

    h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)

Backward, with ``a_t`` the pre-activation and ``da_t = dh_t * (1 - h_t**2)``::

    dx_t = da_t @ Wx.T    dh_{t-1} = da_t @ Wh.T    dWx += x_t.T @ da_t
    dWh += h_{t-1}.T @ da_t    db += sum_n da_t

The sequence functions are not a loop over the step functions: the input projection of all
steps is one GEMM before the loop (the bias rides in it as a column of ones on x), and dx,
[dWx; db] and dWh are single GEMMs over all steps after the backward loop; only
``h @ Wh`` and ``da @ Wh.T`` stay inside the loops.
Buffers are time-major (T, N, H) inside, so each step's slice is contiguous, and tanh is
computed in place as ``2 sigmoid(2a) - 1`` with the factor -2 folded into the weights.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn.functional import (
    check_recurrent,
    check_shape,
    tanh_from_negated_double_,
    time_major_with_ones,
)


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
    return np.tanh(a, out=a)


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
    da = dnext_h * (1 - next_h * next_h)  # (N, H)
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, H)
    dWh = prev_h.T @ da  # (H, H)
    db = da.sum(axis=0)  # (H,)
    return dx, dprev_h, dWx, dWh, db


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
    # Internally time-major (T, N, ...), so that each step's slices are contiguous. The
    # weights are copied scaled by -2 (exact), so the GEMMs give what the in-place
    # tanh(a) = 2 sigmoid(2a) - 1 kernel takes.
    Wxb_s = np.concatenate([Wx, b[None]], dtype=dtype)  # (D+1, H)
    Wxb_s *= -2
    Wh_s = Wh * dtype.type(-2)
    x1 = time_major_with_ones(x, dtype)  # (T, N, D+1)
    # Hoisted: the input projection of all steps, bias included, as one GEMM.
    xa = (x1.reshape(T * N, D + 1) @ Wxb_s).reshape(T, N, H)  # (T, N, H), -2 (x Wx + b)
    hs = np.empty((T + 1, N, H), dtype=dtype)  # hs[0] = h0, hs[t + 1] = h_t
    hs[0] = h0
    for t in range(T):
        ht = hs[t + 1]
        np.matmul(hs[t], Wh_s, out=ht)
        ht += xa[t]
        tanh_from_negated_double_(ht)  # h_t = tanh(x_t Wx + h_{t-1} Wh + b)
    h = np.ascontiguousarray(hs[1:].transpose(1, 0, 2))  # (N, T, H)
    return h, (x1, Wx, Wh, hs)


def rnn_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`rnn_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db)`` of shapes (N, T, D), (N, H), (D, H), (H, H), (H,).
    """
    x1, Wx, Wh, hs = cache
    T, N, D = x1.shape[0], x1.shape[1], x1.shape[2] - 1
    H = hs.shape[2]
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = hs.dtype
    da = np.empty((T, N, H), dtype=dtype)  # gradients of the pre-activations, all steps
    dprev = np.zeros((N, H), dtype=dtype)  # gradient flowing into h_t from step t+1
    tmp = np.empty((N, H), dtype=dtype)
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        dat = da[t]
        np.add(dh[:, t], dprev, out=dat)
        ht = hs[t + 1]
        np.multiply(ht, ht, out=tmp)
        np.subtract(1, tmp, out=tmp)
        dat *= tmp  # da_t = dh_t * (1 - h_t^2)
        np.matmul(dat, WhT, out=dprev)
    # Hoisted: all weight gradients and dx as single GEMMs over the T*N rows.
    da2 = da.reshape(T * N, H)
    dx = np.ascontiguousarray((da2 @ Wx.T).reshape(T, N, D).transpose(1, 0, 2))  # (N, T, D)
    dWxb = x1.reshape(T * N, D + 1).T @ da2  # (D+1, H) = [dWx; db]
    dWx, db = dWxb[:D], dWxb[D]  # (D, H), (H,)
    dWh = hs[:T].reshape(T * N, H).T @ da2  # (H, H); hs[t] = h_{t-1}
    return dx, dprev, dWx, dWh, db
