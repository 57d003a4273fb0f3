"""Evaluation: caption a split of a dataset with a trained model and score the captions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captionlab.captioning import load_checkpoint
from captionlab.captioning.metrics import meteor_session
from captionlab.data import CaptionDataset, load_dataset
from captionlab.data._io import file_sha256
from captionlab.data.features import FeatureStore
from captionlab.errors import DataError, UserError
from captionlab.runs.folder import check_store_matches
from captionlab.runs.inference import (
    caption_features,
    check_store_for_model,
    checkpoint_pca,
    features_for_model,
    model_kind,
    resolve_model_path,
)

#: Images read from the store and captioned at a time (grids are never read whole).
BATCH_IMAGES = 500

__all__ = [
    "evaluate_run",
    "evaluation_store",
    "load_scenes_for",
    "relation_choice",
    "scene_scores",
]


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
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Caption ``split`` of a dataset with a trained model and score it.

    Features come from ``store_path`` when given, else from the store the model trained on
    (found from any folder) when it holds this dataset's images, else they are extracted
    with the model's own extractor and PCA basis into a store cached in ``cache_dir``
    (default ``RUN/eval_features/``), named by the dataset's content, the split and the
    extractor, so the same dataset is never extracted twice for the same model. Any store
    is checked to hold this dataset's images (by file) and the model's features.

    Returns ``{"model", "cell", "split", "images", "features", "results": {"greedy"|"beam3":
    {"metrics", "captions"}}}``. COCO metrics (BLEU, METEOR, ROUGE-L, CIDEr-D) always; scene
    accuracy too when the dataset has a ``scenes.json`` beside it (the shapes benchmark) or
    ``scenes_path`` is given.
    """
    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt, solver_state=False)
    dataset = load_dataset(dataset_path, image_root=image_root, check_images=False)
    records = dataset.split(split)
    if not records:
        raise DataError(f"{dataset.source}: no images in split {split!r}")
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be >= 1, got {limit}")
        records = records[:limit]
    cache = Path(cache_dir) if cache_dir is not None else ckpt.parent / "eval_features"
    store, source = evaluation_store(
        model, state, ckpt, dataset, records, store_path, split=split, cache_dir=cache,
        device=device, progress=progress,
    )  # fmt: skip
    ids = [r.image_id for r in records]
    texts_by_beam: dict[int, list[str]] = {beam: [] for beam in beams}
    for start in range(0, len(ids), BATCH_IMAGES):
        features = features_for_model(model, store, ids[start : start + BATCH_IMAGES], ckpt)
        for beam in beams:
            texts_by_beam[beam] += caption_features(model, features, beam=beam)
    scenes = load_scenes_for(dataset, scenes_path)
    results = {}
    with meteor_session():  # one METEOR process for every decoding's captions
        for beam in beams:
            results["greedy" if beam == 1 else f"beam{beam}"] = _scored_captions(
                texts_by_beam[beam], records, scenes, coco=coco, meteor=meteor
            )
    return {
        "model": str(ckpt),
        "cell": model_kind(model),
        "split": split,
        "images": len(records),
        "features": source,
        "results": results,
    }


