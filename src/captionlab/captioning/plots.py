"""Loss curves of one or several training runs, as a PNG (Agg; no pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from captionlab._atomic import atomic_write

__all__ = ["plot_loss_curves"]


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
