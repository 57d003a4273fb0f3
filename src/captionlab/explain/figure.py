"""The explanation figure: the image, then one panel per word with its map (the word as the
panel's title); a second row with each word's attention when the captioner has it."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captionlab.captioning.plots import attention_map, attention_spotlight
from captionlab.explain.words import Explanation, WordMap
from captionlab.vision.figures import METHOD_TITLES, overlay

__all__ = ["explanation_figure"]

# the grid methods beside saliency's (vanilla, SmoothGrad, IG)
TITLES = {**METHOD_TITLES, "gradcam": "Grad-CAM (input grid)", "guided-gradcam": "Guided Grad-CAM"}

PANEL = 2.0  # inches per panel
CONTOUR = "#ffd400"  # the attention's half-maximum line, as in the gallery's attention strips


def _attention_heat(w: WordMap, size: int) -> np.ndarray:
    """A word's attention as a (size, size) map in [0, 1], largest value 1: from its cell
    weights as the gallery's attention strips draw them, else from its pixel map."""
    if w.attention_cells is not None:
        return attention_map(w.attention_cells, size)
    m = np.clip(np.asarray(w.attention, dtype=np.float64), 0, None)
    return m / m.max() if m.max() > 0 else m


def explanation_figure(
    pixels: np.ndarray, explanation: Explanation, *, title: str | None = None
) -> Figure:
    """``pixels`` uint8 (S, S, 3) (the input the maps are on) and its :class:`Explanation`.

    Row 1: the image, then each word's saliency overlay titled with the word (its
    probability beneath). Row 2, for a captioner with attention: the image with the grid of
    cells attended over, then each word's attention (the image fades where the word's step
    did not look; the yellow line encloses half the step's largest weight, given beneath).
    """
    words = explanation.words
    rows = 2 if explanation.has_attention else 1
    cols = 1 + len(words)
    S = pixels.shape[0]
    fig = Figure(figsize=(PANEL * cols, (PANEL + 0.55) * rows + 0.35))
    FigureCanvasAgg(fig)
    axes = np.array(
        [[fig.add_subplot(rows, cols, r * cols + c + 1) for c in range(cols)] for r in range(rows)]
    )  # (rows, cols)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].imshow(pixels)
    axes[0, 0].set_title("image", fontsize=10)
    how = TITLES.get(explanation.method, explanation.method)
    if explanation.hold_attention:
        how += ",\nattention held"
    axes[0, 0].set_xlabel(how, fontsize=8)
    for c, w in enumerate(words, start=1):
        axes[0, c].imshow(overlay(pixels, w.saliency))
        axes[0, c].set_title(w.word, fontsize=12, fontweight="bold")
        axes[0, c].set_xlabel(f"p = {w.prob:.2f}", fontsize=8)
    if rows == 2:
        ax = axes[1, 0]
        ax.imshow(pixels)
        ax.set_title("attention", fontsize=10)
        cells = next((w.attention_cells for w in words if w.attention_cells is not None), None)
        if cells is not None:  # the cells the captioner attends over
            side = math.isqrt(len(cells))
            for k in range(1, side):
                ax.axhline(k * S / side - 0.5, color="white", lw=0.7, alpha=0.8)
                ax.axvline(k * S / side - 0.5, color="white", lw=0.7, alpha=0.8)
            ax.set_xlabel(f"over {side}x{side} cells", fontsize=8)
        for c, w in enumerate(words, start=1):
            if w.attention is None and w.attention_cells is None:
                continue
            heat = _attention_heat(w, S)
            axes[1, c].imshow(attention_spotlight(pixels, heat))
            axes[1, c].contour(heat, levels=[0.5], colors=[CONTOUR], linewidths=0.8)
            axes[1, c].set_title(w.word, fontsize=10)
            if w.attention_cells is not None:
                axes[1, c].set_xlabel(f"top cell {float(np.max(w.attention_cells)):.2f}",
                                      fontsize=8)  # fmt: skip
    fig.suptitle(title if title is not None else f"“{explanation.caption}”", fontsize=12)
    fig.tight_layout()
    return fig
