"""Evaluation: caption a split of a dataset with a trained model and score the captions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captionlab.captioning import load_checkpoint
from captionlab.data import CaptionDataset, load_dataset
from captionlab.data.features import FeatureStore
from captionlab.errors import DataError, UserError
from captionlab.runs.inference import caption_features, resolve_model_path

__all__ = ["evaluate_run", "load_scenes_for", "scene_scores"]


def evaluate_run(
    model_path: str | Path,
    dataset_path: str | Path,
    store_path: str | Path | None = None,
    *,
    split: str = "test",
    beams: Sequence[int] = (1,),
    image_root: str | Path | None = None,
    scenes_path: str | Path | None = None,
    coco: bool = True,
    meteor: bool = True,
    limit: int | None = None,
) -> dict:
    """Caption ``split`` of a dataset with a trained model and score it.

    Returns ``{"split", "images", "results": {"greedy"|"beam3": {"metrics", "captions"}}}``.
    COCO metrics (BLEU, METEOR, ROUGE-L, CIDEr-D) always; scene accuracy too when the
    dataset has a ``scenes.json`` beside it (the shapes benchmark) or ``scenes_path`` is given.
    """
    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt)
    dataset = load_dataset(dataset_path, image_root=image_root)
    records = dataset.split(split)
    if not records:
        raise DataError(f"{dataset.source}: no images in split {split!r}")
    if limit is not None:
        records = records[:limit]
    features = _split_features(model, state, ckpt, store_path, [r.image_id for r in records])
    scenes = load_scenes_for(dataset, scenes_path)
    results = {}
    for beam in beams:
        name = "greedy" if beam == 1 else f"beam{beam}"
        texts = caption_features(model, features, beam=beam)
        results[name] = {
            "metrics": _score(texts, records, scenes, coco=coco, meteor=meteor),
            "captions": [
                {
                    "image_id": r.image_id,
                    "path": str(r.path),
                    "caption": text,
                    "references": list(r.captions),
                }
                for r, text in zip(records, texts, strict=True)
            ],
        }
    return {
        "model": str(ckpt),
        "cell": model.cell_type,
        "split": split,
        "images": len(records),
        "results": results,
    }


def _split_features(model, state: dict, ckpt: Path, store_path, ids: list[str]) -> np.ndarray:
    """The features of images ``ids`` from the store (default: the one the model trained on),
    checked against the model's input size."""
    if store_path is None:
        store_path = (state.get("extra") or {}).get("feature_store")
        if store_path is None:
            raise UserError("give --features STORE: the checkpoint names no feature store")
    store = FeatureStore.open(store_path)
    features = store.features_for(ids).astype(model.dtype, copy=False)
    D = model.params["W_proj"].shape[0]
    if features.shape[1] != D:
        raise DataError(
            f"{store.path}: features are {features.shape[1]}-d, the model {ckpt} expects {D}-d"
        )
    return features


def _score(texts: list[str], records, scenes: dict | None, *, coco: bool, meteor: bool) -> dict:
    """COCO metrics of ``texts`` against the records' references, plus scene accuracy."""
    from captionlab.captioning.metrics import coco_metrics

    ids = [r.image_id for r in records]
    metrics = {}
    if coco:
        references = {r.image_id: list(r.captions) for r in records}
        metrics = coco_metrics(dict(zip(ids, texts, strict=True)), references, meteor=meteor)
    if scenes is not None:
        metrics.update(scene_scores(texts, [scenes[i] for i in ids]))
    return metrics


def load_scenes_for(dataset: CaptionDataset, scenes_path=None) -> dict | None:
    """The shapes scenes of ``dataset`` (``scenes.json`` beside it, or ``scenes_path``)."""
    from captionlab.data.shapes import load_scenes

    path = Path(scenes_path) if scenes_path else Path(dataset.source).parent / "scenes.json"
    if not path.is_file():
        if scenes_path:
            raise DataError(f"{path}: scenes file not found")
        return None
    return load_scenes(path)


def scene_scores(texts: list[str], scenes: list[dict]) -> dict:
    """Scene accuracy of captions (parsed as shapes captions) against their scenes."""
    from captionlab.captioning.scene_accuracy import scene_accuracy
    from captionlab.data.shapes import parse_caption

    return scene_accuracy([parse_caption(t) for t in texts], scenes)
