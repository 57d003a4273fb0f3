"""Attention layers: each query mixes values with weights from its match to keys.

* **Additive attention** (Bahdanau et al. 2015; Show, Attend and Tell): ``N`` batch, ``L``
  grid cells, ``D`` cell-feature size, ``H`` query (hidden) size, ``K`` attention size; the
  softmax runs over the ``L`` cells, with an optional boolean mask (N, L) (False: the cell
  gets weight exactly 0).
* **Scaled dot-product attention** (Vaswani et al. 2017): ``Tq`` queries, ``Tk`` keys and
  values, ``E`` query/key size, ``Ev`` value size; any leading batch dimensions ``...``
  (e.g. ``(N, heads)``).
"""

from __future__ import annotations

import math

import numpy as np

from captionlab.nn.functional import (
    check_ndim,
    check_shape,
    masked_softmax,
    masked_softmax_backward,
)


def is_square_grid(L: int) -> bool:
    """Whether ``L`` cells form a square grid, ``L = s * s`` with ``s >= 1``."""
    return L > 0 and math.isqrt(L) ** 2 == L


def cell_locations(L: int, dtype=np.float64) -> np.ndarray:
    """The centres of ``L = s * s`` row-major grid cells (top-left first) as (L, 2) ``(x, y)``
    in [-1, 1] (x to the right, y down); ValueError when ``L`` is not a square."""
    if not is_square_grid(L):
        raise ValueError(f"cell locations need a square grid of s*s cells, got L={L}")
    side = math.isqrt(L)
    centre = (2 * np.arange(side) + 1) / side - 1  # (s,)
    ys, xs = np.meshgrid(centre, centre, indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1).astype(dtype)


# additive attention
#
# Bahdanau et al. 2015; Show, Attend and Tell (Xu et al. 2015). The grid's projection
# A_proj = A @ Wa does not depend on the query, so a caller that attends to the same grid
# at every time step computes it once per image and passes it in.


