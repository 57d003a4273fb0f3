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

The sequence functions hoist the input projection of all steps into one GEMM (the bias
rides in it as a column of ones on x), do the gate arithmetic in place in preallocated
time-major buffers (each step's slice contiguous), and compute dx, [dWx; db] and dWh as
single GEMMs after the backward loop; only ``h @ Wh`` and ``da @ Wh.T`` stay per step.
The sigmoid and tanh are ``1 / (1 + exp(-a))`` and ``2 sigmoid(2a) - 1``, with the
factors -1 and -2 folded into scaled copies of the weights.
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
    sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
    i, f, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H]
    g = np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])
    next_c = f * prev_c  # (N, H)
    next_c += i * g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c  # (N, H)
    return next_h, next_c, (i, f, o, g, tanh_c)


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
    dc = dnext_c + dnext_h * o * (1 - tanh_c * tanh_c)  # (N, H)
    do = dnext_h * tanh_c
    di = dc * g
    df = dc * prev_c
    dg = dc * i
    da = np.concatenate(
        [di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g * g)], axis=1
    )  # (N, 4H)
    return da, dc * f


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
    next_h, next_c, gates = lstm_cell_forward(x @ Wx + b, prev_h, prev_c, Wh)
    cache = (x, prev_h, prev_c, Wx, Wh, *gates)
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
    x, prev_h, prev_c, Wx, Wh, *gates = cache
    check_shape("dnext_h", dnext_h, prev_h.shape, "(N, H)")
    check_shape("dnext_c", dnext_c, prev_c.shape, "(N, H)")
    da, dprev_c = lstm_gates_backward(dnext_h, dnext_c, prev_c, gates)  # (N, 4H), (N, H)
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, 4H)
    dWh = prev_h.T @ da  # (H, 4H)
    db = da.sum(axis=0)  # (4H,)
    return dx, dprev_h, dprev_c, dWx, dWh, db


def _gate_scale(H: int, dtype: np.dtype) -> np.ndarray:
    """(4H,) factors folded into the weights: -1 for i, f, o (sigmoid), -2 for g (tanh)."""
    scale = np.full(4 * H, -1, dtype=dtype)
    scale[3 * H :] = -2
    return scale


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
    # Internally time-major (T, N, ...), so that each step's slices are contiguous.
    # The weights are copied with the gate columns scaled by -1 (i, f, o) or -2 (g), exactly,
    # so that the GEMMs produce what the in-place sigmoid/tanh kernels take.
    scale = _gate_scale(H, dtype)
    Wxb_s = np.concatenate([Wx, b[None]], dtype=dtype)  # (D+1, 4H)
    Wxb_s *= scale
    Wh_s = Wh * scale
    x1 = time_major_with_ones(x, dtype)  # (T, N, D+1)
    # Hoisted: the input projection of all steps, bias included, as one GEMM. The buffer
    # then holds the gate activations i, f, o, g of every step, computed in place.
    gates = (x1.reshape(T * N, D + 1) @ Wxb_s).reshape(T, N, 4 * H)  # (T, N, 4H)
    hs = np.empty((T + 1, N, H), dtype=dtype)  # hs[0] = h0, hs[t + 1] = h_t
    hs[0] = h0
    c = np.empty((T, N, H), dtype=dtype)
    tanh_c = np.empty((T, N, H), dtype=dtype)
    tmp = np.empty((N, 4 * H), dtype=dtype)
    ig = np.empty((N, H), dtype=dtype)
    for t in range(T):
        at = gates[t]  # (N, 4H)
        np.matmul(hs[t], Wh_s, out=tmp)
        at += tmp  # -a for i, f, o and -2a for g
        sigmoid_from_negated_(at)  # i, f, o; and sigmoid(2 a_g) in the g columns
        g = at[:, 3 * H :]
        g *= 2
        g -= 1  # g = tanh(a_g) = 2 sigmoid(2 a_g) - 1
        i, f, o = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H]
        ct = c[t]
        if t == 0:
            np.multiply(i, g, out=ct)  # c_{-1} = 0
        else:
            np.multiply(f, c[t - 1], out=ct)
            np.multiply(i, g, out=ig)
            ct += ig  # c_t = f * c_{t-1} + i * g
        tct = tanh_c[t]
        np.multiply(ct, -2, out=tct)
        tanh_from_negated_double_(tct)
        np.multiply(o, tct, out=hs[t + 1])  # h_t = o * tanh(c_t)
    h = np.ascontiguousarray(hs[1:].transpose(1, 0, 2))  # (N, T, H)
    return h, (x1, Wx, Wh, gates, c, tanh_c, hs)


