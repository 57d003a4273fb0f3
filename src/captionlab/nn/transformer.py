"""Transformer layers (Vaswani et al., 2017) with hand-written backward passes.

The layers of cs231n assignment 3 (2021 and later, ``transformer_layers.py``), written as
pure forward/backward pairs with a cache, and its classes ``PositionalEncoding`` and
``MultiHeadAttention`` over them.

Dimensions: ``N`` batch, ``S`` (or ``T``) target positions, ``L`` (or ``T``) source /
memory positions, ``E`` embedding size, ``h`` heads, ``d = E / h`` per head, ``F`` the
feed-forward size.

* **Dropout** is inverted dropout with ``p`` the probability of *dropping* (as
  ``torch.nn.Dropout``; cs231n assignment 2's ``dropout_param['p']`` is the keep
  probability instead): kept entries are scaled by ``1/(1-p)`` (p rounded to a multiple
  of 2^-16, see :func:`dropout_mask`), so the expectation is
  unchanged. Layers with dropout take ``dropout`` (p) and ``rng`` (a
  ``numpy.random.Generator``) and draw their masks from it in forward order; ``dropout=0``
  is evaluation mode. A fresh generator from a fixed seed makes a forward pass repeatable.
* **Linear maps** are ``x @ W + b`` with ``W`` (in, out), as every captionlab layer
  (``torch.nn.Linear`` stores ``W.T``).
* **Multi-head attention**: ``q, k, v = query Wq + bq, key Wk + bk, value Wv + bv``, each
  split into ``h`` heads of ``d`` columns (head ``i`` owns columns ``i*d:(i+1)*d``), scaled
  dot-product attention per head, heads concatenated and projected by ``Wo, bo``. Dropout
  acts on the attention weights (as ``torch.nn.MultiheadAttention`` and the assignment).
* **Decoder layer** (post-norm, ``torch.nn.TransformerDecoderLayer(norm_first=False,
  activation="relu")``)::

      x = LN1(x + Dropout(SelfAttention(x, x, x, tgt_mask)))
      x = LN2(x + Dropout(CrossAttention(x, memory, memory)))
      x = LN3(x + Dropout(W2 Dropout(ReLU(W1 x + b1)) + b2))

  The decoder layer projects ``q, k, v`` of its self-attention with one GEMM
  ``x @ [Wq | Wk | Wv]`` and ``k, v`` of its cross-attention with one GEMM
  ``memory @ [Wk | Wv]``; the backward passes do the same for the weight and input
  gradients.
* **Cell locations** (optional, a decoder layer over a square grid of ``L`` cells with
  centres ``P`` (L, 2), see :func:`captionlab.nn.attention.cell_locations`): the
  cross-attention block also reads *where* each head looked, the weighted mean of the
  cells' places, and adds it through ``W_loc`` (2h, E)::

      loc = [alpha_1 @ P | ... | alpha_h @ P]                  # (N, T, 2h), head i: (x, y)
      x   = LN2(x + Dropout(CrossAttention(x, memory, memory) + loc @ W_loc))

  ``alpha_i`` (N, T, L) are head ``i``'s attention weights before dropout.
* **Running location summary** (optional, on top of the cell locations): each position also
  reads a gated causal mean of the places the layer's heads looked at so far, so that a
  word sees where the layer looked at earlier words (the plain location read gives each
  word only its own look)::

      m_t  = alpha_t @ P                      # (N, h, 2) per position t, head by head
      g_t  = sigmoid(x1_t @ w_gate + b_gate)  # (N, h), x1 the cross-attention's query input
      S_t  = sum_{s<=t} g_s m_s / sum_{s<=t} g_s                          # (N, h, 2)
      x    = LN2(x1 + Dropout(CrossAttention(...) + loc @ W_loc + [S_1 | ... | S_h] @ W_sum))

  with ``w_gate`` (E, h), ``b_gate`` (h,), ``W_sum`` (2h, E): cumulative sums over T, so
  training stays parallel, and one running pair of sums per row and layer when decoding.
* **Coverage** (optional, Tu et al. 2016; See et al. 2017): each cross-attention head's
  scores are biased by how much the head already looked at each cell at the earlier
  positions, so that it can learn to turn to what it has not yet described::

      Z_i     = q_i k_i^T / sqrt(d)             # (N, T, L) head i's plain scores
      A0_i    = softmax(Z_i)                    # (N, T, L) its plain weights
      C_i[t]  = sum_{s<t} A0_i[s]               # (N, T, L) exclusive causal sum, C_i[0] = 0
      g_i     = c_i + q_i u_i / sqrt(d)         # (N, T) the coverage weight of each query
      alpha_i = softmax(Z_i + g_i * C_i)        # the weights used (and read by loc, S_t)

  with ``c`` (h,) the parameter ``cross_attn.c_cov``, one scalar per head, and ``u``
  ``cross_attn.u_cov`` (E,), head i's query direction ``u_i`` in columns ``i*d:(i+1)*d``
  (in effect cell l's key becomes ``k_l + C_i[t, l] u_i``: the query decides, word by word,
  whether to seek or avoid what the head has seen). Both start at 0 (the plain layer; the
  gradients there are not zero). ``C`` sums the *plain* weights, not ``alpha``, so there is
  no recurrence: one product with a strictly lower triangle of ones over T in training, one
  running sum (N, h, L) per row and layer when decoding.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn.attention import (
    _zeros_into,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from captionlab.nn.functional import (
    check_ndim,
    check_shape,
    masked_softmax,
    masked_softmax_backward,
    sigmoid,
)


# ----------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------
def dropout_mask(
    shape: tuple[int, ...], p: float, rng: np.random.Generator | None, dtype
) -> np.ndarray | None:
    """The inverted-dropout multiplier: 0 with probability ``p``, else ``1 / (1 - p)``.

    The mask is drawn as 16-bit integers (faster than drawing floats), so the probability
    of dropping is ``p`` rounded to a multiple of 2^-16 (0.1 becomes 0.100006); kept
    entries are scaled by the reciprocal of the actual keep probability, so the
    expectation is kept exactly.

    Args:
        shape: the shape of the mask.
        p: the probability of dropping, in [0, 1).
        rng: the generator to draw from; may be ``None`` only when ``p == 0``.
        dtype: the floating dtype of the mask.

    Returns:
        the mask of ``shape`` and ``dtype``, or ``None`` when ``p == 0`` (identity).
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if p == 0:
        return None
    if rng is None:
        raise ValueError(f"dropout p = {p} > 0 needs a random generator rng, got None")
    threshold = min(round(p * 65536), 65535)  # drop when u < threshold
    keep = 1 - threshold / 65536
    u = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    return np.multiply(u >= threshold, 1 / keep, dtype=np.dtype(dtype))


