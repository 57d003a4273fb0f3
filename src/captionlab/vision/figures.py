"""Figures for people to look at: saliency overlays, fooling images, class visualizations.

All functions take images as uint8 arrays (H, W, 3) and return a :class:`matplotlib.figure.Figure`
drawn with the Agg backend; nothing touches pyplot's global state, so importing this module
or calling it from a notebook or a server has no side effects. :func:`save_figure` writes a
PNG atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captionlab._atomic import atomic_write

PANEL_INCHES = 3.0
METHOD_TITLES = {
    "vanilla": "vanilla gradient",
    "smoothgrad": "SmoothGrad",
    "ig": "Integrated Gradients",
}


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _panels(n: int, *, rows: int = 1, extra_height: float = 0.45) -> tuple[Figure, list]:
    cols = -(-n // rows)
    fig = Figure(figsize=(PANEL_INCHES * cols, (PANEL_INCHES + extra_height) * rows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def _label(name: str | None, prob: float | None) -> str:
    if name is None:
        return ""
    return name if prob is None else f"{name}  {100 * prob:.1f}%"


def normalize_map(
    saliency: np.ndarray, percentile: float = 99.5, floor_percentile: float = 50.0
) -> np.ndarray:
    """Scale a map (H, W) to [0, 1] for display: values up to its ``floor_percentile`` map to
    0 (dense maps such as SmoothGrad's otherwise glow everywhere) and values from its
    ``percentile`` up map to 1 (so a few hot pixels do not wash out the rest)."""
    m = np.asarray(saliency, dtype=np.float64)
    lo, hi = np.percentile(m, [floor_percentile, percentile])
    if hi <= lo:
        lo, hi = m.min(), m.max()
    if hi <= lo:
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def overlay(image: np.ndarray, saliency: np.ndarray, *, cmap: str = "inferno") -> np.ndarray:
    """The photo (H, W, 3) uint8, darkened and greyed, under the heat map (H, W) -> float RGB."""
    from matplotlib import colormaps

    image = _check_image(image, "image")
    m = normalize_map(saliency)
    if m.shape != image.shape[:2]:
        raise ValueError(f"saliency must be {image.shape[:2]}, got {m.shape}")
    grey = image.astype(np.float64).mean(axis=2, keepdims=True) / 255.0  # (H, W, 1)
    heat = colormaps[cmap](m)[..., :3]  # (H, W, 3)
    alpha = (0.15 + 0.85 * np.sqrt(m))[..., None]
    return np.clip((1 - alpha) * 0.75 * grey + alpha * heat, 0.0, 1.0)


def saliency_figure(
    image: np.ndarray,
    maps: np.ndarray | Mapping[str, np.ndarray],
    *,
    label: str | None = None,
    prob: float | None = None,
    title: str | None = None,
) -> Figure:
    """The photo beside one saliency overlay per method.

    ``image`` uint8 (H, W, 3); ``maps`` one (H, W) array or ``{method: (H, W)}``; ``label`` and
    ``prob`` name the explained class under the photo.
    """
    image = _check_image(image, "image")
    if not isinstance(maps, Mapping):
        maps = {"vanilla": maps}
    fig, axes = _panels(1 + len(maps))
    axes[0].imshow(image)
    axes[0].set_title(_label(label, prob) or "photo", fontsize=11)
    for ax, (method, m) in zip(axes[1:], maps.items(), strict=True):
        ax.imshow(overlay(image, np.asarray(m)))
        ax.set_title(METHOD_TITLES.get(method, method), fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def magnified_difference(
    original: np.ndarray, fooled: np.ndarray, magnify: float | None = None
) -> tuple[np.ndarray, float, float]:
    """The change a fooling image made, made visible: ``(shown, magnify, linf)``.

    ``shown`` uint8 (H, W, 3) is the difference around mid-grey, magnified so its larger
    changes fill the range (scaled to the 99th percentile of the changes, the top 1% clipped:
    most changes are far below the largest), or by ``magnify``; ``linf`` is the largest
    change in grey levels.
    """
    original = _check_image(original, "original")
    fooled = _check_image(fooled, "fooled")
    diff = fooled.astype(np.float64) - original.astype(np.float64)  # (H, W, 3)
    linf = float(np.abs(diff).max())
    if magnify is None:
        typical = float(np.percentile(np.abs(diff), 99.0)) or linf
        magnify = 127.0 / typical if typical > 0 else 1.0
    shown = np.clip(127.5 + magnify * diff, 0, 255).astype(np.uint8)
    return shown, magnify, linf


def fooling_figure(
    original: np.ndarray,
    fooled: np.ndarray,
    *,
    original_label: str,
    original_prob: float,
    fooled_label: str,
    fooled_prob: float,
    magnify: float | None = None,
    title: str | None = None,
) -> Figure:
    """Original, fooling image and the magnified difference side by side.

    ``original`` and ``fooled`` uint8 (H, W, 3); labels and probabilities are what the model
    predicts for each. The difference is shown around mid-grey, magnified so its larger
    changes fill the range (the top 1% clipped), or by ``magnify``.
    """
    shown, magnify, linf = magnified_difference(original, fooled, magnify)
    fig, axes = _panels(3)
    axes[0].imshow(original)
    axes[0].set_title("original\n" + _label(original_label, original_prob), fontsize=10)
    axes[1].imshow(fooled)
    axes[1].set_title("fooling image\n" + _label(fooled_label, fooled_prob), fontsize=10)
    axes[2].imshow(shown)
    axes[2].set_title(
        f"difference x{magnify:.0f}\nmax change {linf:.0f}/255 per channel", fontsize=10
    )
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def class_viz_figure(
    images: np.ndarray | Sequence[np.ndarray],
    labels: str | Sequence[str],
    probs: float | Sequence[float],
    *,
    iterations: int | None = None,
    columns: int = 5,
) -> Figure:
    """One or more class visualizations, each titled with its class name and probability.

    ``images`` one uint8 (H, W, 3) or a sequence of them, with matching ``labels``/``probs``.
    """
    if isinstance(labels, str):
        images, labels, probs = [images], [labels], [probs]
    images = [_check_image(im, f"images[{i}]") for i, im in enumerate(images)]
    if not len(images) == len(labels) == len(probs):
        raise ValueError(
            f"images, labels and probs must match, got {len(images)}, {len(labels)}, {len(probs)}"
        )
    n = len(images)
    rows = -(-n // columns)
    fig, axes = _panels(n, rows=rows)
    for ax, im, name, p in zip(axes, images, labels, probs, strict=False):
        ax.imshow(im)
        ax.set_title(_label(name, float(p)), fontsize=11)
    if iterations is not None:
        fig.suptitle(f"class visualization, {iterations} iterations", fontsize=12)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temporary file, then rename)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def classify_figure(
    images: Sequence[np.ndarray],
    tops: Sequence[Sequence[tuple[str, float]]],
    *,
    titles: Sequence[str] | None = None,
) -> Figure:
    """Each photo (uint8 (H, W, 3)) above a bar chart of its top classes ``[(name, prob)]``."""
    images = [_check_image(im, f"images[{i}]") for i, im in enumerate(images)]
    if len(images) != len(tops):
        raise ValueError(f"images and tops must match, got {len(images)} and {len(tops)}")
    n = len(images)
    fig = Figure(figsize=(PANEL_INCHES * 1.3 * n, PANEL_INCHES * 2.0))
    FigureCanvasAgg(fig)
    for i, (im, top) in enumerate(zip(images, tops, strict=True)):
        ax = fig.add_subplot(2, n, i + 1)
        ax.imshow(im)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=11)
        bars = fig.add_subplot(2, n, n + i + 1)
        names = [name for name, _ in top][::-1]
        probs = [100 * p for _, p in top][::-1]
        bars.barh(range(len(top)), probs, color="#4c72b0")
        bars.set_yticks(range(len(top)), names, fontsize=9)
        bars.set_xlim(0, 100)
        bars.set_xlabel("probability (%)", fontsize=9)
        for y, p in enumerate(probs):
            inside = p > 80
            bars.text(
                p - 2 if inside else p + 2,
                y,
                f"{p:.1f}",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                fontsize=8,
            )
        bars.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
