"""Explaining a caption word by word: decode, then one pixel map per generated word.

:class:`Explainer` holds a trained captioner and its :class:`FeaturePipeline`. For an image
it decodes a caption (greedy or beam), then computes, for every word, a saliency map of that
word's log-probability (teacher-forced on the decoded caption) by vanilla gradient,
SmoothGrad or Integrated Gradients, with :mod:`captionlab.vision.saliency` doing the batching
and leaving the caller's backbone as found. A captioner with attention also gives each
word's attention over the grid, shown beside its gradient map.

Shapes: ``S`` the side of the image the checkpoint's pipeline takes, ``K`` words explained,
``L = h * w`` grid cells of side ``h = ceil(S / 32)``, ``T`` caption ids with ``<START>``.
Pixel coordinates are ``(x, y)`` = (column, row).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captionlab.captioning.generate import beam_search, greedy_decode, special_ids
from captionlab.errors import UserError
from captionlab.explain.methods import (
    GRID_METHODS,
    LAYERCAM_TAP,
    check_hold_attention,
    check_method,
    needs_grid_error,
)
from captionlab.explain.pipeline import (
    CaptionScores,
    FeaturePipeline,
    StepScores,
    feature_layout,
    word_cell_relevance,
    word_logprobs,
)
from captionlab.vision import saliency as sal
from captionlab.vision.backbone import BLOCK_TAPS, INPUT_RANGE, preprocess

__all__ = [
    "CropGeometry",
    "Explainer",
    "Explanation",
    "WordMap",
    "attention_to_pixels",
    "cell_peak",
    "fuse_maps",
    "guided_gradcam",
    "layer_cam_maps",
    "map_peak",
]

MAX_LENGTH = 20  # the most words of a decoded caption, by default
# SmoothGrad's noise std / the value range for word maps: on 60 shapes scenes kept apart from
# the benchmark's, 0.3 put the peak of a shape word's map on its object most often, for the
# attention captioner (0.66 of 111 words; 0.15: 0.56, 0.5: 0.58, 0.8: 0.60) and the LSTM
# (0.48 of 110; 0.15: 0.46, 0.5: 0.46, 0.8: 0.38). ImageNet maps keep saliency's 0.15.
SMOOTHGRAD_NOISE = 0.3


@dataclass
class WordMap:
    """One word's explanation.

    Attributes:
        word: the word.
        position: ``t``, its index in the caption (0 = first word).
        prob: its probability given the image and the words before it.
        saliency: (S, S) float32 the saliency map of its log-probability.
        attention: (S, S) float32 the captioner's attention when it chose the word
            (upsampled from the grid), or ``None`` for a captioner without attention.
        peak: ``(x, y)`` the saliency map's maximum, in the S x S input's pixels (for
            ``gradcam``, whose map is cells, the centre of its top cell, :func:`cell_peak`),
            or ``None`` when the map is the same everywhere (a word no cell raises has an
            all-zero Grad-CAM map: it points nowhere).
        attention_cells: (L,) the attention's weight on each of the ``L = s * s`` grid cells
            (row-major, summing to 1), or ``None`` without attention.
        attention_peak: ``(x, y)`` the centre of the cell the attention weighs most, in the
            S x S input's pixels (:func:`cell_peak`), or ``None`` without attention.
    """

    word: str
    position: int
    prob: float
    saliency: np.ndarray
    attention: np.ndarray | None
    peak: tuple[int, int] | None
    attention_cells: np.ndarray | None = None
    attention_peak: tuple[int, int] | None = None


@dataclass
class Explanation:
    """The caption of one image and a :class:`WordMap` per word (``<END>`` excluded)."""

    caption: str
    caption_ids: np.ndarray  # (T,) <START> first, <END> last when the caption ended
    method: str
    words: list[WordMap] = field(default_factory=list)
    seconds: float = 0.0
    hold_attention: bool = False  # the maps were taken with the attention weights held

    @property
    def has_attention(self) -> bool:
        return any(w.attention is not None for w in self.words)


def fuse_maps(maps: list[np.ndarray]) -> np.ndarray:
    """Maps of the same words at several blocks, each (K, S, S) and non-negative -> their
    fusion (K, S, S): each word's map scaled to a maximum of 1 (an all-zero map stays zero),
    then the geometric mean over the blocks, high only where every block's map is."""
    fused = np.ones_like(maps[0], dtype=np.float64)
    for m in maps:
        top = m.reshape(m.shape[0], -1).max(axis=1).reshape(-1, 1, 1)
        fused *= np.divide(m, top, out=np.zeros_like(m, dtype=np.float64), where=top > 0)
    return (fused ** (1 / len(maps))).astype(np.float32)


