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
from captionlab.errors import CheckpointError, DataError, UserError

__all__ = [
    "best_captions",
    "caption_features",
    "caption_image_files",
    "caption_images",
    "check_store_for_model",
    "checkpoint_extra",
    "checkpoint_pca",
    "extractor_for_checkpoint",
    "features_for_model",
    "model_kind",
    "needs_grid",
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
    """What a checkpoint needs (its ``extra``): the extractor config and PCA bases (pooled,
    and the grid's per-cell one) that turn new images into this store's features; the store
    itself, by resolved path and by its path relative to the run folder (so ``evaluate`` finds
    it from any folder, and after the run and its data moved together); and what the model was
    trained on (``training_data``, see :func:`captionlab.runs.folder.data_identity`)."""
    where = Path(store.path).resolve()
    extra: dict = {"features": dataclasses.asdict(store.config), "feature_store": str(where)}
    if run_dir is not None:
        extra["feature_store_relative"] = os.path.relpath(where, Path(run_dir).resolve())
    if training_data is not None:
        extra["training_data"] = dict(training_data)
    for key, pca in (("pca", store.pca), ("grid_pca", store.grid_pca)):
        if pca is not None:
            extra[key] = {
                "mean": pca.mean,
                "components": pca.components,
                "explained_variance": pca.explained_variance,
                "scale": float(pca.scale),
            }
    return extra


def needs_grid(model) -> bool:
    """Whether ``model`` reads a grid per image (feature shape (L, D)), not one vector."""
    return len(getattr(model, "feature_shape", (None,))) == 2


def model_kind(model) -> str:
    """A short name: the cell of a CaptioningRNN (``lstm``, ``rnn``, ``gru``), ``attention``
    for an AttentionCaptioner, ``transformer`` for a CaptioningTransformer, else the class
    name."""
    names = {"AttentionCaptioner": "attention", "CaptioningTransformer": "transformer"}
    name = type(model).__name__
    return getattr(model, "cell_type", None) or names.get(name, name)


def check_store_for_model(model, store: FeatureStore, ckpt: Path | str = "model") -> None:
    """DataError unless ``store`` holds what ``model`` reads: a grid for a grid model (the
    message names the store and the flag that makes one), of the model's input size."""
    want = tuple(model.feature_shape)
    if needs_grid(model):
        try:
            store.require_grid()
        except DataError as exc:
            raise DataError(f"{exc} ({ckpt} reads a grid)") from None
        got = store.grid_shape
    else:
        got = (store.dim,)
    if any(w is not None and w != g for w, g in zip(want, got, strict=True)):
        raise DataError(f"{store.path}: features are {got} per image, the model {ckpt} expects "
                        f"{tuple('any' if w is None else w for w in want)}")  # fmt: skip


def features_for_model(model, store: FeatureStore, ids: list[str], ckpt: Path | str = "model"):
    """What ``model`` reads for images ``ids`` from ``store``: pooled vectors (K, D) or grids
    (K, L, D), read for those ids only and checked against the model's input size."""
    check_store_for_model(model, store, ckpt)
    features = store.grid_features_for(ids) if needs_grid(model) else store.features_for(ids)
    return features.astype(model.dtype, copy=False)


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
    return FeatureExtractor(
        config,
        device=device,
        pca=checkpoint_pca(state, config, path),
        grid_pca=checkpoint_pca(state, config, path, grid=True),
    )


def checkpoint_pca(state: dict, config, path: Path | str = "model", grid: bool = False):
    """The PCA basis stored in a checkpoint's ``extra.pca`` (``extra.grid_pca`` with
    ``grid``), checked against the extractor ``config`` (``None`` when the config has no such
    PCA). CheckpointError names the file."""
    extra = state.get("extra") or {}
    key = "grid_pca" if grid else "pca"
    if grid:
        if not config.grid or config.grid_pca_dim is None:
            return None
        R, D = config.grid_raw_dim, config.grid_pca_dim
    else:
        if config.pca_dim is None:
            return None
        R, D = config.raw_dim, config.pca_dim
    p = extra.get(key)
    if not isinstance(p, dict) or not all(
        isinstance(p.get(k), np.ndarray) for k in ("mean", "components", "explained_variance")
    ):
        raise CheckpointError(
            f"{path}: extra.features asks for PCA to {D} dimensions, but the checkpoint holds "
            f"no PCA basis (extra.{key} with mean, components, explained_variance), so new "
            "images cannot be turned into the features it was trained on"
        )
    scale = p.get("scale", 1.0)
    if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{path}: extra.{key}.scale must be a positive number, got {scale!r}")
    pca = PCA(
        np.asarray(p["mean"], np.float32),
        np.asarray(p["components"], np.float32),
        np.asarray(p["explained_variance"], np.float32),
        float(scale),
    )
    if pca.mean.shape != (R,) or pca.components.shape != (R, D):
        raise CheckpointError(
            f"{path}: extra.{key} must hold mean ({R},) and components ({R}, {D}) for its "
            f"extractor config, got {pca.mean.shape} and {pca.components.shape}"
        )
    return pca


def best_captions(
    model, features: np.ndarray, beam: int = 1, max_length: int = 20, attention: bool = False
):
    """Words (N, max_length) of the best caption per image: greedy for ``beam == 1``, else
    beam search; with ``attention``, also the attention (N, max_length, L) of every word of
    those captions (``None`` for a model without attention)."""
    if beam < 1:
        raise UserError(f"beam must be >= 1, got {beam}")
    if beam == 1:
        words, alphas = greedy_decode(model, features, max_length=max_length,
                                      return_attention=True)  # fmt: skip
    else:
        res = beam_search(model, features, beam_size=beam, max_length=max_length,
                          return_attention=attention)  # fmt: skip
        words = res.captions[:, 0]
        alphas = None if res.attention is None else res.attention[:, 0]
    return (words, alphas) if attention else words


def caption_features(model, features: np.ndarray, beam: int = 1, max_length: int = 20):
    """Captions (as text) of features (N first): greedy for ``beam == 1``, else beam search."""
    return captions_to_text(best_captions(model, features, beam, max_length), model.idx_to_word)


def caption_images(
    model_path: str | Path,
    image_paths: Sequence[str | Path],
    *,
    beam: int = 3,
    device: str = "cpu",
    attention_dir: str | Path | None = None,
) -> list[dict]:
    """Caption image files with a trained model: features extracted on the fly, exactly as
    in training (same backbone, image size, pooling and PCA bases; the grid too for an
    attention model, from the same forward pass).

    With ``attention_dir``, also write one figure per image there (the image and, per
    word, where the model looked; :func:`captionlab.captioning.plots.attention_figure`),
    named ``<image stem>_attention.png``; each result then has ``"figure"``.
    """
    return caption_image_files(
        model_path, image_paths, beam=beam, device=device, attention_dir=attention_dir
    )["captions"]


def caption_image_files(
    model_path: str | Path,
    image_paths: Sequence[str | Path],
    *,
    beam: int = 3,
    device: str = "cpu",
    attention_dir: str | Path | None = None,
) -> dict:
    """:func:`caption_images`, and what the model was trained on: ``{"captions": [{"image",
    "caption"[, "figure"]}], "trained_on": {...} or None, "note": str or None}`` (see
    :func:`scope_note`)."""
    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt, solver_state=False)
    grid = needs_grid(model)
    if attention_dir is not None and not grid:
        raise UserError(
            f"--attention needs an attention model; {ckpt} holds a {type(model).__name__} "
            f"({model_kind(model)}), which has no attention to show"
        )
    extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
    if grid and not extractor.config.grid:
        raise CheckpointError(f"{ckpt}: a model that reads a grid, whose feature config has none")
    paths = [Path(p) for p in image_paths]
    images = extractor.load_images(paths)  # (M, S, S, 3) uint8, as the network sees them
    if grid:
        features = extractor.transform_images_with_grid(images)[1]  # (M, L, Dg)
    else:
        features = extractor.transform_images(images)  # (M, D)
    words, alphas = best_captions(model, features.astype(model.dtype), beam=beam, attention=True)
    texts = captions_to_text(words, model.idx_to_word)
    captions = [{"image": str(p), "caption": t} for p, t in zip(image_paths, texts, strict=True)]
    if attention_dir is not None:
        from captionlab.captioning.plots import attention_figure, caption_words
        from captionlab.vision.figures import save_figure

        out = Path(attention_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k, (path, result) in enumerate(zip(paths, captions, strict=True)):
            shown = caption_words(words[k], model.idx_to_word)
            fig = attention_figure(images[k], shown, alphas[k, : len(shown)])
            result["figure"] = str(save_figure(fig, out / f"{path.stem}_attention.png"))
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
