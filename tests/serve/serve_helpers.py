"""Small fixtures for the server tests: tiny trained-run folders and images, made here."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from captionlab.captioning import CaptioningRNN, save_checkpoint
from captionlab.data.features import FeatureExtractorConfig

WORDS = ["a", "small", "large", "red", "blue", "circle", "square", "left", "of", "the", "above"]
IMAGE_SIZE = 64  # the tiny models' feature crop: fast, and different from the CNN's 224


def tiny_model(cell: str, seed: int) -> CaptioningRNN:
    vocab = ["<NULL>", "<START>", "<END>", "<UNK>", *WORDS]
    return CaptioningRNN(
        {w: i for i, w in enumerate(vocab)},
        input_dim=1280,  # EfficientNet-Lite0's pooled features, no PCA
        wordvec_dim=8,
        hidden_dim=16,
        cell_type=cell,
        seed=seed,
    )


def write_runs(root: Path) -> Path:
    """``root/lstm/best.npz``, ``root/rnn/best.npz`` (untrained, so captions are word salad
    from the vocabulary) and ``root/broken/best.npz`` (not a checkpoint). Returns ``root``."""
    extra = {"features": dataclasses.asdict(FeatureExtractorConfig(image_size=IMAGE_SIZE))}
    for seed, cell in enumerate(("lstm", "rnn")):
        (root / cell).mkdir(parents=True, exist_ok=True)
        save_checkpoint(root / cell / "best.npz", tiny_model(cell, seed), extra=extra)
    (root / "broken").mkdir(parents=True, exist_ok=True)
    (root / "broken" / "best.npz").write_bytes(b"not a zip archive")
    return root


def png(pixels: np.ndarray | None = None, size=(96, 72), mode="RGB", fmt="PNG") -> bytes:
    """A picture file in memory (a seeded gradient when ``pixels`` is None)."""
    if pixels is None:
        w, h = size
        rng = np.random.default_rng(w * 1000 + h)
        base = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
        pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def photo_png(name: str = "chelsea") -> bytes:
    import skimage.data

    return png(np.asarray(getattr(skimage.data, name)()))
