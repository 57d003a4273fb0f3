"""Numerically stable primitives and shape checks, written once and imported everywhere.

* ``sigmoid(x) = 1 / (1 + exp(-x))``. ``exp(-x)`` overflows to ``inf`` for very negative
  ``x`` (``x < -88`` in float32), and ``1 / (1 + inf) = 0`` is the right answer, so the
  overflow (and the underflow at the other end) is expected and silenced; there is no
  cancellation, so even tiny results keep their relative accuracy. It is computed in
  place, which the fast layers rely on.
* ``tanh(x) = 2 * sigmoid(2x) - 1``, the same way (exact to about one ulp of 1, absolute;
  about twice as fast as ``np.tanh`` in float64 on x86).
* ``log_softmax(x) = x - max(x) - log(sum(exp(x - max(x))))`` along the last axis.
* ``masked_softmax(x, mask)``: softmax along the last axis over the entries where ``mask``
  is true, with max subtraction; masked entries get exactly 0 and a row with no entry left
  is all zeros (not NaN). ``masked_softmax_backward`` is its backward pass.
* ``Lengths``: a batch of sequences of different lengths, longest first (what the
  recurrences' ``lengths=`` is checked into: rows per step, the real steps' rows).

The ``*_from_negated_`` helpers take the *negated* (and for tanh doubled) argument in place;
``sigmoid`` and ``tanh`` are built on them. The NumPy kernels of :mod:`captionlab.nn.kernels`
use these; the numba kernels compute the same expressions in the same order.

All functions keep the floating dtype they are given (float32 stays float32).
"""

from __future__ import annotations

import numpy as np


def sigmoid_from_negated_(a: np.ndarray) -> np.ndarray:
    """In place: ``a`` holds ``-x``; afterwards it holds ``sigmoid(x)``. Any shape."""
    with np.errstate(over="ignore", under="ignore"):
        np.exp(a, out=a)
    a += 1
    np.reciprocal(a, out=a)
    return a


