"""A trained run, used: find its checkpoint, rebuild its feature extractor, caption.

Nothing here trains, so the web server, the demo and ``captionlab caption`` load a model
and caption images without importing the solver.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captionlab.captioning import beam_search, captions_to_text, greedy_decode, load_checkpoint
from captionlab.data.features import FeatureStore
from captionlab.data.pca import PCA
from captionlab.errors import CheckpointError, UserError

__all__ = [
    "caption_features",
    "caption_image_files",
    "caption_images",
    "checkpoint_extra",
    "checkpoint_pca",
    "extractor_for_checkpoint",
    "resolve_model_path",
    "scope_note",
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


def checkpoint_extra(
    store: FeatureStore, training_data: dict | None = None, run_dir: str | Path | None = None
) -> dict:
    """What a checkpoint needs (its ``extra``): the extractor config and PCA basis that turn
    new images into this store's features; the store itself, by resolved path and by its
    path relative to the run folder (so ``evaluate`` finds it from any folder, and after the
    run and its data moved together); and what the model was trained on (``training_data``,
    see :func:`captionlab.runs.folder.data_identity`)."""
    where = Path(store.path).resolve()
    extra: dict = {"features": dataclasses.asdict(store.config), "feature_store": str(where)}
    if run_dir is not None:
        extra["feature_store_relative"] = os.path.relpath(where, Path(run_dir).resolve())
    if training_data is not None:
        extra["training_data"] = dict(training_data)
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
    return FeatureExtractor(config, device=device, pca=checkpoint_pca(state, config, path))


def checkpoint_pca(state: dict, config, path: Path | str = "model") -> PCA | None:
    """The PCA basis stored in a checkpoint's ``extra.pca``, checked against the extractor
    ``config`` (``None`` when the config has no PCA). CheckpointError names the file."""
    extra = state.get("extra") or {}
    if config.pca_dim is None:
        return None
    p = extra.get("pca")
    R, D = config.raw_dim, config.pca_dim
    if not isinstance(p, dict) or not all(
        isinstance(p.get(k), np.ndarray) for k in ("mean", "components", "explained_variance")
    ):
        raise CheckpointError(
            f"{path}: extra.features asks for PCA to {D} dimensions, but the checkpoint holds "
            "no PCA basis (extra.pca with mean, components, explained_variance), so new images "
            "cannot be turned into the features it was trained on"
        )
    pca = PCA(
        np.asarray(p["mean"], np.float32),
        np.asarray(p["components"], np.float32),
        np.asarray(p["explained_variance"], np.float32),
    )
    if pca.mean.shape != (R,) or pca.components.shape != (R, D):
        raise CheckpointError(
            f"{path}: extra.pca must hold mean ({R},) and components ({R}, {D}) for its "
            f"extractor config, got {pca.mean.shape} and {pca.components.shape}"
        )
    return pca


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
    return caption_image_files(model_path, image_paths, beam=beam, device=device)["captions"]


def caption_image_files(
    model_path: str | Path,
    image_paths: Sequence[str | Path],
    *,
    beam: int = 3,
    device: str = "cpu",
) -> dict:
    """:func:`caption_images`, and what the model was trained on: ``{"captions": [{"image",
    "caption"}], "trained_on": {...} or None, "note": str or None}`` (see :func:`scope_note`)."""
    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt, solver_state=False)
    extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
    features = extractor.transform([Path(p) for p in image_paths]).astype(model.dtype)
    texts = caption_features(model, features, beam=beam)
    captions = [{"image": str(p), "caption": t} for p, t in zip(image_paths, texts, strict=True)]
    trained_on = (state.get("extra") or {}).get("training_data")
    return {"captions": captions, "trained_on": trained_on, "note": scope_note(state)}


def scope_note(state: dict) -> str | None:
    """What a model trained on the generated shapes benchmark can describe, and how to train
    one for photos (None for a model trained on other data, or one that does not say)."""
    trained_on = (state.get("extra") or {}).get("training_data") or {}
    if trained_on.get("dataset_title") != "shapes":
        return None
    return (
        "this model was trained on the generated shapes benchmark "
        f"({trained_on.get('dataset', 'dataset.json')}): it describes only shapes scenes (one "
        "to three coloured circles, squares, triangles and stars on plain backgrounds) and "
        "says nothing true about photos. To caption photos, train on a photo caption dataset "
        "(a Karpathy dataset.json such as Flickr8k, or COCO captions): `captionlab features "
        "dataset.json --out feats.h5 --pool avg+2x2 --pca 512`, then `captionlab train --data "
        "dataset.json --features feats.h5 --out runs/photos`"
    )
