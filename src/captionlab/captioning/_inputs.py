"""Checks of what every captioner's ``loss`` takes, written once."""

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
