"""Small fixtures for the server tests: tiny trained-run folders and images, made here."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from captionlab.captioning import (
    AttentionCaptioner,
    CaptioningRNN,
    CaptioningTransformer,
    save_checkpoint,
)
from captionlab.data.features import FeatureExtractorConfig

WORDS = ["a", "small", "large", "red", "blue", "circle", "square", "left", "of", "the", "above"]
VOCAB = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", *WORDS])}
IMAGE_SIZE = 64  # the tiny models' feature crop: fast, and different from the CNN's 224
# The attention models' grid: the last feature map's raw cells (1280 values, no PCA), 2x2 of
# them at 64 px (ceil(64 / 32)).
GRID = FeatureExtractorConfig(image_size=IMAGE_SIZE, grid=True, grid_taps="block3",
                              grid_pca_dim=None)  # fmt: skip
GRID_SIDE = GRID.grid_side
MODELS = ["attention", "lstm", "rnn"]  # what write_runs writes that loads, by name


def tiny_model(cell: str, seed: int) -> CaptioningRNN:
    return CaptioningRNN(
        VOCAB,
        input_dim=1280,  # EfficientNet-Lite0's pooled features, no PCA
        wordvec_dim=8,
        hidden_dim=16,
        cell_type=cell,
        seed=seed,
    )


SENTENCES = ["a small red circle left of a large blue square", "a small blue circle",
             "a large blue square above a small red circle",
             "the red square left of the blue circle"]  # fmt: skip


def tiny_attention_model(seed: int = 2) -> AttentionCaptioner:
    """A Show-Attend-Tell captioner over :data:`GRID`'s cells that writes sentences.

    Its language model is trained (150 Adam steps, well under a second) on
    :data:`SENTENCES` with all-zero grids, so its captions are these sentences whatever the
    image; then the grid's paths into the LSTM (``W_h0``, ``W_c0``, ``Wz``) are scaled down
    so that a real grid only nudges the words, and the attention's (untrained, random) are
    scaled up, so that where it looks changes from image to image and word to word.
    """
    from captionlab.nn import optim

    model = AttentionCaptioner(VOCAB, input_dim=GRID.grid_dim, wordvec_dim=8, hidden_dim=16,
                               attention_dim=8, seed=seed, attention_penalty=0.0)  # fmt: skip
    captions = np.zeros((len(SENTENCES), 12), np.int64)  # (N, T), <NULL> padded
    for i, sentence in enumerate(SENTENCES):
        ids = [VOCAB["<START>"], *(VOCAB[w] for w in sentence.split()), VOCAB["<END>"]]
        captions[i, : len(ids)] = ids
    grids = np.zeros((len(SENTENCES), GRID.grid_len, GRID.grid_dim), np.float32)  # (N, L, D)
    configs: dict = {}
    for _ in range(150):
        _, grads = model.loss(grids, captions)
        for k, dw in grads.items():
            config = configs.get(k, {"learning_rate": 2e-2})
            model.params[k], configs[k] = optim.adam(model.params[k], dw, config)
    for k, factor in (("W_h0", 0.02), ("W_c0", 0.02), ("Wz", 0.02), ("W_att_a", 2.0),
                      ("W_att_h", 6.0)):  # fmt: skip
        model.params[k] = (model.params[k] * factor).astype(model.dtype)
    return model


def write_runs(root: Path) -> Path:
    """``root/lstm/best.npz``, ``root/rnn/best.npz``, ``root/attention/best.npz`` (untrained,
    so captions are word salad from the vocabulary) and ``root/broken/best.npz`` (not a
    checkpoint). Returns ``root``."""
    extra = {"features": dataclasses.asdict(FeatureExtractorConfig(image_size=IMAGE_SIZE))}
    for seed, cell in enumerate(("lstm", "rnn")):
        (root / cell).mkdir(parents=True, exist_ok=True)
        save_checkpoint(root / cell / "best.npz", tiny_model(cell, seed), extra=extra)
    (root / "attention").mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        root / "attention" / "best.npz",
        tiny_attention_model(),
        extra={"features": dataclasses.asdict(GRID)},
    )
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


def write_transformer_run(root: Path) -> Path:
    """``root/transformer/best.npz``: a tiny untrained CaptioningTransformer over
    :data:`GRID`'s cells (its loss gives no feature gradient, so it cannot be explained)."""
    model = CaptioningTransformer(
        VOCAB, input_dim=GRID.grid_dim, wordvec_dim=8, num_heads=2, num_layers=1,
        dim_feedforward=16, seed=3, grid=True, num_cells=GRID.grid_len,
    )  # fmt: skip
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        root / "transformer" / "best.npz", model, extra={"features": dataclasses.asdict(GRID)}
    )
    return root