def lstm_backward(dh: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`lstm_forward`.

    Args:
        dh: upstream gradients of all hidden states, shape (N, T, H) (not including the
            gradient that flows back from later steps: this function adds that).
        cache: from the forward pass.

    Returns:
        ``(dx, dh0, dWx, dWh, db)`` of shapes (N, T, D), (N, H), (D, 4H), (H, 4H), (4H,).
    """
    x1, Wx, Wh, gates, c, tanh_c, hs = cache
    T, N, D = x1.shape[0], x1.shape[1], x1.shape[2] - 1
    H = hs.shape[2]
    check_shape("dh", dh, (N, T, H), "(N, T, H)")
    dtype = gates.dtype
    da = np.empty((T, N, 4 * H), dtype=dtype)  # pre-activation gradients of all steps
    dprev_h = np.zeros((N, H), dtype=dtype)
    dc = np.zeros((N, H), dtype=dtype)  # gradient of c_t, carried backwards
    dht = np.empty((N, H), dtype=dtype)
    tmp = np.empty((N, H), dtype=dtype)
    WhT = Wh.T
    for t in range(T - 1, -1, -1):
        at = gates[t]
        i, f, o, g = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :]
        tct = tanh_c[t]
        dat = da[t]
        di, df, do, dg = dat[:, :H], dat[:, H : 2 * H], dat[:, 2 * H : 3 * H], dat[:, 3 * H :]
        np.add(dh[:, t], dprev_h, out=dht)
        # dc += dh * o * (1 - tanh(c)^2)
        np.multiply(tct, tct, out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dht
        dc += tmp
        # do = dh * tanh(c) * o(1-o)
        np.multiply(dht, tct, out=do)
        np.subtract(1, o, out=tmp)
        tmp *= o
        do *= tmp
        # di = dc * g * i(1-i)
        np.multiply(dc, g, out=di)
        np.subtract(1, i, out=tmp)
        tmp *= i
        di *= tmp
        # df = dc * c_{t-1} * f(1-f)
        if t > 0:
            np.multiply(dc, c[t - 1], out=df)
            np.subtract(1, f, out=tmp)
            tmp *= f
            df *= tmp
        else:
            df.fill(0)  # c_{-1} = 0
        # dg = dc * i * (1-g^2)
        np.multiply(g, g, out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= i
        np.multiply(dc, tmp, out=dg)
        dc *= f  # dc_{t-1}
        np.matmul(dat, WhT, out=dprev_h)
    # Hoisted: all weight gradients and dx as single GEMMs over the T*N rows.
    da2 = da.reshape(T * N, 4 * H)
    dx = np.ascontiguousarray((da2 @ Wx.T).reshape(T, N, D).transpose(1, 0, 2))  # (N, T, D)
    dWxb = x1.reshape(T * N, D + 1).T @ da2  # (D+1, 4H) = [dWx; db]
    dWx, db = dWxb[:D], dWxb[D]  # (D, 4H), (4H,)
    dWh = hs[:T].reshape(T * N, H).T @ da2  # (H, 4H); hs[t] = h_{t-1}
    return dx, dprev_h, dWx, dWh, db