def layer_cam_maps(
    x: torch.Tensor, targets, model: torch.nn.Module, layers: list, **options
) -> np.ndarray:
    """LayerCAM of ``targets`` (K,) of one image ``x`` (1, C, S, S) at ``layers`` (modules of
    ``model``; :func:`captionlab.vision.saliency.layer_cams_of_targets` with ``options``),
    each block's map upsampled bilinearly to the pixels, (K, S, S) float32; several blocks
    fused by :func:`fuse_maps`. The word maps' ``layercam`` and the benchmark's ImageNet-class
    peer of it, so that both compute the same thing."""
    S = x.shape[-1]
    cams = sal.layer_cams_of_targets(x, targets, model, layers, **options)  # each (K, h_i, w_i)
    ups = [F.interpolate(c[:, None].float(), size=(S, S), mode="bilinear",
                         align_corners=False)[:, 0].detach().cpu().numpy()
           for c in cams]  # fmt: skip
    return ups[0] if len(ups) == 1 else fuse_maps(ups)


def map_peak(m: np.ndarray) -> tuple[int, int] | None:
    """``(x, y)`` of the maximum of a map (H, W); the first one in row-major order on ties;
    ``None`` for a map that is the same everywhere (it has no peak)."""
    m = np.asarray(m)
    if m.size == 0 or m.max() == m.min():
        return None
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(x), int(y)


def cell_peak(alpha: np.ndarray, size: int) -> tuple[int, int] | None:
    """``(x, y)``: the centre pixel of the cell an attention (L,) weighs most, ``L = s * s``
    row-major cells over a ``size x size`` input (the first cell on ties); ``None`` when
    every cell weighs the same (a Grad-CAM relevance that is zero everywhere).

    The attention's own peak: its pixel map (:func:`attention_to_pixels`) is flat beyond the
    outer cells' centres, so that map's first maximum would sit on the image's edge."""
    alpha = np.asarray(alpha).reshape(-1)
    side = math.isqrt(alpha.size)
    if side * side != alpha.size or side == 0:
        raise ValueError(f"attention must hold s*s cell weights, got {alpha.size}")
    if alpha.max() == alpha.min():
        return None
    row, col = divmod(int(np.argmax(alpha)), side)
    return int((col + 0.5) * size / side), int((row + 0.5) * size / side)


def attention_to_pixels(alpha: np.ndarray, side: int, size: int) -> np.ndarray:
    """Weights over ``L = side * side`` cells (K, L), row-major cells -> (K, size, size): the
    attention, or the Grad-CAM relevance (:func:`captionlab.explain.pipeline.word_cell_relevance`).

    Each cell's weight is spread over the pixels it covers (bilinear upsampling of the
    ``side x side`` map, corners aligned to the cell centres as the image's are).
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim != 2 or alpha.shape[1] != side * side:
        raise ValueError(f"attention must be (K, {side * side}) for a {side}x{side} grid, "
                         f"got {alpha.shape}")  # fmt: skip
    cells = torch.from_numpy(alpha).reshape(-1, 1, side, side)
    up = F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def guided_gradcam(pixel_maps: np.ndarray, cells: np.ndarray, side: int) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al. 2017): pixel maps (K, S, S) times the Grad-CAM cell
    relevance (K, L) upsampled to them (:func:`attention_to_pixels`), (K, S, S) float32.

    The pixel map keeps its precision, the cells choose the object."""
    pixel_maps = np.asarray(pixel_maps, dtype=np.float32)
    K, S = pixel_maps.shape[0], pixel_maps.shape[-1]
    if pixel_maps.shape != (K, S, S) or np.shape(cells)[0] != K:
        raise ValueError(f"pixel maps (K, S, S) and cells (K, L) must hold the same K words, "
                         f"got {pixel_maps.shape} and {np.shape(cells)}")  # fmt: skip
    return pixel_maps * attention_to_pixels(cells, side, S)


