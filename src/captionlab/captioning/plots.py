"""Figures of captioning: loss curves of training runs (a PNG) and attention maps (a
matplotlib Figure per image). Agg only; no pyplot state."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from captionlab._atomic import atomic_write
from captionlab.tokens import END, NULL, START

__all__ = [
    "attention_figure",
    "attention_map",
    "attention_shade",
    "caption_words",
    "plot_loss_curves",
]


def _smooth(values: np.ndarray, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A moving average over ``len / points`` iterations: (x, y), x counted from 1."""
    k = max(1, values.size // points)
    y = np.convolve(values, np.ones(k) / k, mode="valid")
    return np.arange(y.size) + k, y


def plot_loss_curves(path: str | os.PathLike, runs: Mapping[str, Mapping]) -> Path:
    """Write the training loss per iteration and the per-epoch losses of ``runs`` to ``path``.

    Args:
        path: the PNG to write (atomically).
        runs: name -> histories, as the solver keeps them: ``loss_history`` (one value per
            iteration), ``train_loss_history``, ``val_loss_history`` and
            ``val_metric_history`` (one per epoch; any may be missing or empty), and
            optionally ``metric_name``. A single run also gets its validation metric on a
            second axis; several runs are told apart by their names.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    single = len(runs) == 1
    for i, (name, r) in enumerate(runs.items()):
        colour = f"C{i}"
        label = f"{name} " if name else ""
        loss = np.asarray(r.get("loss_history") or [], dtype=float)
        if loss.size:
            if single:
                ax.plot(np.arange(1, loss.size + 1), loss, lw=0.6, alpha=0.35, color=colour)
            ax.plot(*_smooth(loss), color=colour, label=f"{label}train".strip())
        train = r.get("train_loss_history") or []
        val = r.get("val_loss_history") or []
        if train:
            epochs = np.arange(1, len(train) + 1)
            ax2.plot(epochs, train, marker="o", ls="--", color=colour, label=f"{label}train")
        if val:
            epochs = np.arange(1, len(val) + 1)
            ax2.plot(epochs, val, marker="o", color=colour, label=f"{label}val")
        metric = r.get("val_metric_history") or []
        if single and metric:
            ax3 = ax2.twinx()
            ax3.plot(np.arange(1, len(metric) + 1), metric, color="C2", marker="s")
            ax3.set_ylabel(f"val {r.get('metric_name', 'metric')}", color="C2")
    ax.set(xlabel="iteration", ylabel="loss per caption", title="training loss")
    ax2.set(xlabel="epoch", ylabel="loss per caption", title="loss per epoch")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


# ---------------------------------------------------------------------------- attention
def caption_words(words: np.ndarray, idx_to_word) -> list[str]:
    """The words of one generated caption (T,) before its ``<END>``; word ``t`` is the one
    step ``t`` chose, so it pairs with that step's attention ``alphas[t]``."""
    out = []
    for idx in np.asarray(words).reshape(-1):
        word = idx_to_word[int(idx)]
        if word in (END, NULL):
            break
        if word != START:
            out.append(word)
    return out


def attention_map(alpha: np.ndarray, size: int) -> np.ndarray:
    """One step's attention over ``s x s`` cells (L = s*s,) -> a smooth (size, size) map.

    Each cell covers its square of the image (row-major, top-left first, as the grid is
    stored); the map is the cells' weights interpolated bicubically between the cells'
    centres (held constant beyond the outer centres), clipped at 0 and scaled so that its
    largest value is 1. A uniform attention gives a flat map.
    """
    from skimage.transform import resize

    alpha = np.asarray(alpha, dtype=np.float64)
    side = math.isqrt(alpha.size)
    if side * side != alpha.size:
        raise ValueError(f"alpha must hold s*s cell weights, got {alpha.size}")
    heat = resize(alpha.reshape(side, side), (size, size), order=3, mode="edge")
    heat = np.clip(heat, 0, None)
    top = heat.max()
    return heat / top if top > 0 else heat


def attention_shade(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image uint8 (S, S, 3) shown through an attention map (S, S) in [0, 1] -> float RGB
    (S, S, 3): where the step looked the image keeps its colours; elsewhere it fades to a
    dark grey, so the map never hides the colour a word names."""
    base = np.asarray(image, dtype=np.float32) / 255.0
    grey = base.mean(axis=2, keepdims=True)
    heat = np.asarray(heat, dtype=np.float32)[:, :, None]  # (S, S, 1)
    return np.clip(heat * base + (1 - heat) * (0.25 * grey + 0.05), 0, 1)


def attention_figure(image: np.ndarray, words, alphas: np.ndarray, *, columns: int = 6):
    """Show, Attend and Tell's figure: the image with its caption, then one panel per word,
    the image dimmed where the word's step did not look.

    Args:
        image: the image as the network saw it, uint8 (S, S, 3).
        words: T words (:func:`caption_words`).
        alphas: (T, L) the attention of each word's step over the L = s*s cells.
        columns: panels per row.

    Returns:
        a matplotlib Figure (save it with ``captionlab.vision.figures.save_figure``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(image)
    alphas = np.asarray(alphas)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (S, S, 3), got {image.shape}")
    words = list(words)
    if alphas.ndim != 2 or alphas.shape[0] < len(words):
        raise ValueError(f"alphas must be (T, L) with T >= {len(words)} words, got {alphas.shape}")
    S = image.shape[0]
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = -(-panels // cols)
    fig = Figure(figsize=(1.9 * cols, 2.15 * rows))
    FigureCanvasAgg(fig)
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_axis_off()
        if k == 0:
            ax.imshow(image)
            ax.set_title("image", fontsize=9)
        elif k < panels:
            heat = attention_map(alphas[k - 1], S)  # (S, S) in [0, 1]
            ax.imshow(attention_shade(image, heat))
            ax.contour(heat, levels=[0.5], colors=["#ffd400"], linewidths=0.8)
            peak = float(alphas[k - 1].max())
            ax.set_title(f"{words[k - 1]}  ({peak:.2f})", fontsize=9)
    fig.suptitle(" ".join(words), fontsize=10, y=0.995)
    fig.tight_layout()
    return fig