def additive_scores(
    A_proj: np.ndarray, q: np.ndarray, w: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The scoring core of additive attention, shared with the captioner's fast path.

    Args:
        A_proj: the grid's projection ``A @ Wa``, (N, L, K).
        q: the query's projection ``h @ Wh + b``, (N, K).
        w: scoring vector, (K,).
        out: optional (N, L, K) buffer for ``th``.

    Returns:
        ``(th, e)``: ``th = tanh(A_proj + q)`` (N, L, K) and the scores ``e = th @ w`` (N, L).
    """
    th = np.add(A_proj, q[:, None, :], out=out)  # (N, L, K)
    # NumPy's own tanh: stable, and SIMD-vectorised in NumPy 2 (here 4x faster in float32
    # and 1.8x in float64 than 2 sigmoid(2x) - 1; this is the layer's hottest loop).
    np.tanh(th, out=th)
    e = th @ w  # (N, L)
    return th, e


def additive_scores_backward(de: np.ndarray, th: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Backward of :func:`additive_scores` to its pre-activation.

    Args:
        de: gradient of the scores, (N, L).
        th: ``tanh(A_proj + q)`` from the forward, (N, L, K).
        w: scoring vector, (K,).

    Returns:
        ``dpre = de w (1 - th^2)`` (N, L, K): the gradient of ``A_proj`` (and, summed over
        the cells, of ``q``).
    """
    dpre = th * th  # (N, L, K)
    np.subtract(1, dpre, out=dpre)
    dpre *= w
    dpre *= de[:, :, None]
    return dpre


def additive_attention_forward(
    A: np.ndarray,
    A_proj: np.ndarray,
    h: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
    w: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Additive (Bahdanau / Show, Attend and Tell) attention of a query over a grid::

        e     = tanh(A_proj + h @ Wh + b) @ w         (N, L)    A_proj = A @ Wa
        alpha = softmax over the L cells of e         (N, L)    masked cells: alpha = 0
        z     = sum_l alpha_l * A_l                   (N, D)

    Args:
        A: the grid, (N, L, D).
        A_proj: ``A @ Wa`` (N, L, K), computed once per image by the caller.
        h: the query (e.g. the previous hidden state), (N, H).
        Wh: query projection, (H, K).
        b: bias, (K,).
        w: scoring vector, (K,).
        mask: None (every cell counts) or boolean (N, L), False = cell left out; every row
            must keep at least one cell.

    Returns:
        ``(z, alpha, cache)``: the context z (N, D), the attention weights alpha (N, L)
        (rows sum to 1) and the cache for :func:`additive_attention_backward`.
    """
    check_ndim("A", A, 3, "(N, L, D)")
    N, L, _ = A.shape
    check_ndim("Wh", Wh, 2, "(H, K)")
    H, K = Wh.shape
    check_shape("A_proj", A_proj, (N, L, K), "(N, L, K)")
    check_shape("h", h, (N, H), "(N, H)")
    check_shape("b", b, (K,), "(K,)")
    check_shape("w", w, (K,), "(K,)")
    if mask is not None:
        check_shape("mask", mask, (N, L), "(N, L)")
        if not np.all(np.any(mask, axis=1)):
            raise ValueError("mask must keep at least one cell of every row, got an empty row")
    q = h @ Wh + b  # (N, K)
    th, e = additive_scores(A_proj, q, w)  # (N, L, K), (N, L)
    alpha = masked_softmax(e, mask)  # (N, L)
    z = np.matmul(alpha[:, None, :], A)[:, 0]  # (N, D)
    return z, alpha, (A, h, Wh, w, th, alpha)


def additive_attention_backward(
    dz: np.ndarray, dalpha: np.ndarray | None, cache: tuple
) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`additive_attention_forward`.

    Args:
        dz: gradient of the context, (N, D).
        dalpha: gradient of the attention weights from elsewhere (e.g. a penalty on them),
            (N, L), or None for none.
        cache: from the forward pass.

    Returns:
        ``(dA, dA_proj, dh, dWh, db, dw)`` of shapes (N, L, D), (N, L, K), (N, H), (H, K),
        (K,), (K,). ``dA`` is the gradient through the weighted sum only; the caller adds
        ``dA_proj @ Wa.T`` (and gets ``dWa = A^T dA_proj``) for the projection it made.
    """
    A, h, Wh, w, th, alpha = cache
    N, L, D = A.shape
    check_shape("dz", dz, (N, D), "(N, D)")
    dalpha_total = np.matmul(A, dz[:, :, None])[:, :, 0]  # (N, L)
    if dalpha is not None:
        check_shape("dalpha", dalpha, (N, L), "(N, L)")
        dalpha_total += dalpha
    dA = alpha[:, :, None] * dz[:, None, :]  # (N, L, D)
    de = masked_softmax_backward(dalpha_total, alpha)  # (N, L); 0 on masked cells
    dw = np.tensordot(de, th, axes=([0, 1], [0, 1]))  # (K,)
    dA_proj = additive_scores_backward(de, th, w)  # (N, L, K)
    dq = dA_proj.sum(axis=1)  # (N, K)
    dh = dq @ Wh.T  # (N, H)
    dWh = h.T @ dq  # (H, K)
    db = dq.sum(axis=0)  # (K,)
    return dA, dA_proj, dh, dWh, db, dw


# ----------------------------------------------------------------------------------------
# scaled dot-product attention
# ----------------------------------------------------------------------------------------
def scaled_dot_product_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    dropout_mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Scaled dot-product attention (Vaswani et al., 2017)::

        weights = masked_softmax(q @ k^T / sqrt(E), mask)     # (..., Tq, Tk)
        out     = (weights * dropout_mask) @ v                # (..., Tq, Ev)

    A query whose keys are all masked gets all-zero weights and a zero output (defined so,
    instead of the NaN of ``softmax`` over ``-inf`` everywhere); its gradients are zero.

    Args:
        q: queries of shape (..., Tq, E).
        k: keys of shape (..., Tk, E), the same leading dimensions as ``q``.
        v: values of shape (..., Tk, Ev).
        mask: ``None`` or a boolean (or 0/1) array broadcastable to (..., Tq, Tk);
            ``mask[..., i, j]`` false or 0 means query ``i`` may not attend to key ``j``.
        dropout_mask: ``None`` or the inverted-dropout multiplier (0, or ``1/(1-p)``) of
            the weights, broadcastable to (..., Tq, Tk); the returned ``weights`` are the
            ones before dropout.
        out: ``None`` or an array of shape (..., Tq, Ev) to write the output into (any
            strides, e.g. the heads' view of a merged (N, Tq, h*Ev) buffer).

    Returns:
        ``(out, weights, cache)``: out (..., Tq, Ev) and the attention weights
        (..., Tq, Tk), each row summing to 1 (0 for a fully masked row).
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            "q, k, v must have shapes (..., Tq, E), (..., Tk, E), (..., Tk, Ev) with the "
            f"same number of dimensions, got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2]:
        raise ValueError(
            f"q, k, v must share leading dimensions, got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(
            "q (..., Tq, E), k (..., Tk, E), v (..., Tk, Ev) disagree: "
            f"got {q.shape}, {k.shape}, {v.shape}"
        )
    E = q.shape[-1]
    scale = 1.0 / np.sqrt(E)
    scores = q @ np.swapaxes(k, -1, -2)  # (..., Tq, Tk)
    scores *= scale
    weights = masked_softmax(scores, mask)  # (..., Tq, Tk)
    mixed = weights if dropout_mask is None else weights * dropout_mask  # (..., Tq, Tk)
    if out is not None:
        check_shape("out", out, (*q.shape[:-1], v.shape[-1]), "(..., Tq, Ev)")
    out = np.matmul(mixed, v, out=out)  # (..., Tq, Ev)
    return out, weights, (q, k, v, weights, mixed, dropout_mask, scale)


def _zeros_into(buffer: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """``buffer`` zeroed (a caller's output view), or new zeros shaped like ``like``."""
    if buffer is None:
        return np.zeros_like(like)
    buffer[...] = 0
    return buffer


def scaled_dot_product_attention_backward(
    dout: np.ndarray,
    dweights: np.ndarray | None,
    cache: tuple,
    *,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    hold_weights: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`scaled_dot_product_attention_forward`::

        dv      = mixed^T @ dout
        dW      = (dout @ v^T) * dropout_mask + dweights
        dscores = weights * (dW - sum_j dW * weights) / sqrt(E)
        dq      = dscores @ k        dk = dscores^T @ q

    With ``hold_weights`` the weights are constants: ``dq = dk = 0`` (nothing flows back
    through the scores; ``dweights`` is ignored), only ``dv`` (for explanations, see
    :meth:`captionlab.captioning.CaptioningTransformer.loss`).

    Args:
        dout: gradient with respect to out, shape (..., Tq, Ev).
        dweights: gradient with respect to the returned weights, shape (..., Tq, Tk), or
            ``None`` when the weights were not used.
        cache: from the forward pass.
        out: ``None`` or three arrays of the shapes of dq, dk, dv to write them into (any
            strides, e.g. views of one merged buffer).

    Returns:
        ``(dq, dk, dv)`` of shapes (..., Tq, E), (..., Tk, E), (..., Tk, Ev).
    """
    q, k, v, weights, mixed, dropout_mask, scale = cache
    expected = (*q.shape[:-1], v.shape[-1])
    if np.shape(dout) != expected:
        raise ValueError(f"dout must have shape (..., Tq, Ev) = {expected}, got {np.shape(dout)}")
    if dweights is not None and np.shape(dweights) != weights.shape:
        raise ValueError(
            f"dweights must have shape (..., Tq, Tk) = {weights.shape}, got {np.shape(dweights)}"
        )
    dq, dk, dv = (None, None, None) if out is None else out
    if out is not None:
        check_shape("out[0]", dq, q.shape, "(..., Tq, E)")
        check_shape("out[1]", dk, k.shape, "(..., Tk, E)")
        check_shape("out[2]", dv, v.shape, "(..., Tk, Ev)")
    dv = np.matmul(np.swapaxes(mixed, -1, -2), dout, out=dv)  # (..., Tk, Ev)
    if hold_weights:
        return _zeros_into(dq, q), _zeros_into(dk, k), dv
    dw = dout @ np.swapaxes(v, -1, -2)  # (..., Tq, Tk)
    if dropout_mask is not None:
        dw *= dropout_mask
    if dweights is not None:
        dw += dweights
    dscores = masked_softmax_backward(dw, weights)  # (..., Tq, Tk)
    dscores *= scale
    dq = np.matmul(dscores, k, out=dq)  # (..., Tq, E)
    dk = np.matmul(np.swapaxes(dscores, -1, -2), q, out=dk)  # (..., Tk, E)
    return dq, dk, dv