@dataclass(frozen=True)
class CropGeometry:
    """How a ``width x height`` image became the ``size x size`` input: its centred square of
    side ``min(width, height)`` resampled to ``size`` (:func:`captionlab.vision.images.
    center_crop_resize`). Undoes it for points."""

    width: int
    height: int
    size: int

    @property
    def side(self) -> int:
        return min(self.width, self.height)

    def to_original(self, x: float, y: float) -> tuple[int, int]:
        """Pixel ``(x, y)`` of the input -> the original image's pixel under its centre."""
        scale = self.side / self.size
        ox = (self.width - self.side) / 2 + (x + 0.5) * scale
        oy = (self.height - self.side) / 2 + (y + 0.5) * scale
        return min(math.floor(ox), self.width - 1), min(math.floor(oy), self.height - 1)

    @classmethod
    def of_image(cls, spec: str | Path, size: int) -> CropGeometry:
        """The geometry of an image file (after its EXIF orientation) or ``skimage:NAME``."""
        from captionlab.vision.images import BUNDLED_PHOTOS, BUNDLED_PREFIX

        spec = str(spec)
        if spec.startswith(BUNDLED_PREFIX) and spec[len(BUNDLED_PREFIX) :] in BUNDLED_PHOTOS:
            import skimage.data

            h, w = np.asarray(getattr(skimage.data, spec[len(BUNDLED_PREFIX) :])()).shape[:2]
            return cls(int(w), int(h), size)
        from PIL import Image

        try:
            with Image.open(spec) as img:
                w, h = img.size
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: rotated a quarter turn
                    w, h = h, w
        except (OSError, ValueError) as exc:
            raise UserError(f"{spec}: cannot read the image size ({exc})") from exc
        return cls(int(w), int(h), size)