def dropout_forward(
    x: np.ndarray, p: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverted dropout ``out = x * mask``, ``mask`` from :func:`dropout_mask`.

    Args:
        x: input of any shape, floating.
        p: the probability of dropping, in [0, 1); 0 is the identity (evaluation mode).
        rng: the generator the mask is drawn from (needed when ``p > 0``).

    Returns:
        ``(out, cache)``: out of ``x``'s shape and dtype; the cache is the mask (or ``None``).
    """
    mask = dropout_mask(np.shape(x), p, rng, np.asarray(x).dtype)
    return (x if mask is None else x * mask), mask


def dropout_backward(dout: np.ndarray, cache: np.ndarray | None) -> np.ndarray:
    """Backward pass of :func:`dropout_forward`: ``dx = dout * mask``, shape of ``dout``."""
    return dout if cache is None else dout * cache


# ----------------------------------------------------------------------------------------
# layer normalization
# ----------------------------------------------------------------------------------------
def layernorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, ln_param: dict | None = None
) -> tuple[np.ndarray, tuple]:
    """Layer normalization over the last axis (cs231n assignment 2, Ba et al., 2016)::

        mu = mean(x, -1)   var = mean((x - mu)**2, -1)   (biased, as torch)
        xhat = (x - mu) / sqrt(var + eps)       out = gamma * xhat + beta

    Args:
        x: input of shape (..., D) (cs231n: (N, D)).
        gamma: scale of shape (D,).
        beta: shift of shape (D,).
        ln_param: dict with optional ``eps`` (default 1e-5).

    Returns:
        ``(out, cache)`` with out of shape (..., D).
    """
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have shape (..., D), got {x.shape}")
    D = x.shape[-1]
    check_shape("gamma", gamma, (D,), "(D,)")
    check_shape("beta", beta, (D,), "(D,)")
    xhat = x - _row_means(x)  # (..., D)
    return _normalize_centred(xhat, gamma, beta, (ln_param or {}).get("eps", 1e-5))


def _row_means(x: np.ndarray) -> np.ndarray:
    """The means of the last axis, (..., 1), as one GEMV (a single pass over x)."""
    D = x.shape[-1]
    return (x.reshape(-1, D) @ np.full(D, 1 / D, dtype=x.dtype)).reshape(*x.shape[:-1], 1)


def _normalize_centred(
    xhat: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, tuple]:
    """The rest of :func:`layernorm_forward` given ``x - mu``, which it scales in place to
    ``xhat`` (a temporary the caller owns)."""
    D = xhat.shape[-1]
    var = np.einsum("...i,...i->...", xhat, xhat)[..., None]  # row dot products, (..., 1)
    var /= D
    var += eps
    rstd = 1 / np.sqrt(var)  # (..., 1)
    xhat *= rstd
    out = xhat * gamma
    out += beta
    return out, (xhat, rstd, gamma)


def _add_layernorm(
    x: np.ndarray, y: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """``layernorm_forward(x + y)`` (eps 1e-5) for the residual connections, using the
    caller's temporary ``y`` (contiguous) for the sum and ``xhat``: no other full-size
    array but the output is allocated."""
    y += x
    y -= _row_means(y)
    return _normalize_centred(y, gamma, beta, 1e-5)


def layernorm_backward(
    dout: np.ndarray, cache: tuple, hold_scale: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of :func:`layernorm_forward`::

        g = dout * gamma
        dx = (g - mean(g, -1) - xhat * mean(g * xhat, -1)) / sqrt(var + eps)
        dgamma = sum(dout * xhat) over all but the last axis,  dbeta = sum(dout)

    With ``hold_scale`` the row scale ``1 / sqrt(var + eps)`` is a constant (the centring
    stays): ``dx = (g - mean(g, -1)) / sqrt(var + eps)`` (for explanations: conservative
    propagation's rule for layer norms, Ali et al. 2022).

    Args:
        dout: upstream gradient of shape (..., D).
        cache: from the forward pass.
        hold_scale: hold the row scale constant (above).

    Returns:
        ``(dx, dgamma, dbeta)`` of shapes (..., D), (D,), (D,).
    """
    xhat, rstd, gamma = cache
    check_shape("dout", dout, xhat.shape, "(..., D)")
    D = xhat.shape[-1]
    dout2 = dout.reshape(-1, D)  # (M, D)
    dgamma = np.einsum("ij,ij->j", dout2, xhat.reshape(-1, D))  # (D,)
    dbeta = np.sum(dout2, axis=0)  # (D,)
    dx = dout * gamma  # g, (..., D)
    mean_gx = None if hold_scale else np.einsum("...i,...i->...", dx, xhat)[..., None]
    dx -= _row_means(dx)
    if mean_gx is not None:  # (..., 1)
        mean_gx /= D
        dx -= xhat * mean_gx
    dx *= rstd
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------
# positional encoding
# ----------------------------------------------------------------------------------------
def sinusoidal_positional_encoding(T: int, E: int, dtype=np.float64) -> np.ndarray:
    """The sinusoidal table ``PE[i, 2k] = sin(i * 10000^(-2k/E))``,
    ``PE[i, 2k+1] = cos(i * 10000^(-2k/E))`` for positions ``i < T``.

    Args:
        T: number of positions.
        E: embedding size (an odd E ends with a sine column).
        dtype: the dtype of the table (computed in float64).

    Returns:
        PE of shape (T, E).
    """
    pos = np.arange(T, dtype=np.float64)[:, None]  # (T, 1)
    rate = 10000.0 ** (-np.arange(0, E, 2, dtype=np.float64) / E)  # (ceil(E/2),)
    pe = np.empty((T, E), dtype=np.float64)
    pe[:, 0::2] = np.sin(pos * rate)
    pe[:, 1::2] = np.cos(pos * rate[: E // 2])
    return pe.astype(dtype)


def positional_encoding_forward(
    x: np.ndarray, dropout: float = 0.0, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``out = Dropout(x + PE[:T])``, PE from :func:`sinusoidal_positional_encoding`.

    Args:
        x: embeddings of shape (N, T, E).
        dropout: the probability of dropping (0 in evaluation mode).
        rng: the generator of the dropout mask (needed when ``dropout > 0``).

    Returns:
        ``(out, cache)`` with out of shape (N, T, E), in x's dtype.
    """
    check_ndim("x", x, 3, "(N, T, E)")
    _, T, E = x.shape
    out = x + sinusoidal_positional_encoding(T, E, x.dtype)  # (N, T, E)
    return dropout_forward(out, dropout, rng)


def positional_encoding_backward(dout: np.ndarray, cache: np.ndarray | None) -> np.ndarray:
    """Backward pass of :func:`positional_encoding_forward`: dx (N, T, E) = dropout's."""
    return dropout_backward(dout, cache)


# ----------------------------------------------------------------------------------------
# multi-head attention
# ----------------------------------------------------------------------------------------
def _linear(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ W + b`` as one 2-D GEMM: x (..., I), W (I, O), b (O,) -> (..., O)."""
    out = x.reshape(-1, x.shape[-1]) @ W  # (M, O)
    out += b
    return out.reshape(*x.shape[:-1], W.shape[1])


def _linear_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`_linear`: dout (..., O) -> dx (..., I), dW (I, O), db (O,)."""
    dout2 = dout.reshape(-1, W.shape[1])  # (M, O)
    dx = (dout2 @ W.T).reshape(x.shape)
    dW = x.reshape(-1, W.shape[0]).T @ dout2  # (I, O)
    return dx, dW, dout2.sum(axis=0)


# A widening map (O > I: the feed-forward block's first layer, the q|k|v and k|v
# projections) carries its bias inside the GEMM: x1 = [x | 1] (M, I+1) times Wb = [W ; b]
# (I+1, O) gives x @ W + b, and the backward's x1^T @ dout gives [dW ; db] in one GEMM. This
# copies x once instead of making two more passes over the wider output (adding b, summing
# db).
def _stack_affine(Ws: list[np.ndarray], bs: list[np.ndarray]) -> np.ndarray:
    """``[W_1 | W_2 | ... ; b_1 | b_2 | ...]``: Ws (I, O_i), bs (O_i,) -> (I+1, sum O_i)."""
    return np.concatenate([np.concatenate(Ws, axis=1), np.concatenate(bs)[None]], axis=0)


def _with_ones(x: np.ndarray) -> np.ndarray:
    """x (..., I) -> x1 (M, I+1), x's rows with a last column of ones."""
    I = x.shape[-1]
    x1 = np.empty((x.size // I, I + 1), dtype=x.dtype)
    x1[:, :I] = x.reshape(-1, I)
    x1[:, I] = 1
    return x1


def _affine1(x1: np.ndarray, Wb: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """``x1 @ Wb`` = ``x @ W + b`` (see :func:`_stack_affine`), shaped (*lead, O)."""
    return (x1 @ Wb).reshape(*lead, Wb.shape[1])


def _affine1_backward(
    dout: np.ndarray, x1: np.ndarray, Wb: np.ndarray, x_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`_affine1`: dout (..., O) -> dx (x_shape), dW (I, O), db (O,)."""
    dout2 = dout.reshape(-1, Wb.shape[1])  # (M, O)
    dx = (dout2 @ Wb[:-1].T).reshape(x_shape)
    dWb = x1.T @ dout2  # (I+1, O): [dW ; db]
    return dx, dWb[:-1], dWb[-1]


def _split_heads(x: np.ndarray, h: int) -> np.ndarray:
    """(N, S, E) -> (N, h, S, d), a view: head ``i`` owns columns ``i*d:(i+1)*d``."""
    N, S, E = x.shape
    return x.reshape(N, S, h, E // h).transpose(0, 2, 1, 3)


def _heads_buffer(
    N: int, S: int, c: int, h: int, d: int, dtype
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A merged (N, S, c*h*d) buffer and the (N, h, S, d) head views of its ``c`` parts:
    the attention's products write each head straight into its columns, so no copy merges
    the heads."""
    buf = np.empty((N, S, c, h, d), dtype=dtype)
    return buf.reshape(N, S, c * h * d), [buf[:, :, i].transpose(0, 2, 1, 3) for i in range(c)]


def _attend_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    Wo: np.ndarray,
    bo: np.ndarray,
    num_heads: int,
    mask: np.ndarray | None,
    dropout: float,
    rng: np.random.Generator | None,
    coverage: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Attention of projected q (N, S, E) to k, v (N, T, E), per head, then ``@ Wo + bo``;
    with ``coverage = (c (h,), u (h, d))`` (and no mask), the heads' scores get the
    coverage bias of :func:`coverage_attention_forward`.

    Returns ``(out (N, S, E), weights (N, h, S, T), cache)``.
    """
    N, S, E = q.shape
    T = k.shape[1]
    drop = dropout_mask((N, num_heads, S, T), dropout, rng, q.dtype)
    y, (y_heads,) = _heads_buffer(N, S, 1, num_heads, E // num_heads, q.dtype)  # (N, S, E)
    heads = (_split_heads(q, num_heads), _split_heads(k, num_heads), _split_heads(v, num_heads))
    if coverage is None:
        _, weights, c_sdpa = scaled_dot_product_attention_forward(
            *heads, mask, dropout_mask=drop, out=y_heads
        )  # weights (N, h, S, T)
    else:
        _, weights, c_sdpa = coverage_attention_forward(
            *heads, *coverage, dropout_mask=drop, out=y_heads
        )  # weights (N, h, S, T)
    return _linear(y, Wo, bo), weights, (c_sdpa, y, Wo, num_heads, coverage is not None)


def _attend_backward(
    dout: np.ndarray, dweights: np.ndarray | None, cache: tuple, out: tuple, hold: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Backward of :func:`_attend_forward`: dout (N, S, E) -> ``(dWo, dbo, dcoverage)``
    (dcoverage ``(dc (h,), du (h, d))``, or ``None`` without coverage); the gradients of
    q, k, v go into ``out``, their (N, h, S|T, d) head views (see :func:`_heads_buffer`).
    ``hold``: the weights are constants (``hold_weights`` of the attention's backward)."""
    c_sdpa, y, Wo, num_heads, with_coverage = cache
    dy, dWo, dbo = _linear_backward(dout, y, Wo)
    dy_heads = _split_heads(dy, num_heads)
    if with_coverage:
        *_, dc, du = coverage_attention_backward(
            dy_heads, dweights, c_sdpa, out=out, hold_weights=hold
        )
        return dWo, dbo, (dc, du)
    scaled_dot_product_attention_backward(dy_heads, dweights, c_sdpa, out=out, hold_weights=hold)
    return dWo, dbo, None


def _strictly_lower(T: int, dtype) -> np.ndarray:
    """(T, T) ones below the diagonal: ``M @ A`` sums, at row t, the rows s < t of A."""
    return np.tri(T, T, -1, dtype=dtype)


def coverage_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    c: np.ndarray,
    u: np.ndarray,
    *,
    dropout_mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Scaled dot-product attention of h heads whose scores are biased by coverage, how
    much each head already looked at each key at the earlier query positions::

        Z     = q @ k^T / sqrt(d)                  # (N, h, T, L) plain scores
        A0    = softmax(Z)                         # (N, h, T, L) plain weights
        C[t]  = sum_{s<t} A0[s]                    # (N, h, T, L), exclusive, C[0] = 0
        g     = c_i + q @ u_i / sqrt(d)            # (N, h, T) the coverage weight
        alpha = softmax(Z + g * C)                 # g broadcast over the L keys
        out   = (alpha * dropout_mask) @ v         # (N, h, T, Ev)

    (the coverage of Tu et al. 2016 and See et al. 2017, built from the plain weights A0
    rather than the used ones, so there is no recurrence: all T positions at once). Head i
    weighs its coverage by a scalar ``c_i`` plus a term of its query, ``q . u_i``: key
    ``l`` is in effect ``k_l + C[t, l] u_i``, so a query can seek or avoid what the head
    has seen, word by word (See et al.'s coverage also enters through a learned weight
    inside the score's function of the decoder state). With ``c = 0`` and ``u = 0`` this is
    plain attention, and the gradients to ``c`` and ``u`` there are in general not zero
    (``dg = sum_l dZ' * C``, ``dZ'`` the gradient of the biased scores), so coverage
    initialised at 0 learns. The query positions are meant to be causal (position t's
    coverage sums the queries before it, whatever mask the caller's self-attention used).

    Args:
        q: queries (N, h, T, d).
        k: keys (N, h, L, d).
        v: values (N, h, L, Ev).
        c: the heads' coverage weights (h,).
        u: the heads' query directions of the coverage weight (h, d).
        dropout_mask: ``None`` or the inverted-dropout multiplier of ``alpha``,
            broadcastable to (N, h, T, L).
        out: ``None`` or an array (N, h, T, Ev) (any strides) to write the output into.

    Returns:
        ``(out, alpha, cache)``: out (N, h, T, Ev) and the weights used, alpha
        (N, h, T, L), before dropout.
    """
    check_ndim("q", q, 4, "(N, h, T, d)")
    N, h, T, d = q.shape
    check_shape("k", k, (N, h, None, d), "(N, h, L, d)")
    L = k.shape[2]
    check_shape("v", v, (N, h, L, None), "(N, h, L, Ev)")
    check_shape("c", c, (h,), "(h,)")
    check_shape("u", u, (h, d), "(h, d)")
    scale = 1.0 / np.sqrt(d)
    Z = q @ np.swapaxes(k, -1, -2)  # (N, h, T, L)
    Z *= scale
    A0 = masked_softmax(Z)  # (N, h, T, L)
    # C[t] = sum_{s<t} A0[s] as one batched GEMM with the strictly lower triangle of ones
    # (5x faster than cumsum along the middle axis at the demo's sizes)
    C = _strictly_lower(T, A0.dtype) @ A0  # (N, h, T, L)
    g = (q @ u.astype(q.dtype, copy=False)[None, :, :, None])[..., 0]  # (N, h, T)
    g *= scale
    g += c.astype(q.dtype, copy=False)[:, None]
    Z += g[..., None] * C  # the biased scores, in place
    alpha = masked_softmax(Z)  # (N, h, T, L)
    mixed = alpha if dropout_mask is None else alpha * dropout_mask
    if out is not None:
        check_shape("out", out, (N, h, T, v.shape[-1]), "(N, h, T, Ev)")
    out = np.matmul(mixed, v, out=out)  # (N, h, T, Ev)
    cache = (q, k, v, alpha, mixed, dropout_mask, scale, A0, C, g, c, u)
    return out, alpha, cache


def coverage_attention_backward(
    dout: np.ndarray,
    dalpha: np.ndarray | None,
    cache: tuple,
    *,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    hold_weights: bool = False,
) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`coverage_attention_forward`::

        dalpha' = (dout @ v^T) * dropout_mask + dalpha
        dY      = softmax_backward(dalpha', alpha)          # the biased scores
        dg      = sum_l dY * C                              # (N, h, T)
        dc_i    = sum_{n, t} dg_i,   du_i = sum_{n, t} dg_i q_i / sqrt(d)
        dA0[s]  = sum_{t>s} g[t] dY[t]                      # through the coverage
        dZ      = (dY + softmax_backward(dA0, A0)) / sqrt(d)
        dq = dZ @ k + dg u / sqrt(d),   dk = dZ^T @ q,   dv = (alpha * dropout_mask)^T @ dout

    Args:
        dout: gradient of out, (N, h, T, Ev).
        dalpha: gradient of the returned alpha, (N, h, T, L), or ``None``.
        cache: from the forward pass.
        out: ``None`` or three arrays of dq's, dk's and dv's shapes to write them into.
        hold_weights: alpha is a constant: only ``dv``; dq, dk, dc, du are zero (as
            :func:`~captionlab.nn.attention.scaled_dot_product_attention_backward`'s).

    Returns:
        ``(dq, dk, dv, dc, du)`` of shapes (N, h, T, d), (N, h, L, d), (N, h, L, Ev), (h,),
        (h, d).
    """
    q, k, v, alpha, mixed, dropout_mask, scale, A0, C, g, c, u = cache
    check_shape("dout", dout, (*q.shape[:-1], v.shape[-1]), "(N, h, T, Ev)")
    if dalpha is not None:
        check_shape("dalpha", dalpha, alpha.shape, "(N, h, T, L)")
    dq, dk, dv = (None, None, None) if out is None else out
    dv = np.matmul(np.swapaxes(mixed, -1, -2), dout, out=dv)  # (N, h, L, Ev)
    if hold_weights:
        return _zeros_into(dq, q), _zeros_into(dk, k), dv, np.zeros_like(c), np.zeros_like(u)
    dw = dout @ np.swapaxes(v, -1, -2)  # (N, h, T, L)
    if dropout_mask is not None:
        dw *= dropout_mask
    if dalpha is not None:
        dw += dalpha
    dY = masked_softmax_backward(dw, alpha)  # (N, h, T, L)
    dg = np.einsum("nhtl,nhtl->nht", dY, C)  # (N, h, T)
    dc = dg.sum(axis=(0, 2))  # (h,)
    du = np.einsum("nht,nhtd->hd", dg, q) * scale  # (h, d)
    # C[t] sums A0[s] over s < t: A0[s] receives the sum of dC[t] = g[t] dY[t] over t > s
    dC = dY * g[..., None]  # (N, h, T, L)
    dA0 = _strictly_lower(dC.shape[2], dC.dtype).T @ dC  # (N, h, T, L)
    dZ = masked_softmax_backward(dA0, A0)
    dZ += dY
    dZ *= scale
    dq = np.matmul(dZ, k, out=dq)  # (N, h, T, d)
    dq += dg[..., None] * (u.astype(dq.dtype, copy=False) * scale)[None, :, None, :]
    dk = np.matmul(np.swapaxes(dZ, -1, -2), q, out=dk)  # (N, h, L, d)
    return dq, dk, dv, dc.astype(c.dtype, copy=False), du.astype(u.dtype, copy=False)


def multihead_attention_forward(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    Wq: np.ndarray,
    bq: np.ndarray,
    Wk: np.ndarray,
    bk: np.ndarray,
    Wv: np.ndarray,
    bv: np.ndarray,
    Wo: np.ndarray,
    bo: np.ndarray,
    num_heads: int,
    attn_mask: np.ndarray | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Multi-head attention of ``query`` to ``key``/``value``::

        q, k, v = query @ Wq + bq, key @ Wk + bk, value @ Wv + bv    # (N, S|T, E)
        head_i  = softmax(q_i k_i^T / sqrt(d), attn_mask) v_i        # q_i = q[..., i*d:(i+1)*d]
        out     = [head_1 | ... | head_h] @ Wo + bo                   # (N, S, E)

    Args:
        query: (N, S, E).
        key: (N, T, E).
        value: (N, T, E).
        Wq, Wk, Wv, Wo: projections, each (E, E).
        bq, bk, bv, bo: biases, each (E,).
        num_heads: ``h``; must divide E.
        attn_mask: ``None`` or an array broadcastable to (N, h, S, T), e.g. (S, T);
            ``attn_mask[i, j] == 0`` means query ``i`` may not attend to key ``j``. A query
            with no key allowed gets zero weights (its head output is 0).
        dropout: the probability of dropping an attention weight (0 in evaluation mode).
        rng: the generator of the dropout mask (needed when ``dropout > 0``).

    Returns:
        ``(out, weights, cache)``: out (N, S, E) and the attention weights of every head
        before dropout, (N, h, S, T).
    """
    check_ndim("query", query, 3, "(N, S, E)")
    N, _S, E = query.shape
    check_ndim("key", key, 3, "(N, T, E)")
    T = key.shape[1]
    check_shape("key", key, (N, T, E), "(N, T, E)")
    check_shape("value", value, (N, T, E), "(N, T, E)")
    for name, W, b in (("q", Wq, bq), ("k", Wk, bk), ("v", Wv, bv), ("o", Wo, bo)):
        check_shape(f"W{name}", W, (E, E), "(E, E)")
        check_shape(f"b{name}", b, (E,), "(E,)")
    if num_heads < 1 or E % num_heads:
        raise ValueError(f"num_heads must divide E = {E}, got {num_heads}")
    q = _linear(query, Wq, bq)  # (N, S, E)
    k = _linear(key, Wk, bk)  # (N, T, E)
    v = _linear(value, Wv, bv)  # (N, T, E)
    out, weights, c_att = _attend_forward(q, k, v, Wo, bo, num_heads, attn_mask, dropout, rng)
    return out, weights, (query, key, value, Wq, Wk, Wv, c_att)


def multihead_attention_backward(
    dout: np.ndarray, dweights: np.ndarray | None, cache: tuple
) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`multihead_attention_forward`.

    Args:
        dout: gradient with respect to out, (N, S, E).
        dweights: gradient with respect to the weights, (N, h, S, T), or ``None``.
        cache: from the forward pass.

    Returns:
        ``(dquery, dkey, dvalue, dWq, dbq, dWk, dbk, dWv, dbv, dWo, dbo)`` of shapes
        (N, S, E), (N, T, E), (N, T, E), then (E, E) and (E,) for each projection.
    """
    query, key, value, Wq, Wk, Wv, c_att = cache
    check_shape("dout", dout, query.shape, "(N, S, E)")
    (N, S, E), T, h = query.shape, key.shape[1], c_att[3]
    dq, (dq_heads,) = _heads_buffer(N, S, 1, h, E // h, dout.dtype)
    dk, (dk_heads,) = _heads_buffer(N, T, 1, h, E // h, dout.dtype)
    dv, (dv_heads,) = _heads_buffer(N, T, 1, h, E // h, dout.dtype)
    dWo, dbo, _ = _attend_backward(dout, dweights, c_att, (dq_heads, dk_heads, dv_heads))
    dquery, dWq, dbq = _linear_backward(dq, query, Wq)
    dkey, dWk, dbk = _linear_backward(dk, key, Wk)
    dvalue, dWv, dbv = _linear_backward(dv, value, Wv)
    return dquery, dkey, dvalue, dWq, dbq, dWk, dbk, dWv, dbv, dWo, dbo


# ----------------------------------------------------------------------------------------
# position-wise feed-forward
# ----------------------------------------------------------------------------------------
def feedforward_forward(
    x: np.ndarray,
    W1: np.ndarray,
    b1: np.ndarray,
    W2: np.ndarray,
    b2: np.ndarray,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, tuple]:
    """Position-wise feed-forward block ``out = Dropout(ReLU(x @ W1 + b1)) @ W2 + b2``.

    Args:
        x: input of shape (..., E).
        W1: (E, F).   b1: (F,).
        W2: (F, E).   b2: (E,).
        dropout: the probability of dropping a hidden unit (0 in evaluation mode).
        rng: the generator of the dropout mask (needed when ``dropout > 0``).

    Returns:
        ``(out, cache)`` with out of shape (..., E).
    """
    x = np.asarray(x)
    E = x.shape[-1]
    check_shape("W1", W1, (E, None), "(E, F)")
    F = W1.shape[1]
    check_shape("b1", b1, (F,), "(F,)")
    check_shape("W2", W2, (F, E), "(F, E)")
    check_shape("b2", b2, (E,), "(E,)")
    if x.size > 2 * E * E:  # many rows: the bias rides in the GEMM (see _stack_affine)
        x1, W1b = _with_ones(x), _stack_affine([W1], [b1])
        a = _affine1(x1, W1b, x.shape[:-1])  # (..., F)
    else:  # few rows (a decoding step): stacking [W1 ; b1] would cost more than it saves
        x1, W1b = x, (W1, b1)
        a = _linear(x, W1, b1)
    np.maximum(a, 0, out=a)
    drop = dropout_mask(a.shape, dropout, rng, a.dtype)
    r = a if drop is None else a * drop  # (..., F)
    return _linear(r, W2, b2), (x.shape, x1, W1b, W2, a, r, drop)


def feedforward_backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """Backward pass of :func:`feedforward_forward`.

    Returns:
        ``(dx, dW1, db1, dW2, db2)`` of shapes (..., E), (E, F), (F,), (F, E), (E,).
    """
    x_shape, x1, W1b, W2, a, r, drop = cache
    check_shape("dout", dout, x_shape, "(..., E)")
    dr, dW2, db2 = _linear_backward(dout, r, W2)  # dr (..., F)
    if drop is not None:
        dr *= drop
    dr *= a > 0  # ReLU
    if isinstance(W1b, tuple):
        dx, dW1, db1 = _linear_backward(dr, x1, W1b[0])
    else:
        dx, dW1, db1 = _affine1_backward(dr, x1, W1b, x_shape)
    return dx, dW1, db1, dW2, db2


# ----------------------------------------------------------------------------------------
# decoder layer
# ----------------------------------------------------------------------------------------
_PROJ = ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")

#: The parameters of one decoder layer, in this order.
DECODER_LAYER_KEYS: tuple[str, ...] = (
    *(f"self_attn.{n}" for n in _PROJ),
    *(f"cross_attn.{n}" for n in _PROJ),
    "ffn.W1",
    "ffn.b1",
    "ffn.W2",
    "ffn.b2",
    "norm1.gamma",
    "norm1.beta",
    "norm2.gamma",
    "norm2.beta",
    "norm3.gamma",
    "norm3.beta",
)


#: The parameter a decoder layer that reads its cross-attention's cell locations adds.
DECODER_LOCATION_KEY = "cross_attn.W_loc"

#: The parameters a decoder layer that reads the running summary of its places adds: the
#: gate's weights (E, h) and bias (h,), and the read (2h, E).
DECODER_SUMMARY_KEYS: tuple[str, ...] = (
    "cross_attn.w_gate",
    "cross_attn.b_gate",
    "cross_attn.W_sum",
)

#: The parameters a decoder layer with coverage in its cross-attention adds: the heads'
#: coverage weights c (h,) and their query directions u (E,) (head i's in columns
#: ``i*d:(i+1)*d``).
DECODER_COVERAGE_KEYS: tuple[str, ...] = ("cross_attn.c_cov", "cross_attn.u_cov")


def decoder_layer_keys(
    locations: bool = False, location_summary: bool = False, coverage: bool = False
) -> tuple[str, ...]:
    """The parameter names of a decoder layer: :data:`DECODER_LAYER_KEYS`, then
    :data:`DECODER_LOCATION_KEY` with ``locations``, :data:`DECODER_SUMMARY_KEYS` with
    ``location_summary`` too, and :data:`DECODER_COVERAGE_KEYS` last with ``coverage``."""
    keys = DECODER_LAYER_KEYS
    if locations:
        keys = (*keys, DECODER_LOCATION_KEY)
        if location_summary:
            keys = (*keys, *DECODER_SUMMARY_KEYS)
    if coverage:
        keys = (*keys, *DECODER_COVERAGE_KEYS)
    return keys


def decoder_layer_param_shapes(
    E: int,
    F: int,
    location_heads: int = 0,
    location_summary: bool = False,
    coverage_heads: int = 0,
) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of a decoder layer, keyed by :data:`DECODER_LAYER_KEYS`.

    Projections ``W`` (E, E) and ``b`` (E,); ``ffn.W1`` (E, F), ``ffn.b1`` (F,),
    ``ffn.W2`` (F, E), ``ffn.b2`` (E,); ``normK.gamma`` and ``normK.beta`` (E,). With
    ``location_heads = h > 0`` (a layer that reads where its h cross-attention heads looked,
    see :func:`decoder_layer_forward`'s ``locations``), also :data:`DECODER_LOCATION_KEY`
    ``cross_attn.W_loc`` (2h, E), after the other cross-attention parameters; with
    ``location_summary`` too, :data:`DECODER_SUMMARY_KEYS` ``cross_attn.w_gate`` (E, h),
    ``cross_attn.b_gate`` (h,) and ``cross_attn.W_sum`` (2h, E) after it; with
    ``coverage_heads = h > 0`` (coverage in the cross-attention, see
    :func:`decoder_layer_forward`'s ``coverage``), :data:`DECODER_COVERAGE_KEYS`
    ``cross_attn.c_cov`` (h,) and ``cross_attn.u_cov`` (E,) last.
    """
    if location_summary and not location_heads:
        raise ValueError("location_summary needs location_heads > 0")
    shapes = {}
    for key in DECODER_LAYER_KEYS:
        name = key.split(".")[1]
        shapes[key] = (E, E) if name in ("Wq", "Wk", "Wv", "Wo") else (E,)
        if key == "cross_attn.bo" and location_heads:
            shapes[DECODER_LOCATION_KEY] = (2 * location_heads, E)
            if location_summary:
                h = location_heads
                shapes.update(zip(DECODER_SUMMARY_KEYS, [(E, h), (h,), (2 * h, E)], strict=True))
    shapes["ffn.W1"], shapes["ffn.b1"], shapes["ffn.W2"] = (E, F), (F,), (F, E)
    if coverage_heads:
        shapes.update(zip(DECODER_COVERAGE_KEYS, [(coverage_heads,), (E,)], strict=True))
    return shapes


def decoder_layer_forward(
    x: np.ndarray,
    memory: np.ndarray,
    params: dict[str, np.ndarray],
    num_heads: int,
    tgt_mask: np.ndarray | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
    locations: np.ndarray | None = None,
    location_summary: bool = False,
    coverage: bool = False,
) -> tuple[np.ndarray, tuple]:
    """One post-norm Transformer decoder layer (see the module docstring for the equations).

    Args:
        x: target sequence of shape (N, T, E).
        memory: the encoder output (for a captioner: the image tokens) of shape (N, L, E).
        params: dict of arrays keyed by :data:`DECODER_LAYER_KEYS`, shapes from
            :func:`decoder_layer_param_shapes`.
        num_heads: ``h``; must divide E.
        tgt_mask: ``None`` or broadcastable to (N, h, T, T), e.g. the causal (T, T)
            ``tril(ones)``; 0 means "may not attend".
        dropout: the probability of dropping (0 in evaluation mode), used at all six
            places of ``torch.nn.TransformerDecoderLayer``: both attention weights, after
            each of the three blocks, and inside the feed-forward block.
        rng: the generator of the dropout masks (needed when ``dropout > 0``).
        locations: ``None``, or the memory cells' places ``P`` (L, 2): the cross-attention
            block then adds ``[alpha_1 @ P | ... | alpha_h @ P] @ W_loc`` (the module
            docstring), ``params`` holding ``cross_attn.W_loc`` (2h, E) too.
        location_summary: (with ``locations``) also add the gated causal mean of the places
            looked at so far, ``[S_1 | ... | S_h] @ W_sum`` (the module docstring),
            ``params`` holding :data:`DECODER_SUMMARY_KEYS` too. Position ``t``'s mean runs
            over positions ``0..t`` whatever ``tgt_mask`` is (it is meant for a causal one).
        coverage: bias the cross-attention's scores by what each head looked at the earlier
            positions, ``alpha_i = softmax(Z_i + g_i C_i)`` (the module docstring),
            ``params`` holding :data:`DECODER_COVERAGE_KEYS` ``cross_attn.c_cov`` (h,) and
            ``cross_attn.u_cov`` (E,) too;
            the location read and summary then use these weights. Position ``t``'s coverage
            sums positions ``0..t-1`` whatever ``tgt_mask`` is (meant for a causal one).

    Returns:
        ``(out, cache)`` with out of shape (N, T, E).
    """
    check_ndim("x", x, 3, "(N, T, E)")
    N, E = x.shape[0], x.shape[2]
    check_ndim("memory", memory, 3, "(N, L, E)")
    check_shape("memory", memory, (N, None, E), "(N, L, E)")
    if location_summary and locations is None:
        raise ValueError("location_summary needs locations (the cells' places P (L, 2))")
    if locations is not None:
        check_shape("locations", locations, (memory.shape[1], 2), "(L, 2)")
    keys = decoder_layer_keys(locations is not None, location_summary, coverage)
    _check_layer_params(
        params,
        keys,
        lambda E, F: decoder_layer_param_shapes(
            E,
            F,
            num_heads if locations is not None else 0,
            location_summary,
            num_heads if coverage else 0,
        ),
        E,
        num_heads,
    )
    p = params

    # 1. masked self-attention and its norm
    h1, (x1, Wqkv, c_sa, c_d1, c_n1) = _self_attention_block(
        x, p, num_heads, tgt_mask, dropout, rng
    )  # (N, T, E)

    # 2. cross-attention to the memory: k, v from one GEMM
    q = _linear(h1, p["cross_attn.Wq"], p["cross_attn.bq"])  # (N, T, E)
    memory1 = _with_ones(memory)  # (N*L, E+1)
    Wkv = _stack_affine(
        [p["cross_attn.Wk"], p["cross_attn.Wv"]], [p["cross_attn.bk"], p["cross_attn.bv"]]
    )  # (E+1, 2E)
    kv = _affine1(memory1, Wkv, memory.shape[:2])  # (N, L, 2E)
    ca, alpha, c_ca = _attend_forward(
        q,
        kv[..., :E],
        kv[..., E:],
        p["cross_attn.Wo"],
        p["cross_attn.bo"],
        num_heads,
        None,
        dropout,
        rng,
        _coverage_params(p, num_heads) if coverage else None,
    )  # (N, T, E); alpha (N, h, T, L), with coverage the biased weights
    c_loc = None
    if locations is not None:  # where each head looked, (x, y) per head, read by W_loc
        loc = _looked_at(alpha, locations)  # (N, T, 2h)
        ca += (loc.reshape(N * loc.shape[1], -1) @ p[DECODER_LOCATION_KEY]).reshape(ca.shape)
        c_sum = None
        if location_summary:  # the gated causal mean of the places looked at so far
            S, c_sum = _location_summary_forward(loc, h1, p)  # (N, T, 2h)
            ca += (S.reshape(N * S.shape[1], -1) @ p["cross_attn.W_sum"]).reshape(ca.shape)
        c_loc = (loc, locations, p[DECODER_LOCATION_KEY], c_sum)
    ca, c_d2 = dropout_forward(ca, dropout, rng)
    h2, c_n2 = _add_layernorm(h1, ca, p["norm2.gamma"], p["norm2.beta"])  # (N, T, E)

    # 3. position-wise feed-forward and its norm
    out, (c_ff, c_d3, c_n3) = _feedforward_block(h2, p, "norm3", dropout, rng)  # (N, T, E)

    cache = (x.shape, x1, memory.shape, memory1, h1, Wqkv, Wkv, p["cross_attn.Wq"], num_heads)
    cache += (c_sa, c_d1, c_n1, c_ca, c_d2, c_n2, c_ff, c_d3, c_n3, c_loc, coverage)
    return out, cache


def _coverage_params(p: dict[str, np.ndarray], h: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's coverage parameters as :func:`coverage_attention_forward` takes them:
    ``(c (h,), u (h, d))``, u a view of ``cross_attn.u_cov`` (E,)."""
    return p["cross_attn.c_cov"], p["cross_attn.u_cov"].reshape(h, -1)


def _looked_at(alpha: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The places the heads looked at: alpha (N, h, T, L), P (L, 2) -> (N, T, 2h), head
    ``i``'s ``alpha_i @ P`` in columns ``2i:2i+2``."""
    N, h, T, _ = alpha.shape
    return (alpha @ P.astype(alpha.dtype, copy=False)).transpose(0, 2, 1, 3).reshape(N, T, 2 * h)


def _location_summary_forward(
    loc: np.ndarray, x1: np.ndarray, p: dict[str, np.ndarray]
) -> tuple[np.ndarray, tuple]:
    """The gated causal mean of the places looked at: loc (N, T, 2h) (head ``i``'s place in
    columns ``2i:2i+2``), x1 (N, T, E) the gate's input -> ``(S (N, T, 2h), cache)``,
    ``S_t = sum_{s<=t} g_s m_s / sum_{s<=t} g_s``, ``g = sigmoid(x1 @ w_gate + b_gate)``."""
    N, T, h2 = loc.shape
    w_gate = p["cross_attn.w_gate"]
    g = sigmoid(x1.reshape(N * T, -1) @ w_gate + p["cross_attn.b_gate"]).reshape(N, T, -1)
    m = loc.reshape(N, T, h2 // 2, 2)
    G = np.cumsum(g, axis=1)  # (N, T, h), > 0
    S = np.cumsum(g[..., None] * m, axis=1) / G[..., None]  # (N, T, h, 2)
    return S.reshape(N, T, h2), (x1, w_gate, p["cross_attn.W_sum"], m, g, G, S)


def _location_summary_backward(dS: np.ndarray, cache: tuple, grads: dict) -> tuple:
    """Backward of :func:`_location_summary_forward`: dS (N, T, 2h) -> ``(dloc (N, T, 2h),
    dx1 (N, T, E))``, the gate's gradients written into ``grads``."""
    x1, w_gate, _, m, g, G, S = cache
    N, T, h, _ = m.shape
    dS = dS.reshape(N, T, h, 2)
    dC = dS / G[..., None]  # S = C / G
    dG = -np.einsum("nthk,nthk->nth", dS, S) / G
    # C_t and G_t sum positions s <= t: position s receives the sums over t >= s
    dgm = np.flip(np.cumsum(np.flip(dC, axis=1), axis=1), axis=1)  # (N, T, h, 2)
    dg = np.einsum("nthk,nthk->nth", dgm, m)
    dg += np.flip(np.cumsum(np.flip(dG, axis=1), axis=1), axis=1)
    dloc = (dgm * g[..., None]).reshape(N, T, 2 * h)
    dz = (dg * g * (1 - g)).reshape(N * T, h)
    grads["cross_attn.w_gate"] = x1.reshape(N * T, -1).T @ dz  # (E, h)
    grads["cross_attn.b_gate"] = dz.sum(axis=0)
    return dloc, (dz @ w_gate.T).reshape(N, T, -1)


def decoder_layer_attention(cache: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The attention weights a :func:`decoder_layer_forward` computed, read from its cache
    (before dropout): ``(self_weights (N, h, T, T), cross_weights (N, h, T, L))``."""
    c_sa, c_ca = cache[9], cache[12]  # each (c_sdpa, y, Wo, h, coverage); c_sdpa[3] the weights
    return c_sa[0][3], c_ca[0][3]


def decoder_layer_backward(
    dout: np.ndarray, cache: tuple, hold: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backward pass of :func:`decoder_layer_forward`.

    Args:
        dout: upstream gradient of shape (N, T, E).
        cache: from the forward pass.
        hold: take the gradients with every attention weight and every layer norm's
            row scale held constant (``hold_weights`` / ``hold_scale`` of their backward
            passes; conservative propagation, Ali et al. 2022): for explanations, not
            training.

    Returns:
        ``(dx, dmemory, dparams)``: dx (N, T, E), dmemory (N, L, E) and a dict of
        gradients keyed and shaped like ``params`` (``cross_attn.W_loc`` only with
        ``locations``, ``cross_attn.c_cov`` and ``u_cov`` only with ``coverage``).
    """
    x_shape, x1, memory_shape, memory1, h1, Wqkv, Wkv, Wq_c, h = cache[:9]
    c_sa, c_d1, c_n1, c_ca, c_d2, c_n2, c_ff, c_d3, c_n3, c_loc, coverage = cache[9:]
    check_shape("dout", dout, x_shape, "(N, T, E)")
    (N, T, E), L = x_shape, memory_shape[1]
    g: dict[str, np.ndarray] = {}

    # 3. feed-forward block and its norm
    dh2 = _feedforward_block_backward(dout, (c_ff, c_d3, c_n3), "norm3", g, hold)  # (N, T, E)

    # 2. cross-attention block and its norm; q's and k|v's gradients written head by head
    # into merged buffers
    dz, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dh2, c_n2, hold)
    dq, dq_heads = _heads_buffer(N, T, 1, h, E // h, dout.dtype)  # (N, T, E)
    dkv, dkv_heads = _heads_buffer(N, L, 2, h, E // h, dout.dtype)  # (N, L, 2E)
    dca = dropout_backward(dz, c_d2)  # (N, T, E)
    dalpha = dh1_gate = None
    if c_loc is not None:  # the location read: dloc = dca @ W_loc^T, dalpha_i = dloc_i @ P^T
        loc, P, W_loc, c_sum = c_loc
        dca2 = dca.reshape(N * T, E)
        g[DECODER_LOCATION_KEY] = loc.reshape(N * T, 2 * h).T @ dca2  # (2h, E)
        dloc = (dca2 @ W_loc.T).reshape(N, T, 2 * h)  # (N, T, 2h)
        if c_sum is not None:  # the running summary S (N, T, 2h), read by W_sum
            S = c_sum[-1].reshape(N * T, 2 * h)
            g["cross_attn.W_sum"] = S.T @ dca2  # (2h, E)
            dS = (dca2 @ c_sum[2].T).reshape(N, T, 2 * h)
            dloc_sum, dh1_gate = _location_summary_backward(dS, c_sum, g)
            dloc += dloc_sum
        dloc = dloc.reshape(N, T, h, 2).transpose(0, 2, 1, 3)  # (N, h, T, 2)
        if not hold:  # held weights take no gradient from the places read either
            dalpha = dloc @ P.T.astype(dloc.dtype, copy=False)  # (N, h, T, L)
    g["cross_attn.Wo"], g["cross_attn.bo"], dc_cov = _attend_backward(
        dca, dalpha, c_ca, (*dq_heads, *dkv_heads), hold
    )
    if coverage:
        g["cross_attn.c_cov"], g["cross_attn.u_cov"] = dc_cov[0], dc_cov[1].reshape(E)
    dh1, g["cross_attn.Wq"], g["cross_attn.bq"] = _linear_backward(dq, h1, Wq_c)
    dh1 += dz
    if dh1_gate is not None:  # the summary's gates read h1
        dh1 += dh1_gate
    dmemory, dWkv, dbkv = _affine1_backward(dkv, memory1, Wkv, memory_shape)  # (N, L, E)
    g["cross_attn.Wk"], g["cross_attn.Wv"] = dWkv[:, :E], dWkv[:, E:]
    g["cross_attn.bk"], g["cross_attn.bv"] = dbkv[:E], dbkv[E:]

    # 1. self-attention block and its norm
    dx = _self_attention_block_backward(dh1, (x1, Wqkv, c_sa, c_d1, c_n1), x_shape, h, g, hold)
    keys = decoder_layer_keys(
        c_loc is not None, c_loc is not None and c_loc[3] is not None, coverage
    )
    return dx, dmemory, {key: g[key] for key in keys}


def _check_layer_params(params: dict, keys: tuple, shapes_of, E: int, num_heads: int) -> None:
    """ValueError unless ``params`` holds every key of ``keys`` with the shape
    ``shapes_of(E, F)`` gives (F read off ``ffn.W1``) and ``num_heads`` divides E."""
    missing = [key for key in keys if key not in params]
    if missing:
        raise ValueError(f"params lacks {missing}")
    F = params["ffn.W1"].shape[-1]
    for key, shape in shapes_of(E, F).items():
        check_shape(f"params[{key!r}]", params[key], shape, str(shape))
    if num_heads < 1 or E % num_heads:
        raise ValueError(f"num_heads must divide E = {E}, got {num_heads}")


def _self_attention_block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    num_heads: int,
    mask: np.ndarray | None,
    dropout: float,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, tuple]:
    """``LN1(x + Dropout(SelfAttention(x, x, x, mask)))`` for x (N, T, E), q, k, v from one
    GEMM with the biases riding in it; the first block of the decoder and encoder layers.
    Returns ``(out (N, T, E), cache)``."""
    N, T, E = x.shape
    x1 = _with_ones(x)  # (N*T, E+1)
    Wqkv = _stack_affine(
        [p["self_attn.Wq"], p["self_attn.Wk"], p["self_attn.Wv"]],
        [p["self_attn.bq"], p["self_attn.bk"], p["self_attn.bv"]],
    )  # (E+1, 3E)
    qkv = _affine1(x1, Wqkv, (N, T))  # (N, T, 3E)
    sa, _, c_sa = _attend_forward(
        qkv[..., :E],
        qkv[..., E : 2 * E],
        qkv[..., 2 * E :],
        p["self_attn.Wo"],
        p["self_attn.bo"],
        num_heads,
        mask,
        dropout,
        rng,
    )  # (N, T, E)
    sa, c_d1 = dropout_forward(sa, dropout, rng)
    out, c_n1 = _add_layernorm(x, sa, p["norm1.gamma"], p["norm1.beta"])  # (N, T, E)
    return out, (x1, Wqkv, c_sa, c_d1, c_n1)


def _self_attention_block_backward(
    dout: np.ndarray,
    cache: tuple,
    x_shape: tuple,
    h: int,
    g: dict[str, np.ndarray],
    hold: bool = False,
) -> np.ndarray:
    """Backward of :func:`_self_attention_block`: writes the ``self_attn.*`` and ``norm1.*``
    gradients into ``g`` (q|k|v's head by head into one buffer) and returns dx (N, T, E).
    ``hold``: as :func:`decoder_layer_backward`'s."""
    x1, Wqkv, c_sa, c_d1, c_n1 = cache
    N, T, E = x_shape
    dz, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dout, c_n1, hold)
    dqkv, dqkv_heads = _heads_buffer(N, T, 3, h, E // h, dout.dtype)  # (N, T, 3E)
    g["self_attn.Wo"], g["self_attn.bo"], _ = _attend_backward(
        dropout_backward(dz, c_d1), None, c_sa, tuple(dqkv_heads), hold
    )
    dx, dWqkv, dbqkv = _affine1_backward(dqkv, x1, Wqkv, x_shape)  # (N, T, E)
    dx += dz
    for i, n in enumerate("qkv"):
        g[f"self_attn.W{n}"] = dWqkv[:, i * E : (i + 1) * E]
        g[f"self_attn.b{n}"] = dbqkv[i * E : (i + 1) * E]
    return dx


def _feedforward_block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    norm: str,
    dropout: float,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, tuple]:
    """``LN(x + Dropout(FFN(x)))`` for x (N, T, E), the norm's parameters ``{norm}.gamma`` and
    ``{norm}.beta``; the last block of the decoder and encoder layers."""
    ff, c_ff = feedforward_forward(
        x, p["ffn.W1"], p["ffn.b1"], p["ffn.W2"], p["ffn.b2"], dropout, rng
    )  # (N, T, E)
    ff, c_d = dropout_forward(ff, dropout, rng)
    out, c_n = _add_layernorm(x, ff, p[f"{norm}.gamma"], p[f"{norm}.beta"])  # (N, T, E)
    return out, (c_ff, c_d, c_n)


def _feedforward_block_backward(
    dout: np.ndarray, cache: tuple, norm: str, g: dict[str, np.ndarray], hold: bool = False
) -> np.ndarray:
    """Backward of :func:`_feedforward_block`: writes the ``ffn.*`` and norm gradients into
    ``g`` and returns dx (N, T, E); ``hold`` holds the norm's scale."""
    c_ff, c_d, c_n = cache
    dz, g[f"{norm}.gamma"], g[f"{norm}.beta"] = layernorm_backward(dout, c_n, hold)  # (N, T, E)
    dx, g["ffn.W1"], g["ffn.b1"], g["ffn.W2"], g["ffn.b2"] = feedforward_backward(
        dropout_backward(dz, c_d), c_ff
    )
    dx += dz  # the residual path
    return dx


# ----------------------------------------------------------------------------------------
# encoder layer
# ----------------------------------------------------------------------------------------
#: The parameters of one encoder layer, in this order.
ENCODER_LAYER_KEYS: tuple[str, ...] = (
    *(f"self_attn.{n}" for n in _PROJ),
    "ffn.W1",
    "ffn.b1",
    "ffn.W2",
    "ffn.b2",
    "norm1.gamma",
    "norm1.beta",
    "norm2.gamma",
    "norm2.beta",
)


def encoder_layer_param_shapes(E: int, F: int) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of an encoder layer, keyed by :data:`ENCODER_LAYER_KEYS`:
    those of :func:`decoder_layer_param_shapes` without the cross-attention and ``norm3``."""
    shapes = decoder_layer_param_shapes(E, F)
    return {key: shapes[key] for key in ENCODER_LAYER_KEYS}


def encoder_layer_forward(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    num_heads: int,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, tuple]:
    """One post-norm Transformer encoder layer (``torch.nn.TransformerEncoderLayer(
    norm_first=False, activation="relu")``), every position attending to every other::

        x = LN1(x + Dropout(SelfAttention(x, x, x)))
        x = LN2(x + Dropout(W2 Dropout(ReLU(W1 x + b1)) + b2))

    (For a captioner: the image's grid cells, so that each cell's token can carry where the
    other objects are before the decoder reads it.)

    Args:
        x: source sequence of shape (N, L, E).
        params: dict of arrays keyed by :data:`ENCODER_LAYER_KEYS`, shapes from
            :func:`encoder_layer_param_shapes`.
        num_heads: ``h``; must divide E.
        dropout: the probability of dropping (0 in evaluation mode), at the four places of
            ``torch.nn.TransformerEncoderLayer``: the attention weights, after each of the
            two blocks, and inside the feed-forward block.
        rng: the generator of the dropout masks (needed when ``dropout > 0``).

    Returns:
        ``(out, cache)`` with out of shape (N, L, E).
    """
    check_ndim("x", x, 3, "(N, L, E)")
    E = x.shape[2]
    _check_layer_params(params, ENCODER_LAYER_KEYS, encoder_layer_param_shapes, E, num_heads)
    p = params

    # 1. self-attention among all positions, and its norm
    h1, c_sa = _self_attention_block(x, p, num_heads, None, dropout, rng)  # (N, L, E)
    # 2. position-wise feed-forward and its norm
    out, c_ff = _feedforward_block(h1, p, "norm2", dropout, rng)  # (N, L, E)
    return out, (x.shape, num_heads, c_sa, c_ff)


def encoder_layer_backward(
    dout: np.ndarray, cache: tuple, hold: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backward pass of :func:`encoder_layer_forward`.

    Args:
        dout: upstream gradient of shape (N, L, E).
        cache: from the forward pass.
        hold: take the gradients with every attention weight and every layer norm's
            row scale held constant (``hold_weights`` / ``hold_scale`` of their backward
            passes; conservative propagation, Ali et al. 2022): for explanations, not
            training.

    Returns:
        ``(dx, dparams)``: dx (N, L, E) and a dict of gradients keyed and shaped like
        ``params``.
    """
    x_shape, h, c_sa, c_ff = cache
    check_shape("dout", dout, x_shape, "(N, L, E)")
    g: dict[str, np.ndarray] = {}
    dh1 = _feedforward_block_backward(dout, c_ff, "norm2", g, hold)  # (N, L, E)
    dx = _self_attention_block_backward(dh1, c_sa, x_shape, h, g, hold)  # (N, L, E)
    return dx, {key: g[key] for key in ENCODER_LAYER_KEYS}


# ----------------------------------------------------------------------------------------
# the cs231n classes
# ----------------------------------------------------------------------------------------
class _Module:
    """Training/evaluation mode and a private dropout generator for the classes below."""

    def __init__(self, dropout: float, seed: int | None, dtype) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        # seed=None draws from NumPy's global generator (np.random.seed makes it repeatable)
        self._init_rng = np.random if seed is None else np.random.RandomState(seed)
        self.rng = np.random.default_rng(self._init_rng.randint(2**31 - 1))
        self.training = True
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._cache = None

    def train(self):
        """Training mode: dropout is on (the default, as in torch)."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode: dropout is the identity."""
        self.training = False
        return self

    @property
    def _p(self) -> float:
        return self.dropout if self.training else 0.0

    def _input(self, name: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"{name} must have shape (N, S, E), got {x.shape}")
        return x.astype(self.dtype, copy=False)


class PositionalEncoding(_Module):
    """Adds the sinusoidal positional encoding, then dropout (cs231n ``PositionalEncoding``).

    Args:
        embed_dim: ``E``.
        dropout: the probability of dropping, in training mode.
        max_len: the longest sequence.
        seed: seeds the dropout masks (``None``: drawn from NumPy's global generator).
        dtype: the dtype of the table and of the computation.

    Attributes:
        pe: the table of shape (1, max_len, E).
        params, grads: empty dicts (no parameters), for a uniform interface.
    """

    def __init__(
        self,
        embed_dim: int,
        dropout: float = 0.1,
        max_len: int = 5000,
        *,
        seed: int | None = None,
        dtype=np.float32,
    ) -> None:
        super().__init__(dropout, seed, dtype)
        self.max_len = int(max_len)
        self.pe = sinusoidal_positional_encoding(self.max_len, embed_dim, self.dtype)[None]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, S, E) with S <= max_len -> ``Dropout(x + pe[:, :S])`` (N, S, E)."""
        x = self._input("x", x)
        _, S, E = x.shape
        if S > self.max_len or E != self.pe.shape[2]:
            raise ValueError(
                f"x must have shape (N, S, E) with S <= {self.max_len}, E = {self.pe.shape[2]}, "
                f"got {x.shape}"
            )
        out, mask = dropout_forward(x + self.pe[:, :S], self._p, self.rng)
        self._cache = (mask,)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, S, E) -> dx (N, S, E)."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward pass first")
        return dropout_backward(dout, self._cache[0])

    __call__ = forward


class MultiHeadAttention(_Module):
    """Multi-head attention (cs231n ``MultiHeadAttention``), NumPy with a backward pass.

    Args:
        embed_dim: ``E``.
        num_heads: ``h``; must divide E.
        dropout: the probability of dropping an attention weight, in training mode.
        seed: seeds the weights and the dropout masks (``None``: NumPy's global generator).
        dtype: the dtype of the parameters and the computation.

    Attributes:
        params: ``Wq, bq, Wk, bk, Wv, bv, Wo, bo``, each W (E, E) applied as ``x @ W + b``,
            initialised as ``torch.nn.Linear`` (uniform in +-1/sqrt(E)).
        grads: after :meth:`backward`, the gradients, same keys and shapes.
        attn_weights: after :meth:`forward`, the attention weights (N, h, S, T).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        *,
        seed: int | None = None,
        dtype=np.float32,
    ) -> None:
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"num_heads must divide embed_dim = {embed_dim}, got {num_heads}")
        super().__init__(dropout, seed, dtype)
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        bound = 1 / np.sqrt(embed_dim)
        for name in ("q", "k", "v", "o"):
            W = self._init_rng.uniform(-bound, bound, (embed_dim, embed_dim))
            b = self._init_rng.uniform(-bound, bound, embed_dim)
            self.params[f"W{name}"] = W.astype(self.dtype)
            self.params[f"b{name}"] = b.astype(self.dtype)
        self.attn_weights: np.ndarray | None = None

    def forward(
        self,
        query: np.ndarray,
        key: np.ndarray,
        value: np.ndarray,
        attn_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Attention of ``query`` (N, S, E) to ``key`` and ``value`` (N, T, E).

        Args:
            attn_mask: ``None`` or (S, T) (broadcastable to (N, h, S, T));
                ``attn_mask[i, j] == 0`` means query ``i`` may not attend to key ``j``.

        Returns:
            output of shape (N, S, E).
        """
        p = self.params
        out, self.attn_weights, self._cache = multihead_attention_forward(
            self._input("query", query),
            self._input("key", key),
            self._input("value", value),
            *(p[k] for k in _PROJ),
            self.num_heads,
            attn_mask,
            self._p,
            self.rng,
        )
        return out

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dout (N, S, E) -> ``(dquery (N, S, E), dkey (N, T, E), dvalue (N, T, E))``;
        the parameter gradients go to :attr:`grads`."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward pass first")
        dquery, dkey, dvalue, *dparams = multihead_attention_backward(dout, None, self._cache)
        self.grads = dict(zip(_PROJ, dparams, strict=True))
        return dquery, dkey, dvalue

    __call__ = forward
