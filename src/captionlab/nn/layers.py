"""Affine, word-embedding and temporal layers, and the masked temporal softmax loss.

Dimensions: ``N`` batch, ``T`` time, ``D`` input size, ``M`` output size, ``V`` vocabulary,
``W`` word-vector size. Each layer is a pure ``*_forward`` returning ``(out, cache)`` and a
``*_backward`` taking ``(dout, cache)`` and returning gradients in the order of the
forward's inputs (cs231n assignment 3). Floating arrays keep their dtype.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn import kernels
from captionlab.nn.functional import check_ndim, check_shape


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Fully connected layer ``out = x.reshape(N, D) @ w + b``.

    Args:
        x: input of shape (N, d_1, ..., d_k) with ``D = d_1 * ... * d_k``.
        w: weights of shape (D, M).
        b: bias of shape (M,).

    Returns:
        out of shape (N, M) and the cache ``(x, w, b)``.
    """
    if np.ndim(x) < 1:
        raise ValueError(f"x must have shape (N, d_1, ..., d_k), got {np.shape(x)}")
    N = x.shape[0]
    check_ndim("w", w, 2, "(D, M)")
    D, M = w.shape
    if np.prod(x.shape[1:], dtype=np.int64) != D:
        raise ValueError(
            f"x must have shape (N, d_1, ..., d_k) with d_1*...*d_k = D = {D}, got {x.shape}"
        )
    check_shape("b", b, (M,), "(M,)")
    out = x.reshape(N, D) @ w + b  # (N, M)
    return out, (x, w, b)


def affine_backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`affine_forward`.

    Args:
        dout: upstream gradient of shape (N, M).
        cache: from the forward pass.

    Returns:
        ``(dx, dw, db)`` of shapes (N, d_1, ..., d_k), (D, M), (M,).
    """
    x, w, _b = cache
    N = x.shape[0]
    check_shape("dout", dout, (N, w.shape[1]), "(N, M)")
    x2 = x.reshape(N, -1)  # (N, D)
    dx = (dout @ w.T).reshape(x.shape)
    dw = x2.T @ dout  # (D, M)
    db = dout.sum(axis=0)  # (M,)
    return dx, dw, db


def word_embedding_forward(x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Look up word vectors: ``out[n, t] = W[x[n, t]]``.

    Args:
        x: integer word indices of shape (N, T), each in ``[0, V)``.
        W: word vectors of shape (V, W).

    Returns:
        out of shape (N, T, W) and the cache ``(x, W)``.
    """
    x = np.asarray(x)
    check_ndim("x", x, 2, "(N, T)")
    check_ndim("W", W, 2, "(V, W)")
    if x.dtype.kind not in "iu":
        raise ValueError(f"x must hold integer word indices, got dtype {x.dtype}")
    V = W.shape[0]
    if x.size and (x.min() < 0 or x.max() >= V):
        raise ValueError(
            f"x must hold indices in [0, V) = [0, {V}), got values in [{x.min()}, {x.max()}]"
        )
    out = W[x]  # (N, T, W)
    return out, (x, W)


def word_embedding_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """Backward pass of :func:`word_embedding_forward`.

    A word that occurs several times receives the sum of its gradients (a scatter-add:
    ``np.add.at`` in the NumPy kernels; plain fancy-index assignment would keep only the
    last one).

    Args:
        dout: upstream gradient of shape (N, T, W).
        cache: from the forward pass.

    Returns:
        dW of shape (V, W).
    """
    x, W = cache
    check_shape("dout", dout, (*x.shape, W.shape[1]), "(N, T, W)")
    dtype = np.result_type(W, dout)
    dW = np.zeros(W.shape, dtype=dtype)  # (V, W)
    rows = np.ascontiguousarray(x, dtype=np.intp).reshape(-1)  # (N*T,)
    src = np.ascontiguousarray(dout, dtype=dtype).reshape(rows.size, W.shape[1])  # (N*T, W)
    kernels.active().scatter_add_rows(rows, src, dW)  # dW[x[n, t]] += dout[n, t]
    return dW


def temporal_affine_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """The same affine map at every time step: ``out[:, t] = x[:, t] @ w + b``.

    Args:
        x: input of shape (N, T, D).
        w: weights of shape (D, M).
        b: bias of shape (M,).

    Returns:
        out of shape (N, T, M) and the cache ``(x, w, b, out)``.
    """
    check_ndim("x", x, 3, "(N, T, D)")
    N, T, D = x.shape
    check_shape("w", w, (D, None), "(D, M)")
    M = w.shape[1]
    check_shape("b", b, (M,), "(M,)")
    out = (x.reshape(N * T, D) @ w).reshape(N, T, M)  # (N, T, M)
    out += b
    return out, (x, w, b, out)


def temporal_affine_backward(
    dout: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`temporal_affine_forward`.

    Args:
        dout: upstream gradient of shape (N, T, M).
        cache: from the forward pass.

    Returns:
        ``(dx, dw, db)`` of shapes (N, T, D), (D, M), (M,).
    """
    x, w, _b, _out = cache
    N, T, D = x.shape
    M = w.shape[1]
    check_shape("dout", dout, (N, T, M), "(N, T, M)")
    dout2 = dout.reshape(N * T, M)  # (N*T, M)
    dx = (dout2 @ w.T).reshape(N, T, D)
    dw = x.reshape(N * T, D).T @ dout2  # (D, M)
    db = dout2.sum(axis=0)  # (M,)
    return dx, dw, db


def temporal_softmax_loss(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, verbose: bool = False
) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy at every time step, masked, summed over time, mean over N.

    ``loss = -(1/N) * sum_{n,t} mask[n,t] * log softmax(x[n,t])[y[n,t]]``. Positions where
    ``mask`` is False (the ``<NULL>`` padding) add nothing to the loss and get zero gradient.

    Args:
        x: scores of shape (N, T, V).
        y: integer targets of shape (N, T), each in ``[0, V)``.
        mask: boolean (or 0/1) array of shape (N, T): which positions count.
        verbose: print the shape of the gradient (cs231n compatibility).

    Returns:
        ``(loss, dx)``: the loss as a float and its gradient of shape (N, T, V), in x's dtype.
    """
    check_ndim("x", x, 3, "(N, T, V)")
    N, T, V = x.shape
    check_shape("y", y, (N, T), "(N, T)")
    check_shape("mask", mask, (N, T), "(N, T)")
    y_flat = np.asarray(y).reshape(N * T)
    if y_flat.size and (y_flat.min() < 0 or y_flat.max() >= V):
        raise ValueError(
            f"y must hold indices in [0, V) = [0, {V}), got values in "
            f"[{y_flat.min()}, {y_flat.max()}]"
        )
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    weight = np.asarray(mask).reshape(N * T).astype(dtype) / dtype.type(N)  # (N*T,)
    x_flat = np.ascontiguousarray(x, dtype=dtype).reshape(N * T, V)
    dx_flat = np.empty((N * T, V), dtype=dtype)
    # One kernel: log-softmax of each row, the weighted loss, and the gradient
    # (softmax - onehot) * mask / N into dx_flat.
    loss = kernels.active().softmax_cross_entropy(
        x_flat, np.ascontiguousarray(y_flat, dtype=np.intp), weight, dx_flat
    )
    if verbose:
        print("dx_flat: ", dx_flat.shape)
    return float(loss), dx_flat.reshape(N, T, V)
