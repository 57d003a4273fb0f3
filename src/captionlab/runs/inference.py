"""A trained run, used: find its checkpoint, rebuild its feature extractor, caption.

Nothing here trains, so the web server, the demo and ``captionlab caption`` load a model
and caption images without importing the solver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captionlab.captioning import beam_search, captions_to_text, greedy_decode, load_checkpoint
from captionlab.data.features import FeatureStore
from captionlab.data.pca import PCA
from captionlab.errors import CheckpointError, UserError

__all__ = [
    "caption_features",
    "caption_images",
    "checkpoint_extra",
    "extractor_for_checkpoint",
    "resolve_model_path",
]


def resolve_model_path(path: str | Path) -> Path:
    """``RUN/``, ``RUN/best`` or ``RUN/best.npz`` -> the checkpoint file."""
    path = Path(path)
    candidates = [path, path.with_name(path.name + ".npz"), path / "best.npz"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path}: no checkpoint there (expected a .npz file, RUN/best or a run folder "
        "holding best.npz)"
    )


def checkpoint_extra(store: FeatureStore) -> dict:
    """What a checkpoint needs (its ``extra``) to turn new images into this store's features."""
    extra: dict = {"features": dataclasses.asdict(store.config), "feature_store": str(store.path)}
    if store.pca is not None:
        extra["pca"] = {
            "mean": store.pca.mean,
            "components": store.pca.components,
            "explained_variance": store.pca.explained_variance,
        }
    return extra


def extractor_for_checkpoint(state: dict, device: str = "cpu", path: Path | str = "model"):
    """The :class:`~captionlab.extract.FeatureExtractor` a checkpoint's features came from."""
    from captionlab.data.feature_config import FeatureExtractorConfig
    from captionlab.extract import FeatureExtractor

    extra = state.get("extra") or {}
    if "features" not in extra:
        raise CheckpointError(
            f"{path}: holds no feature-extractor config (extra.features); it was not written "
            "by `captionlab train`, so new images cannot be captioned with it"
        )
    config = FeatureExtractorConfig.from_dict(extra["features"], source=f"{path}: extra.features")
    pca = None
    if "pca" in extra:
        p = extra["pca"]
        pca = PCA(
            np.asarray(p["mean"], np.float32),
            np.asarray(p["components"], np.float32),
            np.asarray(p["explained_variance"], np.float32),
        )
    return FeatureExtractor(config, device=device, pca=pca)


def caption_features(model, features: np.ndarray, beam: int = 1, max_length: int = 20):
    """Captions (as text) of features (N first): greedy for ``beam == 1``, else beam search."""
    if beam < 1:
        raise UserError(f"beam must be >= 1, got {beam}")
    if beam == 1:
        words = greedy_decode(model, features, max_length=max_length)
    else:
        words = beam_search(model, features, beam_size=beam, max_length=max_length).captions[:, 0]
    return captions_to_text(words, model.idx_to_word)


def caption_images(
    model_path: str | Path,
    image_paths: Sequence[str | Path],
    *,
    beam: int = 3,
    device: str = "cpu",
) -> list[dict]:
    """Caption image files with a trained model: features extracted on the fly, exactly as
    in training (same backbone, image size, pooling and PCA basis)."""
    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt)
    extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
    features = extractor.transform([Path(p) for p in image_paths]).astype(model.dtype)
    texts = caption_features(model, features, beam=beam)
    return [{"image": str(p), "caption": t} for p, t in zip(image_paths, texts, strict=True)]
