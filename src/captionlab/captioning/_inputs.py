"""What every captioner's ``loss`` does to its inputs first, written once: the checks, and
the order that packs its captions."""

from __future__ import annotations

import numpy as np


def check_captions(captions: np.ndarray, N: int) -> np.ndarray:
    """``captions`` as an (N, T) integer array of word indices with T >= 2 (the model reads
    ``captions[:, :-1]`` and predicts ``captions[:, 1:]``); ValueError says what came."""
    captions = np.asarray(captions)
    if captions.ndim != 2 or captions.shape[0] != N:
        raise ValueError(f"captions must be (N, T) with N={N}, got {captions.shape}")
    if captions.dtype.kind not in "iu":
        raise ValueError(f"captions must hold integer word indices, got {captions.dtype}")
    if captions.shape[1] < 2:
        raise ValueError(f"captions need T >= 2 tokens, got T={captions.shape[1]}")
    return captions


def longest_first(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """How a loss packs its captions (``captionlab.nn.Lengths``): longest first.

    Args:
        runs: (N, T) boolean, the steps whose outputs the loss reads.

    Returns:
        ``(lengths, order)``: each caption's length, its last read step + 1 (0 when none),
        in the packed order (non-increasing); and the stable permutation that sorts the
        rows longest first, or ``None`` when they already are.
    """
    T = runs.shape[1]
    lengths = np.where(runs.any(axis=1), T - np.argmax(runs[:, ::-1], axis=1), 0)
    if not np.any(np.diff(lengths) > 0):
        return lengths, None
    order = np.argsort(-lengths, kind="stable")
    return lengths[order], order