def evaluation_store(
    model,
    state: dict,
    ckpt: Path,
    dataset: CaptionDataset,
    records: list,
    store_path: str | Path | None,
    *,
    split: str,
    cache_dir: Path,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[FeatureStore, dict]:
    """The store holding the model's features of ``records`` (pooled, and the grid for a
    model that reads one) and where it came from (see :func:`evaluate_run`)."""
    from captionlab.data.feature_config import FeatureExtractorConfig

    extra = state.get("extra") or {}
    if "features" not in extra:
        if store_path is None:
            raise UserError(
                f"give --features STORE: {ckpt} records no feature extractor, so features "
                "cannot be extracted for it"
            )
        config, pcas = None, (None, None)
    else:
        config = FeatureExtractorConfig.from_dict(extra["features"], f"{ckpt}: extra.features")
        pcas = (checkpoint_pca(state, config, ckpt), checkpoint_pca(state, config, ckpt, True))
    ids = [r.image_id for r in records]
    if store_path is not None:
        store = FeatureStore.open(store_path)
        check_store_for_model(model, store, ckpt)
        _check_store_fits(store, config, pcas, ckpt, f"--features {store.path}")
        check_store_matches(store, dataset, records)
        return store, {"store": str(store.path), "extracted": False}
    for candidate in _training_stores(extra, ckpt):
        store = FeatureStore.open(candidate)
        try:
            _check_store_fits(store, config, pcas, ckpt, str(candidate))
            check_store_matches(store, dataset, records)
        except DataError:
            continue  # the training store does not hold this dataset: extract (below)
        return store, {"store": str(store.path), "extracted": False}
    from captionlab.extract import extract_features

    key = f"{file_sha256(dataset.source)[:16]}-{split}-{len(ids)}-{_extractor_key(config, pcas)}"
    out = cache_dir / f"{key}.h5"
    summary = extract_features(
        dataset.source, out, config, image_root=_image_root(dataset, records), device=device,
        progress=progress, only_ids=ids, pca=pcas[0], grid_pca=pcas[1],
    )  # fmt: skip
    store = FeatureStore.open(out)
    if summary.get("n_failed"):
        first = (summary.get("failed") or [{}])[0]
        raise DataError(
            f"{dataset.source}: {summary['n_failed']} image(s) of split {split!r} could not be "
            f"read, e.g. {first.get('path')}: {first.get('error')}"
        )
    return store, {"store": str(out), "extracted": not summary.get("up_to_date", False)}


def _image_root(dataset: CaptionDataset, records: list) -> Path | None:
    """The folder the records' files are under (what extraction needs to find them)."""
    r = records[0]
    if r.file and str(r.path).endswith(r.file):
        return Path(str(r.path)[: -len(r.file)] or ".")
    return None


def _training_stores(extra: dict, ckpt: Path) -> list[Path]:
    """Where the store the model trained on may be: its resolved path, the path relative to
    the run folder, and (older checkpoints) the path as written, from here or the run."""
    seen, out = set(), []
    written, relative = extra.get("feature_store"), extra.get("feature_store_relative")
    candidates = [written, relative and ckpt.parent / relative, written and ckpt.parent / written]
    for candidate in candidates:
        if not candidate or not isinstance(candidate, str | Path):
            continue
        path = Path(candidate)
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            out.append(path)
    return out


def _check_store_fits(store: FeatureStore, config, pcas, ckpt: Path, what: str) -> None:
    """The store must hold the features the model's extractor makes (same config and PCA
    bases, pooled and grid)."""
    if config is None:
        return
    if store.config != config:
        raise DataError(
            f"{what} was made with another extractor ({store.config.to_json()}) than the model "
            f"{ckpt} ({config.to_json()}); its features mean nothing to the model"
        )
    for name, pca, have in (("PCA", pcas[0], store.pca), ("grid PCA", pcas[1], store.grid_pca)):
        if (pca is None) != (have is None) or (
            pca is not None
            and not np.allclose(have.components, pca.components, rtol=1e-5, atol=1e-6)
        ):
            raise DataError(f"{what} was projected with another {name} basis than {ckpt}'s")


def _extractor_key(config, pcas) -> str:
    h = hashlib.sha256(config.to_json().encode())
    for pca in pcas:
        if pca is not None:
            h.update(np.ascontiguousarray(pca.mean, np.float32).tobytes())
            h.update(np.ascontiguousarray(pca.components, np.float32).tobytes())
    return h.hexdigest()[:16]


def _scored_captions(texts: list[str], records, scenes, *, coco: bool, meteor: bool) -> dict:
    """``{"metrics", "captions"}`` of one decoding's captions of ``records``."""
    return {
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


def relation_choice(model, features: np.ndarray, scenes: list[dict], batch: int = 2048) -> dict:
    """How often the model prefers a true relation when the rest of the caption is fixed.

    The scene-accuracy ``relation_accuracy`` only sees the relations a model chooses to
    name, and beam search mostly picks "a A and a B" (a handful of the 500 test captions
    name one), so it rests on a few words. This asks every model the same questions: for
    each ordered pair (i, j) of objects that stand in a relation, in every scene of two or
    three objects, the captions ``a A REL a B [and a C]`` (``A`` the phrase of object i,
    ``B`` of j, ``C`` the third object, phrases "size colour shape") are scored by teacher
    forcing with every surface form of each of the four relations; a relation's score is
    the summed probability of its forms, and the answer is right when the best relation
    holds between i and j (chance: 1/4 for two objects, often 1/4-1/2 for three).

    Args:
        model: a captioner with the decoding interface.
        features: the images' features as the model takes them, (N, D) or (N, L, D).
        scenes: N shapes scenes (``scenes.json`` entries), one per image.
        batch: captions scored at a time.

    Returns:
        ``{"relation_choice", "relation_choice_2", "relation_choice_3"}`` (accuracy over
        all questions, over two- and three-object scenes; None without questions) and
        ``n_relation_choices``.
    """
    from captionlab.captioning.generate import caption_logprob, special_ids
    from captionlab.data.shapes import REL_WORDS

    forms = [(rel, f) for rel, fs in REL_WORDS.items() for f in dict.fromkeys(fs)]
    w2i = model.word_to_idx
    texts, rows, questions = [], [], []  # questions: (number of objects, relations that hold)
    for k, scene in enumerate(scenes):
        objects = scene["objects"]
        if len(objects) not in (2, 3):
            continue
        holds: dict[tuple[int, int], set] = {}
        for r in scene["relations"]:
            holds.setdefault((r["subject"], r["object"]), set()).add(r["relation"])
        phrases = [f"{o['size']} {o['colour']} {o['shape']}" for o in objects]
        for (i, j), rels in sorted(holds.items()):
            tail = "".join(f" and a {p}" for m, p in enumerate(phrases) if m not in (i, j))
            texts += [f"a {phrases[i]} {form} a {phrases[j]}{tail}" for _, form in forms]
            rows += [k] * len(forms)
            questions.append((len(objects), rels))
    out = {"relation_choice": None, "relation_choice_2": None, "relation_choice_3": None,
           "n_relation_choices": len(questions)}  # fmt: skip
    if not questions:
        return out
    missing = sorted({w for t in texts for w in t.split()} - set(w2i))
    if missing:
        raise UserError(f"relation choice: the model's vocabulary lacks {missing[:5]} "
                        "(it takes a model trained on shapes captions)")  # fmt: skip
    _, end, _ = special_ids(model)
    width = max(len(t.split()) for t in texts) + 1
    ids = np.zeros((len(texts), width), dtype=np.int64)
    for n, t in enumerate(texts):
        words = [w2i[w] for w in t.split()] + [end]
        ids[n, : len(words)] = words
    rows_arr = np.asarray(rows)
    logp = np.concatenate([
        caption_logprob(model, features[rows_arr[s : s + batch]], ids[s : s + batch])
        for s in range(0, len(texts), batch)
    ]).reshape(len(questions), len(forms))  # fmt: skip
    names = list(REL_WORDS)
    right = {2: [], 3: []}
    for (n_obj, rels), lp in zip(questions, logp, strict=True):
        score = {rel: -np.inf for rel in names}
        for (rel, _), v in zip(forms, lp, strict=True):
            score[rel] = np.logaddexp(score[rel], v)
        right[n_obj].append(max(names, key=score.__getitem__) in rels)
    every = right[2] + right[3]
    out["relation_choice"] = float(np.mean(every))
    for n_obj in (2, 3):
        out[f"relation_choice_{n_obj}"] = float(np.mean(right[n_obj])) if right[n_obj] else None
    return out
