"""Attention layers: each query mixes the values with weights from its match to the keys.

Dimensions: ``Tq`` queries, ``Tk`` keys and values, ``E`` query/key size, ``Ev`` value size;
any leading batch dimensions ``...`` (e.g. ``(N, heads)``).
"""

from __future__ import annotations

import numpy as np

from captionlab.nn.functional import masked_softmax, masked_softmax_backward


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
    out = mixed @ v  # (..., Tq, Ev)
    return out, weights, (q, k, v, weights, mixed, dropout_mask, scale)


def scaled_dot_product_attention_backward(
    dout: np.ndarray, dweights: np.ndarray | None, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`scaled_dot_product_attention_forward`::

        dv      = mixed^T @ dout
        dW      = (dout @ v^T) * dropout_mask + dweights
        dscores = weights * (dW - sum_j dW * weights) / sqrt(E)
        dq      = dscores @ k        dk = dscores^T @ q

    Args:
        dout: gradient with respect to out, shape (..., Tq, Ev).
        dweights: gradient with respect to the returned weights, shape (..., Tq, Tk), or
            ``None`` when the weights were not used.
        cache: from the forward pass.

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
    dv = np.swapaxes(mixed, -1, -2) @ dout  # (..., Tk, Ev)
    dw = dout @ np.swapaxes(v, -1, -2)  # (..., Tq, Tk)
    if dropout_mask is not None:
        dw *= dropout_mask
    if dweights is not None:
        dw += dweights
    dscores = masked_softmax_backward(dw, weights)  # (..., Tq, Tk)
    dscores *= scale
    dq = dscores @ k  # (..., Tq, E)
    dk = np.swapaxes(dscores, -1, -2) @ q  # (..., Tk, E)
    return dq, dk, dv
