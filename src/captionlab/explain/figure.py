"""The explanation figure: the image, then one panel per word with its map (the word as the
panel's title); a second row with each word's attention when the captioner has it."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captionlab.explain.words import Explanation
from captionlab.vision.figures import METHOD_TITLES, overlay

__all__ = ["explanation_figure"]

PANEL = 2.0  # inches per panel


def explanation_figure(
    pixels: np.ndarray, explanation: Explanation, *, title: str | None = None
) -> Figure:
    """``pixels`` uint8 (S, S, 3) (the input the maps are on) and its :class:`Explanation`.

    Row 1: the image, then each word's saliency overlay titled with the word (its
    probability beneath). Row 2, for a captioner with attention: each word's attention.
    """
    words = explanation.words
    rows = 2 if explanation.has_attention else 1
    cols = 1 + len(words)
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
    axes[0, 0].set_xlabel(METHOD_TITLES.get(explanation.method, explanation.method), fontsize=8)
    for c, w in enumerate(words, start=1):
        axes[0, c].imshow(overlay(pixels, w.saliency))
        axes[0, c].set_title(w.word, fontsize=12, fontweight="bold")
        axes[0, c].set_xlabel(f"p = {w.prob:.2f}", fontsize=8)
    if rows == 2:
        axes[1, 0].set_title("attention", fontsize=10)
        for c, w in enumerate(words, start=1):
            if w.attention is not None:
                axes[1, c].imshow(overlay(pixels, w.attention, cmap="viridis"))
                axes[1, c].set_title(w.word, fontsize=10)
    fig.suptitle(title if title is not None else f"“{explanation.caption}”", fontsize=12)
    fig.tight_layout()
    return fig
