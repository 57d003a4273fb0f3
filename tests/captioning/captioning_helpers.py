"""Shared helpers for the captioning tests: a toy vocabulary and a toy captioning dataset."""

from __future__ import annotations

import numpy as np

SPECIAL = ["<NULL>", "<START>", "<END>", "<UNK>"]


def make_vocab(V: int) -> dict[str, int]:
    """word_to_idx with the four special tokens and V - 4 words w4, w5, ..."""
    words = SPECIAL + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


def make_captions(rng: np.random.Generator, N: int, T: int, V: int) -> np.ndarray:
    """(N, T) captions: <START>, 3..T-2 random words, <END>, then <NULL> padding."""
    caps = np.zeros((N, T), dtype=np.int32)
    for n in range(N):
        length = int(rng.integers(3, T - 1))
        caps[n, 0] = 1
        caps[n, 1 : 1 + length] = rng.integers(4, V, size=length)
        caps[n, 1 + length] = 2
    return caps


def make_data(
    seed: int = 0,
    n_train: int = 40,
    n_val_images: int = 6,
    captions_per_image: int = 3,
    T: int = 9,
    V: int = 20,
    D: int = 12,
) -> dict:
    """A cs231n-layout data dict with one caption per train image and several per val image."""
    rng = np.random.default_rng(seed)
    vocab = make_vocab(V)
    n_val = n_val_images * captions_per_image
    return {
        "train_captions": make_captions(rng, n_train, T, V),
        "train_image_idxs": np.arange(n_train),
        "train_features": rng.standard_normal((n_train, D)),
        "val_captions": make_captions(rng, n_val, T, V),
        "val_image_idxs": np.repeat(np.arange(n_val_images), captions_per_image),
        "val_features": rng.standard_normal((n_val_images, D)),
        "word_to_idx": vocab,
        "idx_to_word": [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])],
    }