def tanh_from_negated_double_(a: np.ndarray) -> np.ndarray:
    """In place: ``a`` holds ``-2x``; afterwards it holds ``tanh(x) = 2 sigmoid(2x) - 1``."""
    sigmoid_from_negated_(a)
    a *= 2
    a -= 1
    return a


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, stable for any input, elementwise.

    Args:
        x: array of any shape and floating dtype.
        out: optional array of the same shape to write into (may be ``x`` itself).

    Returns:
        ``sigmoid(x)``, same shape and dtype as ``x``.
    """
    x = np.asarray(x)
    if out is None:
        out = np.empty_like(x, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    np.negative(x, out=out)
    return sigmoid_from_negated_(out)


def tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``tanh(x) = 2 * sigmoid(2x) - 1`` elementwise, in x's dtype; ``out`` may be ``x``."""
    x = np.asarray(x)
    if out is None:
        out = np.empty_like(x, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    np.multiply(x, -2, out=out)
    return tanh_from_negated_double_(out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log of the softmax along the last axis, with max subtraction.

    Args:
        x: scores of shape (..., V).

    Returns:
        log-probabilities of shape (..., V), same dtype as ``x``.
    """
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def masked_softmax(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax along the last axis over the entries ``mask`` allows, stable.

    ``p[..., j] = mask[..., j] * exp(x[..., j] - m) / sum_k mask[..., k] * exp(x[..., k] - m)``
    with ``m`` the row's largest allowed score. Masked entries get exactly 0 (they are set
    to ``-inf`` before the exponential, so no large finite stand-in leaks through). A row
    whose entries are all masked is defined to be all zeros: it attends to nothing, and
    its gradient is zero (rather than the NaN of ``0 / 0``).

    Args:
        x: scores of shape (..., K), floating.
        mask: ``None`` (nothing masked) or a boolean (or 0/1) array broadcastable to
            ``x.shape``; false or 0 means "excluded".

    Returns:
        probabilities ``p`` of ``x``'s shape and dtype; each row sums to 1, or to 0 when
        fully masked.
    """
    x = np.asarray(x)
    if mask is None:
        p = x - np.max(x, axis=-1, keepdims=True)
    else:
        mask = np.asarray(mask, dtype=bool)
        p = np.where(mask, x, x.dtype.type(-np.inf))  # broadcast to x's shape
        m = np.max(p, axis=-1, keepdims=True)
        m[~np.isfinite(m)] = 0  # fully masked row: keep -inf - 0 = -inf, never inf - inf
        p -= m
    np.exp(p, out=p)
    s = np.sum(p, axis=-1, keepdims=True)
    s[s == 0] = 1  # a fully masked row stays all zeros
    p /= s
    return p


def masked_softmax_backward(dp: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Backward pass of :func:`masked_softmax`: ``dx = p * (dp - sum(dp * p))`` per row.

    Masked entries have ``p = 0`` and so get zero gradient; the mask is not needed.

    Args:
        dp: upstream gradient of shape (..., K).
        p: the forward output, shape (..., K).

    Returns:
        dx of shape (..., K), in the result dtype of ``dp`` and ``p``.
    """
    dx = dp * p
    dx -= p * np.sum(dx, axis=-1, keepdims=True)
    return dx


def check_shape(name: str, arr: np.ndarray, expected: tuple, dims: str) -> None:
    """Raise ``ValueError`` unless ``arr.shape`` matches ``expected``.

    Args:
        name: the argument's name, used in the message.
        arr: the array to check.
        expected: the expected shape; ``None`` entries match any size.
        dims: the shape in letters, e.g. ``"(N, T, D)"``, used in the message.
    """
    shape = np.shape(arr)
    if len(shape) != len(expected) or any(
        e is not None and e != s for e, s in zip(expected, shape, strict=False)
    ):
        want = tuple("?" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {dims} = {want}, got {tuple(shape)}")


def check_ndim(name: str, arr: np.ndarray, ndim: int, dims: str) -> None:
    """Raise ``ValueError`` unless ``arr`` has ``ndim`` dimensions (``dims`` names them)."""
    if np.ndim(arr) != ndim:
        raise ValueError(f"{name} must have shape {dims}, got {tuple(np.shape(arr))}")


def check_recurrence(
    xa: np.ndarray, h0: np.ndarray, Wh: np.ndarray, b: np.ndarray, gates: int
) -> tuple[int, int, int]:
    """Check the arguments of a recurrence given its input projections; return (N, T, H).

    Args:
        xa: input projections ``x @ Wx``, (N, T, gates*H).
        h0: initial hidden state, (N, H).
        Wh: hidden-to-hidden weights, (H, gates*H).
        b: bias, (gates*H,).
        gates: 1 for the RNN, 4 for the LSTM, 3 for the GRU.
    """
    g = "" if gates == 1 else str(gates)
    check_ndim("Wh", Wh, 2, f"(H, {g}H)")
    H = Wh.shape[0]
    check_shape("Wh", Wh, (H, gates * H), f"(H, {g}H)")
    check_ndim("xa", xa, 3, f"(N, T, {g}H)")
    N, T = xa.shape[:2]
    check_shape("xa", xa, (N, T, gates * H), f"(N, T, {g}H)")
    check_shape("h0", h0, (N, H), "(N, H)")
    check_shape("b", b, (gates * H,), f"({g}H,)")
    return N, T, H


def check_recurrent(
    x: np.ndarray,
    h_name: str,
    h: np.ndarray,
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    gates: int,
    sequence: bool,
) -> tuple[int, int, int, int]:
    """Check the arguments of a recurrent layer; return ``(N, T, D, H)`` (T = 1 for a step).

    Args:
        x: input, (N, T, D) when ``sequence`` else (N, D).
        h_name: the hidden-state argument's name (``"h0"`` or ``"prev_h"``).
        h: hidden state of shape (N, H).
        Wx: input-to-hidden weights, (D, gates*H).
        Wh: hidden-to-hidden weights, (H, gates*H).
        b: bias, (gates*H,).
        gates: 1 for the RNN, 4 for the LSTM, 3 for the GRU.
        sequence: whether ``x`` has a time axis.
    """
    g = "" if gates == 1 else str(gates)
    if sequence:
        check_ndim("x", x, 3, "(N, T, D)")
        N, T, D = x.shape
    else:
        check_ndim("x", x, 2, "(N, D)")
        (N, D), T = x.shape, 1
    check_ndim("Wh", Wh, 2, f"(H, {g}H)")
    H = Wh.shape[0]  # the hidden size is read from Wh; the other arguments must agree
    check_shape("Wh", Wh, (H, gates * H), f"(H, {g}H)")
    check_shape(h_name, h, (N, H), "(N, H)")
    check_shape("Wx", Wx, (D, gates * H), f"(D, {g}H)")
    check_shape("b", b, (gates * H,), f"({g}H,)")
    return N, T, D, H


class Lengths:
    """Sequences of different lengths in one batch, longest first (a packed batch).

    Row ``n`` of an ``(N, T, ...)`` batch runs only its first ``lengths[n]`` steps; with the
    rows sorted longest first, the rows that run step ``t`` are the first ``counts[t]``, so a
    recurrence works on a prefix of its buffers at each step: no gather, and the products of
    the steps past a row's end (padding) are never computed. The layers set the outputs at
    those positions to zero and ignore the gradients that arrive there.

    Attributes:
        lengths: (N,) int, non-increasing, each in [0, T].
        counts: (T,) int, ``counts[t]`` = the number of rows with ``lengths > t``.
        index: the flat positions ``n * T + t`` with ``t < lengths[n]``, in row order (the
            rows of an ``(N * T, ...)`` reshape that hold real steps).
    """

    def __init__(self, lengths: np.ndarray, N: int, T: int) -> None:
        lengths = np.asarray(lengths)
        check_shape("lengths", lengths, (N,), "(N,)")
        if lengths.size and lengths.dtype.kind not in "iu":
            raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
        lengths = lengths.astype(np.intp)
        if lengths.size and (lengths.min() < 0 or lengths.max() > T):
            raise ValueError(
                f"lengths must be in [0, T] = [0, {T}], got values from {lengths.min()} "
                f"to {lengths.max()}"
            )
        if np.any(np.diff(lengths) > 0):
            raise ValueError(
                "lengths must be non-increasing (sort the batch longest first), got "
                f"{np.array2string(lengths[:8], separator=', ')}{' ...' if N > 8 else ''}"
            )
        self.lengths = lengths
        self.N, self.T = N, T
        self.counts = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
        self._index: np.ndarray | None = None

    @classmethod
    def of(cls, lengths: np.ndarray | Lengths | None, N: int, T: int) -> Lengths | None:
        """``lengths`` checked into a ``Lengths`` (one already made for this N and T is taken
        as it is), or ``None`` when it is ``None`` or every row runs all ``T`` steps (the
        layers' plain path)."""
        if lengths is None:
            return None
        if isinstance(lengths, Lengths) and (lengths.N, lengths.T) == (N, T):
            packed = lengths
        else:
            packed = cls(lengths.lengths if isinstance(lengths, Lengths) else lengths, N, T)
        return None if np.all(packed.lengths == T) else packed

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            runs = np.arange(self.T)[None, :] < self.lengths[:, None]  # (N, T)
            self._index = np.flatnonzero(runs)
        return self._index

    def zero_padding(self, buf: np.ndarray) -> None:
        """In place: ``buf[n, t] = 0`` wherever ``t >= lengths[n]``; buf (N, T, ...)."""
        for t, n in enumerate(self.counts):
            if n < self.N:
                buf[n:, t] = 0

    def rows_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a2.T @ b2`` over the real steps only: a (N, T, K), b (N, T, M) -> (K, M).

        The padding rows hold zeros in one operand; gathering the real rows first costs a
        copy and saves their share of the product, which pays when there is padding."""
        K, M = a.shape[2], b.shape[2]
        a2, b2 = a.reshape(-1, K), b.reshape(-1, M)
        return a2[self.index].T @ b2[self.index]