class Explainer:
    """A trained captioner and the differentiable path to it from pixels.

    Args:
        captioner: the NumPy captioner (read, never modified).
        pipeline: its :class:`FeaturePipeline` (the checkpoint's image size, pooling, PCA).
        max_length: the most words a decoded caption has (default: 20, or the positions
            a Transformer encodes when fewer).
        hold_attention: every gradient (each method's maps, Grad-CAM's cell relevance)
            taken with the captioner's attention weights held constant: what, in the cells
            it looked at, made it say the word, not also where else it might have looked
            (the AttentionCaptioner only; a UserError for others).
    """

    def __init__(
        self,
        captioner,
        pipeline: FeaturePipeline,
        max_length: int | None = None,
        hold_attention: bool = False,
    ) -> None:
        layout = feature_layout(captioner)
        if layout != pipeline.layout:
            raise ValueError(f"the captioner takes {layout} features, the pipeline gives "
                             f"{pipeline.layout}")  # fmt: skip
        positions = getattr(captioner, "max_length", None)  # a Transformer's encoded positions
        positions = positions if isinstance(positions, int) else None
        if max_length is None:
            max_length = min(MAX_LENGTH, positions or MAX_LENGTH)
        if max_length < 1:
            raise UserError(f"max_length (--max-length) must be >= 1, got {max_length}")
        if positions is not None and max_length > positions:
            raise UserError(f"max_length (--max-length) must be <= {positions}, the positions "
                            f"the captioner encodes, got {max_length}")  # fmt: skip
        if hold_attention:
            check_hold_attention(captioner)
        self.captioner = captioner
        self.pipeline = pipeline
        self.max_length = int(max_length)
        self.hold_attention = bool(hold_attention)
        special_ids(captioner)  # fails early without <START>

    @classmethod
    def from_checkpoint(
        cls,
        model_path: str | Path,
        device: str = "cpu",
        max_length: int | None = None,
        hold_attention: bool = False,
    ) -> Explainer:
        """The explainer of a trained run (``RUN/``, ``RUN/best`` or a ``.npz``)."""
        from captionlab.captioning import load_checkpoint
        from captionlab.runs.inference import extractor_for_checkpoint, resolve_model_path

        ckpt = resolve_model_path(model_path)
        captioner, state = load_checkpoint(ckpt)
        extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
        pipeline = FeaturePipeline(
            extractor.model,
            extractor.config,
            extractor.pca,
            layout=feature_layout(captioner),
            grid_pca=extractor.grid_pca,
        )
        return cls(captioner, pipeline, max_length=max_length, hold_attention=hold_attention)

    # ---------------------------------------------------------------------- basics
    @property
    def image_size(self) -> int:
        """S: the side of the images (uint8 (S, S, 3)) this explainer takes."""
        return self.pipeline.image_size

    @property
    def device(self) -> torch.device:
        return next(self.pipeline.backbone.parameters()).device

    def _input(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (S, S, 3) -> preprocessed (1, 3, S, S) on the backbone's device, in its
        dtype (a float64 backbone, as the tests use, gets float64 pixels)."""
        S = self.image_size
        pixels = np.asarray(pixels)
        if pixels.shape != (S, S, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 ({S}, {S}, 3), got {pixels.dtype} "
                             f"{pixels.shape}")  # fmt: skip
        weight = next(self.pipeline.backbone.parameters())  # its device and dtype
        return preprocess(pixels).to(device=weight.device, dtype=weight.dtype)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """The captioner's features of one image (S, S, 3): (1, D) or (1, L, D)."""
        dtype = np.dtype(getattr(self.captioner, "dtype", np.float32))
        with sal.frozen(self.pipeline), torch.no_grad():  # eval mode, restored after
            f = self.pipeline(self._input(pixels))
        return f.cpu().numpy().astype(dtype, copy=False)

    def decode(self, pixels: np.ndarray, beam: int = 1) -> np.ndarray:
        """The caption of one image as ids (T,): ``<START>``, the words, ``<END>`` when it
        ended within ``max_length``."""
        if beam < 1:
            raise UserError(f"beam must be >= 1, got {beam}")
        start, end, null = special_ids(self.captioner)
        f = self.features(pixels)
        if beam == 1:
            words = greedy_decode(self.captioner, f, max_length=self.max_length)[0]
        else:
            words = beam_search(self.captioner, f, beam_size=beam,
                                max_length=self.max_length).captions[0, 0]  # fmt: skip
        ids = [start]
        for w in words:
            if w == null:
                break
            ids.append(int(w))
            if w == end:
                break
        return np.array(ids, dtype=np.int64)

    def encode(self, text: str) -> np.ndarray:
        """A caption given as words (``"a red circle"``) -> ids (T,): ``<START>``, the
        words, ``<END>``. A word outside the vocabulary is a UserError naming it."""
        start, end, _ = special_ids(self.captioner)
        w2i = self.captioner.word_to_idx
        unknown = [w for w in text.split() if w not in w2i]
        if unknown:
            raise UserError(f"caption {text!r}: words not in the model's vocabulary: {unknown}")
        return np.array([start, *(w2i[w] for w in text.split()), end], dtype=np.int64)

    def text(self, caption_ids: np.ndarray) -> list[str]:
        """The words of a caption (ids (T,)), without ``<START>`` and ``<END>``."""
        start, end, null = special_ids(self.captioner)
        return [self.captioner.idx_to_word[int(i)] for i in caption_ids
                if int(i) not in (start, end, null)]  # fmt: skip

    # ---------------------------------------------------------------------- maps
    def scores(self, caption_ids: np.ndarray) -> CaptionScores:
        """The saliency "model" of a caption: images -> (N, T-1) word log-probabilities."""
        return CaptionScores(self.pipeline, self.captioner, caption_ids, self.hold_attention)

    def word_maps(
        self,
        pixels: np.ndarray,
        caption_ids: np.ndarray,
        positions: np.ndarray | list[int],
        method: str = "vanilla",
        *,
        samples: int = 25,
        noise: float = SMOOTHGRAD_NOISE,
        steps: int = 32,
        seed: int = 0,
        batch_size: int | None = None,
        layer: str = LAYERCAM_TAP,
    ) -> np.ndarray:
        """Saliency maps (K, S, S) float32 of the words at ``positions`` (K,) of a caption.

        One :func:`captionlab.vision.saliency.saliency_of_targets` call, equal to
        :func:`~captionlab.vision.saliency.saliency` on the image repeated K times with
        target ``t`` for the copy of position ``t``. Options as ``captionlab saliency``'s:
        SmoothGrad ``samples`` noisy copies with noise std ``noise`` of the value range
        (seeded); IG ``steps`` path points from a black image. ``gradcam``: the words' cell
        relevance (:meth:`cell_relevance`) upsampled to the pixels; ``guided-gradcam``:
        SmoothGrad's maps (same options) times it (:func:`guided_gradcam`); ``layercam``:
        LayerCAM at the backbone's block ``layer`` over SmoothGrad's noisy copies (same
        options; :func:`captionlab.vision.saliency.layer_cam_of_targets`), upsampled
        bilinearly to the pixels; ``layer`` may name several blocks, ``"block4,block10"``:
        LayerCAM at each (one backward pass for all), each upsampled and scaled to a maximum
        of 1, fused by their geometric mean (:func:`fuse_maps`), so that the map is high only
        where every block's is (a deep block's map says which object, a shallower one's
        where in it; Jiang et al. 2021 fuse the blocks' maps too).
        """
        check_method(method, self.pipeline.layout, f"this {type(self.captioner).__name__}")
        if method == "layercam":
            blocks = self._check_layer(layer)
        if method in GRID_METHODS:
            cells = self.cell_relevance(pixels, caption_ids, positions, method=method)  # (K, L)
            side = self.pipeline.config.grid_side
            if method == "gradcam":
                return attention_to_pixels(cells, side, self.image_size)
            guide = self.word_maps(pixels, caption_ids, positions, "smoothgrad", samples=samples,
                                   noise=noise, seed=seed, batch_size=batch_size)  # fmt: skip
            return guided_gradcam(guide, cells, side)
        positions = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        K = positions.shape[0]
        if K == 0:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        x = self._input(pixels)  # (1, 3, S, S)
        scores = self.scores(caption_ids)
        if method == "layercam":
            modules = [self.pipeline.backbone.tap_module(b) for b in blocks]
            return layer_cam_maps(x, positions.to(x.device), scores, modules, n_samples=samples,
                                  noise_level=noise, seed=seed, batch_size=batch_size)  # fmt: skip
        options: dict = {
            "vanilla": {},
            "smoothgrad": {"n_samples": samples, "noise_level": noise, "seed": seed,
                           "batch_size": batch_size},
            "ig": {"steps": steps, "baseline": float(INPUT_RANGE[0]), "batch_size": batch_size},
        }[method]  # fmt: skip
        # the image once per word (vanilla and IG run its forward pass once for all words)
        maps = sal.saliency_of_targets(x, positions.to(x.device), scores, method, **options)
        return maps.detach().float().cpu().numpy()

    def _check_layer(self, layer: str) -> tuple[str, ...]:
        """The blocks of ``layer`` (one block, or several joined by commas), or a UserError
        unless LayerCAM can read each of this explainer's backbone."""
        blocks = tuple(b.strip() for b in str(layer).split(","))
        for block in blocks:
            if block not in BLOCK_TAPS:
                raise UserError(f"layer (--layer) must be one of {BLOCK_TAPS[0]} .. "
                                f"{BLOCK_TAPS[-1]}, or several joined by commas, got "
                                f"{layer!r}")  # fmt: skip
            if not self.pipeline.runs_tap(block):
                taps = ", ".join(self.pipeline.config.grid_tap_list)
                raise UserError(f"layer {block} is deeper than this model's features reach: "
                                f"its grid reads {taps}, and the network stops there")  # fmt: skip
        if len(set(blocks)) != len(blocks):
            raise UserError(f"layer (--layer) names a block twice: {layer!r}")
        return blocks

    def cell_relevance(
        self,
        pixels: np.ndarray,
        caption_ids: np.ndarray,
        positions: np.ndarray | list[int],
        method: str = "gradcam",
    ) -> np.ndarray:
        """Grad-CAM relevance of the grid's L cells for the words at ``positions`` (K,), (K, L)
        float64 (:func:`~captionlab.explain.pipeline.word_cell_relevance`). Only captioners of
        grids have cells: for one of pooled features it is a UserError naming ``method``."""
        if self.pipeline.layout != "grid":
            raise needs_grid_error(method, f"this {type(self.captioner).__name__}")
        return word_cell_relevance(self.captioner, self.features(pixels), caption_ids, positions,
                                   self.hold_attention)  # fmt: skip

    def attention_cells(self, pixels: np.ndarray, caption_ids: np.ndarray) -> np.ndarray | None:
        """The captioner's attention over the grid's L cells at every position, (T-1, L)
        float64, or ``None`` for a captioner without attention."""
        _, alpha = word_logprobs(self.captioner, self.features(pixels), caption_ids)
        return None if alpha is None else alpha[0]

    def attention_maps(self, pixels: np.ndarray, caption_ids: np.ndarray) -> np.ndarray | None:
        """The captioner's attention at every position, (T-1, S, S), or ``None`` without it."""
        alpha = self.attention_cells(pixels, caption_ids)
        if alpha is None:
            return None
        return attention_to_pixels(alpha, self.pipeline.config.grid_side, self.image_size)

    def explain(
        self,
        pixels: np.ndarray,
        method: str = "vanilla",
        *,
        beam: int = 1,
        caption_ids: np.ndarray | None = None,
        **options,
    ) -> Explanation:
        """Decode a caption of ``pixels`` (S, S, 3) (or take ``caption_ids`` (T,)) and explain
        every word by ``method``; ``options`` go to :meth:`word_maps`."""
        if caption_ids is None:
            caption_ids = self.decode(pixels, beam=beam)
        caption_ids = np.asarray(caption_ids, dtype=np.int64)
        words = self.text(caption_ids)
        K = len(words)  # the words are positions 0 .. K-1 (<END>, if there, is K)
        started = time.perf_counter()
        maps = self.word_maps(pixels, caption_ids, np.arange(K), method, **options)
        seconds = time.perf_counter() - started
        peaks = [map_peak(m) for m in maps]
        if method == "gradcam":  # flat beyond the outer cells' centres: the top cell's centre
            cells = self.cell_relevance(pixels, caption_ids, np.arange(K), method=method)
            peaks = [cell_peak(c, self.image_size) for c in cells]
        logp, alpha = word_logprobs(self.captioner, self.features(pixels), caption_ids)
        attention = None
        if alpha is not None:  # (1, T-1, L) -> (T-1, S, S)
            side = self.pipeline.config.grid_side
            attention = attention_to_pixels(alpha[0], side, self.image_size)
        out = Explanation(" ".join(words), caption_ids, method, seconds=seconds,
                          hold_attention=self.hold_attention)  # fmt: skip
        for t, word in enumerate(words):
            w = WordMap(word=word, position=t, prob=float(np.exp(logp[0, t])),
                        saliency=maps[t], attention=None, peak=peaks[t])  # fmt: skip
            if alpha is not None:
                w.attention = attention[t]
                w.attention_cells = alpha[0, t].astype(np.float32)
                w.attention_peak = cell_peak(alpha[0, t], self.image_size)
            out.words.append(w)
        return out

    # ---------------------------------------------------------------------- faithfulness
    def deletion(
        self,
        pixels: np.ndarray,
        caption_ids: np.ndarray,
        position: int,
        saliency_map: np.ndarray,
        *,
        n_steps: int = 16,
        fill: float = 0.0,
    ) -> tuple[np.ndarray, float]:
        """The deletion metric of one word's map (Petsiuk et al. 2018), on its probability.

        Pixels are set to ``fill`` (0: mid-grey) most salient first, the word's probability
        given the caption before it followed at ``n_steps + 1`` fractions. Returns
        ``(probs (n_steps + 1,), area under the curve)``; lower means a more faithful map.
        """
        x = self._input(pixels)
        model = StepScores(self.pipeline, self.captioner, caption_ids, position)
        word = int(np.asarray(caption_ids)[position + 1])
        maps = torch.as_tensor(np.asarray(saliency_map, dtype=np.float32))[None].to(x.device)
        with sal.frozen(model):  # deletion_curve sets eval mode and back: keep the caller's
            probs, auc = sal.deletion_curve(x, word, model, maps, n_steps=n_steps, fill=fill)
        return probs[0].cpu().numpy().astype(np.float64), float(auc[0])
