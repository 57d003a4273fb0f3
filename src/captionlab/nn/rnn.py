"""Vanilla (Elman) RNN with a tanh non-linearity: one step, and a whole sequence.

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size.

Recurrence (the same as ``torch.nn.RNN(nonlinearity="tanh")`` with ``b = b_ih + b_hh``)::

    h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)

Backward, with ``a_t`` the pre-activation and ``da_t = dh_t * (1 - h_t**2)``::

    dx_t = da_t @ Wx.T    dh_{t-1} = da_t @ Wh.T    dWx += x_t.T @ da_t
    dWh += h_{t-1}.T @ da_t    db += sum_n da_t

The sequence functions are not a loop over the step functions: the input projection of all
steps is one GEMM before the loop, and dx, dWx, dWh, db are single GEMMs (or sums) over all
steps after the backward loop; only ``h @ Wh`` and ``da @ Wh.T`` stay inside the loops.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn.functional import check_recurrent, check_shape


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
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)  # (N, H)
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
        :func:`rnn_backward` (which holds ``h``: do not modify it in place before backward).
    """
    N, T, D, H = check_recurrent(x, "h0", h0, Wx, Wh, b, gates=1, sequence=True)
    # Hoisted: the input projection of all steps as one GEMM; h starts as x @ Wx + b.
    h = (x.reshape(N * T, D) @ Wx).reshape(N, T, H)  # (N, T, H)
    h += b
    tmp = np.empty((N, H), dtype=h.dtype)
    prev = h0
    for t in range(T):
        ht = h[:, t]  # (N, H) view; rows strided, BLAS takes it as is
        np.matmul(prev, Wh, out=tmp)
        ht += tmp
        np.tanh(ht, out=ht)
        prev = ht
    return h, (x, h0, Wx, Wh, h)


def rnn_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`rnn_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db)`` of shapes (N, T, D), (N, H), (D, H), (H, H), (H,).
    """
    x, h0, Wx, Wh, h = cache
    N, T, D = x.shape
    H = h0.shape[1]
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = np.result_type(dh, h)
    da = np.empty((N, T, H), dtype=dtype)  # gradients of the pre-activations, all steps
    dprev = np.zeros((N, H), dtype=dtype)  # gradient flowing into h_{t} from step t+1
    tmp = np.empty((N, H), dtype=dtype)
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        dat = da[:, t]
        np.add(dh[:, t], dprev, out=dat)
        ht = h[:, t]
        np.multiply(ht, ht, out=tmp)
        np.subtract(1, tmp, out=tmp)
        dat *= tmp  # da_t = dh_t * (1 - h_t^2)
        np.matmul(dat, WhT, out=dprev)
    # Hoisted: all weight gradients and dx as single GEMMs over the N*T rows.
    hprev = np.empty((N, T, H), dtype=h.dtype)  # h_{t-1} for every t
    hprev[:, 0] = h0
    hprev[:, 1:] = h[:, :-1]
    da2 = da.reshape(N * T, H)
    dx = (da2 @ Wx.T).reshape(N, T, D)
    dWx = x.reshape(N * T, D).T @ da2  # (D, H)
    dWh = hprev.reshape(N * T, H).T @ da2  # (H, H)
    db = da2.sum(axis=0)  # (H,)
    return dx, dprev, dWx, dWh, db
