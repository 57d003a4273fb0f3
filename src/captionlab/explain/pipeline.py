"""The differentiable path from pixels to one word's log-probability.

Three pieces, joined so that :mod:`captionlab.vision.saliency` can differentiate a caption's
words as if they were class scores:

* :class:`FeaturePipeline` -- the checkpoint's feature extraction in torch: the backbone's
  last feature map, the stored pooling, the stored PCA. Its output equals
  :class:`captionlab.extract.FeatureExtractor`'s features (the tests hold it to that).
* :class:`CaptionerLogProbs` -- a ``torch.autograd.Function`` around the NumPy captioner:
  forward teacher-forces a caption through the captioner's decoding interface and returns
  each position's log-probability; backward calls the captioner's own hand-written
  ``loss(..., mask=one word per row, feature_grad=True)``.
* :class:`CaptionScores` -- both as one ``torch.nn.Module``: ``scores(x)`` is ``(N, T-1)``,
  so a word's position is a saliency "class index".

Shapes: ``N`` images, ``S`` image side, ``C = 1280`` channels and ``h = w`` the side of the
backbone's last feature map, ``R`` pooled size, ``D`` feature size, ``L = h * w`` grid
cells, ``T`` caption length with ``<START>`` (``T - 1`` predicted positions: the words, then
``<END>``), ``V`` vocabulary.

The word's log-probability at position ``t`` of caption ``c`` (``c_0 = <START>``)::

    log p_t(x) = log softmax(scores_t(features(x)))[c_{t+1}],  scores_t from c_0 .. c_t
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from captionlab import nn as lnn
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.pca import PCA
from captionlab.errors import UserError
from captionlab.explain.methods import check_hold_attention
from captionlab.extract import grid_cells, pool_grid
from captionlab.vision.backbone import TAPS

__all__ = [
    "CaptionScores",
    "CaptionerLogProbs",
    "FeaturePipeline",
    "StepScores",
    "evaluation_mode",
    "feature_layout",
    "has_word_free_loss_term",
    "word_cell_relevance",
    "word_feature_grads",
    "word_logprobs",
]

LAYOUTS = ("pooled", "grid")


def feature_layout(captioner) -> str:
    """``"pooled"`` for a captioner of (N, D) features, ``"grid"`` for (N, L, D) grids."""
    shape = tuple(captioner.feature_shape)
    if len(shape) == 1:
        return "pooled"
    if len(shape) == 2:
        return "grid"
    raise ValueError(f"feature_shape must be (D,) or (L, D), got {shape}")


class FeaturePipeline(torch.nn.Module):
    """Preprocessed images (N, 3, S, S) -> the captioner's features, differentiably.

    ``pooled`` layout (CaptioningRNN)::

        grid     = backbone.features(x, "grid")          # (N, C, h, w)
        raw      = pool_grid(grid, config.pool)          # (N, R)  avg / max / KxK cells
        features = (raw - pca.mean) @ pca.components     # (N, D)  when the config has PCA

    ``grid`` layout (AttentionCaptioner, CaptioningTransformer)::

        taps  = backbone.taps(x, config.grid_tap_list)            # {name: (N, C_tap, h, w)}
        cells = grid_cells(taps, config.grid_tap_list, side)      # (N, L, Rg)
        grid  = (cells - gpca.mean) @ gpca.components / gpca.scale  # (N, L, Dg)

    The store keeps the grid in float16, whose rounding a differentiable copy does not
    reproduce: features equal the store's to float16 precision.

    Args:
        backbone: the EfficientNet-Lite0 the features came from (the caller's module; it is
            used as found, and :func:`captionlab.vision.saliency.frozen` restores it).
        config: the checkpoint's :class:`FeatureExtractorConfig`.
        pca: the checkpoint's PCA basis (required when ``config.pca_dim`` is set).
        grid_pca: the checkpoint's per-cell PCA basis of the grid (required for the ``grid``
            layout when ``config.grid_pca_dim`` is set).
        layout: ``"pooled"`` or ``"grid"`` (see :func:`feature_layout`).
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        config: FeatureExtractorConfig,
        pca: PCA | None = None,
        layout: str = "pooled",
        grid_pca: PCA | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "grid" and not config.grid:
            raise UserError(
                "the captioner reads a grid of cells but its feature config makes none "
                f"(grid is off): {config.to_json()}"
            )
        if layout == "grid" and config.grid_pca_dim is not None and grid_pca is None:
            raise UserError(
                f"the feature config asks for a grid PCA to {config.grid_pca_dim} dimensions "
                "but no basis came with it (the checkpoint's extra.grid_pca is missing)"
            )
        if config.pca_dim is not None and pca is None:
            raise UserError(
                f"the feature config asks for PCA to {config.pca_dim} dimensions but no PCA "
                "basis came with it (the checkpoint's extra.pca is missing)"
            )
        self.backbone = backbone
        self.config = config
        self.layout = layout
        self.pca_mean: torch.Tensor | None
        self.pca_components: torch.Tensor | None
        if pca is not None:
            self.register_buffer("pca_mean", torch.as_tensor(pca.mean))  # (R,)
            self.register_buffer("pca_components", torch.as_tensor(pca.components))  # (R, D)
        else:
            self.pca_mean = self.pca_components = None
        self.grid_scale = 1.0
        self.grid_mean: torch.Tensor | None
        self.grid_components: torch.Tensor | None
        if layout == "grid" and grid_pca is not None:
            self.register_buffer("grid_mean", torch.as_tensor(grid_pca.mean))  # (Rg,)
            self.register_buffer("grid_components", torch.as_tensor(grid_pca.components))
            self.grid_scale = float(grid_pca.scale)
        else:
            self.grid_mean = self.grid_components = None

    @property
    def image_size(self) -> int:
        """S: the side of the images the pipeline takes."""
        return self.config.image_size

    def runs_tap(self, name: str) -> bool:
        """Whether :meth:`forward` computes the backbone's tap ``name`` (one of
        :data:`~captionlab.vision.backbone.TAPS`): a pooled layout runs the whole network to
        the last map, a grid only as deep as its deepest tap."""
        deepest = (
            "grid" if self.layout == "pooled" else max(self.config.grid_tap_list, key=TAPS.index)
        )
        return TAPS.index(name) <= TAPS.index(deepest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, S, S) preprocessed -> (N, D) pooled or (N, L, D) grid features."""
        S = self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            got = tuple(x.shape)
            raise ValueError(f"x must be (N, 3, {S}, {S}) preprocessed images, got {got}")
        if self.config.channels_last:  # as FeatureExtractor runs it (speed only)
            x = x.contiguous(memory_format=torch.channels_last)
        if self.layout == "pooled":
            return self.pooled_features(self.backbone.features(x, "grid"))  # (N, C, h, w)
        # only the grid's own taps: the pass stops at the deepest (block10 alone skips the
        # rest of the network, which the grid does not read)
        taps = self.backbone.taps(x, self.config.grid_tap_list)
        return self.grid_features(taps)

    def pooled_features(self, grid: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, h, w) -> pooled, PCA-projected features (N, D)."""
        raw = pool_grid(grid, self.config.pool)  # (N, R)
        if self.pca_mean is None:
            return raw
        mean = self.pca_mean.to(raw.dtype)
        return (raw - mean) @ self.pca_components.to(raw.dtype)  # (N, D)

    def grid_features(self, taps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone taps ``{name: (N, C_tap, h, w)}`` -> the grid captioners' features
        (N, L, Dg): cells as :class:`~captionlab.extract.FeatureExtractor` makes them, then
        the per-cell PCA and its scale."""
        cells = grid_cells(taps, self.config.grid_tap_list, self.config.grid_side)  # (N, L, Rg)
        if self.grid_mean is None:
            return cells
        mean = self.grid_mean.to(cells.dtype)
        out = (cells - mean) @ self.grid_components.to(cells.dtype)  # (N, L, Dg)
        return out / self.grid_scale if self.grid_scale != 1.0 else out


# ------------------------------------------------------------------------------- captioner
def _captions(caption: np.ndarray, N: int) -> np.ndarray:
    """One caption (T,) -> (N, T) rows for N images, checked."""
    caption = np.asarray(caption)
    if caption.ndim != 1 or caption.shape[0] < 2 or caption.dtype.kind not in "iu":
        raise ValueError(f"caption must be (T,) word ids with T >= 2, got {caption.shape}")
    return np.broadcast_to(caption, (N, caption.shape[0]))


def word_logprobs(
    captioner, features: np.ndarray, caption: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher-forced log-probabilities of one caption's words, for N feature rows.

    Uses only the decoding interface (``decode_start`` / ``decode_step``), so any captioner
    works, and a captioner with attention also gives its attention at every position.

    Args:
        captioner: a captioner (see :mod:`captionlab.captioning.generate`).
        features: (N, D) or (N, L, D) as the captioner takes them.
        caption: (T,) word ids, ``<START>`` first; position ``t`` predicts ``caption[t+1]``.

    Returns:
        ``(logp, attention)``: logp (N, T-1) float64; attention (N, T-1, L) or ``None``.
    """
    N = features.shape[0]
    captions = _captions(caption, N)
    T = captions.shape[1]
    state = captioner.decode_start(features, max_length=T - 1)
    logp = np.empty((N, T - 1), dtype=np.float64)
    attention = None
    rows = np.arange(N)
    for t in range(T - 1):
        scores, state, alpha = captioner.decode_step(captions[:, t].astype(np.int64), state)
        logp[:, t] = lnn.log_softmax(scores.astype(np.float64))[rows, captions[:, t + 1]]
        if alpha is not None:
            if attention is None:
                attention = np.zeros((N, T - 1, alpha.shape[1]), dtype=np.float64)
            attention[:, t] = alpha
    return logp, attention


def has_word_free_loss_term(captioner) -> bool:
    """Whether ``captioner.loss`` adds a term that a word mask does not remove: the
    AttentionCaptioner's doubly stochastic attention penalty (``attention_penalty > 0``).
    :class:`~captionlab.captioning.CaptioningRNN`'s loss is the words' alone."""
    return float(getattr(captioner, "attention_penalty", 0.0) or 0.0) > 0.0


def word_feature_grads(
    captioner,
    features: np.ndarray,
    caption: np.ndarray,
    weights: np.ndarray,
    hold_attention: bool = False,
) -> np.ndarray:
    """``sum_t weights[:, t] * d log p_t / d features`` by the captioner's own backward pass.

    ``captioner.loss(features, captions, mask=M, feature_grad=True)`` gives
    ``-(1/N) sum_{(n, t) in M} d log p_t(n) / d features`` with rows independent, so one call
    with one position per row gives every row its word's gradient (the saliency case: one
    target per image). Rows weighting several positions take one call per extra position.
    A captioner whose loss adds a term that does not depend on the words counted (the
    AttentionCaptioner's ``attention_penalty``, see :func:`has_word_free_loss_term`) has the
    gradient at an empty mask subtracted, so that the term cancels. A captioner with a
    training mode runs in evaluation mode (:func:`evaluation_mode`), as it decodes.

    Args:
        captioner: a captioner with ``loss(..., mask=, feature_grad=)``.
        features: (N, D) or (N, L, D).
        caption: (T,) word ids, ``<START>`` first.
        weights: (N, T-1) the gradient of the output with respect to each log-probability.
        hold_attention: the gradient with the captioner's attention weights held constant
            (``loss(..., hold_attention=True)``).

    Returns:
        (N, D) or (N, L, D), in the captioner's dtype.
    """
    N = features.shape[0]
    captions = _captions(caption, N)
    weights = np.asarray(weights)
    if weights.shape != (N, captions.shape[1] - 1):
        raise ValueError(f"weights must be {(N, captions.shape[1] - 1)}, got {weights.shape}")
    dtype = np.dtype(getattr(captioner, "dtype", features.dtype))
    out = np.zeros(features.shape, dtype=dtype)
    base = 0.0
    extra = {"hold_attention": True} if hold_attention else {}
    with evaluation_mode(captioner):  # the decoding interface's model: no dropout
        if has_word_free_loss_term(captioner):
            empty = np.zeros(weights.shape, dtype=bool)
            base = captioner.loss(features, captions, mask=empty, feature_grad=True, **extra)[1]
            base = base["features"]
        remaining = weights != 0  # (N, T-1)
        while remaining.any():
            rows = np.flatnonzero(remaining.any(axis=1))  # (n,)
            cols = remaining[rows].argmax(axis=1)  # (n,) each row's first open position
            mask = np.zeros_like(remaining)
            mask[rows, cols] = True
            _, g = captioner.loss(features, captions, mask=mask, feature_grad=True, **extra)
            w = weights[rows, cols].astype(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
            word = g["features"] - base  # d(-log p / N) / d features, rows independent
            out[rows] -= N * w * word[rows]
            remaining[rows, cols] = False
    return out


def word_cell_relevance(
    captioner,
    grid: np.ndarray,
    caption: np.ndarray,
    positions: np.ndarray | list[int],
    hold_attention: bool = False,
) -> np.ndarray:
    """Grad-CAM at the captioner's input grid: how much each cell's features raise a word.

    For the word at position ``t`` and cell ``l`` of one image's grid ``A`` (L, D)::

        relevance[t, l] = ReLU( sum_d  d log p_t / d A[l, d] * A[l, d] )

    the gradient from the captioner's own backward pass (:func:`word_feature_grads`, one
    call for all the words: the grid repeated once per word). Grad-CAM (Selvaraju et al.
    2017) weighs a layer's channels by their gradient averaged over the cells; here each
    cell keeps its own gradient (gradient times input per cell, summed over the features).

    Args:
        captioner: a captioner of grids, ``loss(..., mask=, feature_grad=)``.
        grid: (1, L, D) one image's grid, as the captioner takes it.
        caption: (T,) word ids, ``<START>`` first.
        positions: (K,) the positions ``t`` to explain.
        hold_attention: as :func:`word_feature_grads`'s.

    Returns:
        (K, L) float64, non-negative.
    """
    grid = np.asarray(grid)
    if grid.ndim != 3 or grid.shape[0] != 1:
        raise ValueError(f"grid must be one image's (1, L, D) cells, got {grid.shape}")
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    K = positions.shape[0]
    T = _captions(caption, 1).shape[1]
    if K and (positions.min() < 0 or positions.max() >= T - 1):
        raise ValueError(f"positions must be in [0, {T - 1}), got {positions.tolist()}")
    if K == 0:
        return np.zeros((0, grid.shape[1]), dtype=np.float64)
    A = np.repeat(grid, K, axis=0)  # (K, L, D) one copy per word
    weights = np.zeros((K, T - 1))
    weights[np.arange(K), positions] = 1.0
    dA = word_feature_grads(captioner, A, caption, weights, hold_attention)  # (K, L, D)
    return np.maximum((dA.astype(np.float64) * A).sum(axis=2), 0.0)  # (K, L)


@contextmanager
def evaluation_mode(captioner) -> Iterator[None]:
    """Run ``captioner`` in evaluation mode (dropout off) and give it back as found.

    A captioner with a training mode (:class:`~captionlab.captioning.CaptioningTransformer`:
    ``training``, ``train()``, ``eval()``) drops units in its ``loss`` while training, but
    never while decoding: the gradient must be the decoded model's, the one whose
    log-probabilities :func:`word_logprobs` gives. Captioners without one are left alone.
    """
    training = getattr(captioner, "training", None)
    if training is not True or not hasattr(captioner, "eval"):
        yield
        return
    captioner.eval()
    try:
        yield
    finally:
        captioner.train()


class CaptionerLogProbs(torch.autograd.Function):
    """``features (N, ...) -> (N, T-1)`` teacher-forced log-probabilities of ``caption``.

    Forward: :func:`word_logprobs` (NumPy, the decoding interface). Backward:
    :func:`word_feature_grads` (NumPy, the captioner's hand-written ``loss`` backward).
    The captioner's parameters are constants here; only ``features`` gets a gradient
    (with ``hold_attention``, the one with the attention weights held constant).
    """

    @staticmethod
    def forward(
        ctx, features: torch.Tensor, captioner, caption: np.ndarray, hold_attention: bool = False
    ) -> torch.Tensor:
        dtype = np.dtype(getattr(captioner, "dtype", np.float32))
        f = features.detach().cpu().numpy().astype(dtype, copy=False)
        logp, _ = word_logprobs(captioner, f, caption)
        ctx.captioner, ctx.caption, ctx.features = captioner, caption, f
        ctx.hold_attention = bool(hold_attention)
        return torch.from_numpy(logp).to(device=features.device, dtype=features.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weights = grad_output.detach().cpu().numpy()
        grad = word_feature_grads(ctx.captioner, ctx.features, ctx.caption, weights,
                                  ctx.hold_attention)  # fmt: skip
        out = torch.from_numpy(np.ascontiguousarray(grad))
        return out.to(device=grad_output.device, dtype=grad_output.dtype), None, None, None


class CaptionScores(torch.nn.Module):
    """Images -> the log-probability of each word of one caption, ``(N, 3, S, S) -> (N, T-1)``.

    A saliency "model": ``vision.saliency.saliency(x, t, scores)`` is the map of the word at
    position ``t`` (``caption[t + 1]``). ``pipeline`` is a submodule, so
    :func:`~captionlab.vision.saliency.frozen` puts the backbone in eval mode and restores it.

    Args:
        pipeline: the :class:`FeaturePipeline` of the captioner's checkpoint.
        captioner: the NumPy captioner (read, never modified).
        caption: (T,) word ids, ``<START>`` first (``<END>`` last when it ended).
        hold_attention: backward with the captioner's attention weights held constant
            (:func:`~captionlab.explain.methods.can_hold_attention` says which captioners can).
    """

    def __init__(
        self,
        pipeline: FeaturePipeline,
        captioner,
        caption: np.ndarray,
        hold_attention: bool = False,
    ) -> None:
        super().__init__()
        if hold_attention:
            check_hold_attention(captioner)
        self.pipeline = pipeline
        self.captioner = captioner
        self.caption = np.array(_captions(caption, 1)[0])
        self.hold_attention = bool(hold_attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CaptionerLogProbs.apply(self.pipeline(x), self.captioner, self.caption,
                                       self.hold_attention)  # fmt: skip


class StepScores(torch.nn.Module):
    """Images -> the word scores (logits) at one position, ``(N, 3, S, S) -> (N, V)``.

    Forward only (no gradient): the deletion metric's "model", whose softmax at the word's
    id is the word's probability given the caption before it.
    """

    def __init__(
        self, pipeline: FeaturePipeline, captioner, caption: np.ndarray, position: int
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.captioner = captioner
        self.caption = np.array(_captions(caption, 1)[0])
        if not 0 <= position < self.caption.shape[0] - 1:
            T = self.caption.shape[0]
            raise ValueError(f"position must be in [0, {T - 1}), got {position}")
        self.position = int(position)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = np.dtype(getattr(self.captioner, "dtype", np.float32))
        f = self.pipeline(x).cpu().numpy().astype(dtype, copy=False)
        N = f.shape[0]
        state = self.captioner.decode_start(f, max_length=self.position + 1)
        for t in range(self.position + 1):
            words = np.full(N, self.caption[t], dtype=np.int64)
            scores, state, _ = self.captioner.decode_step(words, state)
        return torch.from_numpy(np.asarray(scores, dtype=np.float64)).to(x.device, x.dtype)
