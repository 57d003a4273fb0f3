"""Training runs: dataset + feature store -> a run folder; evaluation; captioning new images.

The wiring behind ``captionlab train | evaluate | caption`` and the demo. It joins
:mod:`captionlab.data` (datasets, vocabulary, feature store), :mod:`captionlab.captioning`
(model, solver, decoding, metrics) and, for new images, :mod:`captionlab.extract`.

A run folder holds::

    RUN/config.json   the TrainConfig and where data and features came from
    RUN/vocab.json    the vocabulary
    RUN/last.npz      checkpoint after the latest epoch (parameters, optimizer, RNG state)
    RUN/best.npz      checkpoint of the best epoch by the validation metric
    RUN/loss.png      loss curves, rewritten after every epoch
    RUN/log.json      one record per epoch

Every checkpoint carries, in its ``extra``, the feature-extractor config and the PCA basis,
so ``caption`` turns a new photo into exactly the features the model was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captionlab._atomic import atomic_write
from captionlab.captioning import (
    CaptioningRNN,
    CaptioningSolver,
    beam_search,
    captions_to_text,
    greedy_decode,
    load_checkpoint,
)
from captionlab.data import CaptionDataset, Vocabulary, load_dataset, to_caption_data
from captionlab.data.features import PCA, FeatureExtractorConfig, FeatureStore
from captionlab.errors import CheckpointError, DataError, UserError


@dataclass
class TrainConfig:
    """Defaults of ``captionlab train``; every field is a flag (``--hidden-dim 256``)."""

    cell: str = field(
        default="lstm",
        metadata={"help": "recurrent cell", "choices": ("rnn", "lstm", "gru")},
    )
    hidden_dim: int = field(default=512, metadata={"help": "H, size of the hidden state"})
    wordvec_dim: int = field(default=256, metadata={"help": "W, size of a word vector"})
    epochs: int = field(default=10, metadata={"help": "passes over the training captions"})
    batch_size: int = field(default=128, metadata={"help": "captions per minibatch"})
    learning_rate: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    lr_decay: float = field(default=0.9, metadata={"help": "learning rate factor per epoch"})
    grad_clip: float = field(default=5.0, metadata={"help": "clip gradients to this global norm"})
    patience: int = field(
        default=3, metadata={"help": "stop after this many epochs without improvement"}
    )
    max_length: int = field(
        default=16, metadata={"help": "words per caption kept for training (longer are cut)"}
    )
    min_word_count: int = field(default=1, metadata={"help": "words seen fewer times become <UNK>"})
    val_images: int = field(
        default=250, metadata={"help": "validation images scored (BLEU-4) after every epoch"}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "parameter precision", "choices": ("float32", "float64")},
    )
    seed: int = field(default=0, metadata={"help": "seeds initialisation and minibatch order"})

    def __post_init__(self) -> None:
        checks = {
            "hidden_dim": self.hidden_dim >= 1,
            "wordvec_dim": self.wordvec_dim >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "lr_decay": 0 < self.lr_decay <= 1,
            "grad_clip": self.grad_clip > 0,
            "patience": self.patience >= 1,
            "max_length": self.max_length >= 1,
            "min_word_count": self.min_word_count >= 1,
            "val_images": self.val_images >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise UserError(f"{name} out of range, got {getattr(self, name)!r}")
        if self.cell not in ("rnn", "lstm", "gru"):
            raise UserError(f"cell must be rnn, lstm or gru, got {self.cell!r}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype must be float32 or float64, got {self.dtype!r}")


# ----------------------------------------------------------------------------- helpers


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


def _features_extra(store: FeatureStore) -> dict:
    """What a checkpoint needs to turn new images into this store's features."""
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


def _check_store_covers(store: FeatureStore, dataset: CaptionDataset, splits) -> None:
    have = set(store.image_ids)
    for split in splits:
        missing = [r.image_id for r in dataset.split(split) if r.image_id not in have]
        if missing:
            raise DataError(
                f"{store.path}: feature store lacks {len(missing)} {split} image(s) of "
                f"{dataset.source}, e.g. {missing[0]!r}; run `captionlab features` on that dataset"
            )


def load_training_data(
    dataset: CaptionDataset, store: FeatureStore, vocab: Vocabulary, max_length: int
) -> dict:
    """The cs231n data dict for the solver: train and val splits with their features."""
    splits = tuple(s for s in ("train", "val") if dataset.split(s))
    if "train" not in splits:
        raise DataError(f"{dataset.source}: no images in split 'train'")
    _check_store_covers(store, dataset, splits)
    return to_caption_data(dataset, vocab, store.features_for, max_length, splits=splits)


# ----------------------------------------------------------------------------- training


def train_run(
    dataset_path: str | Path,
    store_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    image_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = True,
    on_epoch_end: Callable | None = None,
) -> dict:
    """Train a captioner on ``dataset_path`` with features from ``store_path`` into ``out_dir``.

    With ``resume``, continue the run in ``out_dir`` from its ``last.npz`` (same config and
    vocabulary, read from the folder). Returns a JSON-able summary.
    """
    out = Path(out_dir)
    dataset = load_dataset(dataset_path, image_root=image_root)
    store = FeatureStore.open(store_path)
    if resume:
        config_file, vocab_file, last = out / "config.json", out / "vocab.json", out / "last.npz"
        for needed in (config_file, vocab_file, last):
            if not needed.is_file():
                raise UserError(f"{needed}: missing, so {out} cannot be resumed")
        saved = json.loads(config_file.read_text())["train"]
        saved["epochs"] = max(config.epochs, saved["epochs"])
        config = TrainConfig(**saved)
        vocab = Vocabulary.load(vocab_file)
    else:
        vocab = Vocabulary.build(dataset.all_captions("train"), min_count=config.min_word_count)
    data = load_training_data(dataset, store, vocab, config.max_length)

    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        vocab.save(out / "vocab.json")
        header = {
            "train": dataclasses.asdict(config),
            "dataset": str(Path(dataset_path).resolve()),
            "features": str(Path(store_path).resolve()),
            "feature_config": dataclasses.asdict(store.config),
        }
        write_json(out / "config.json", header)

    model = CaptioningRNN(
        vocab.word_to_idx,
        input_dim=store.dim,
        wordvec_dim=config.wordvec_dim,
        hidden_dim=config.hidden_dim,
        cell_type=config.cell,
        dtype=np.dtype(config.dtype).type,
        seed=config.seed,
    )
    log: list[dict] = []
    if resume and (out / "log.json").is_file():
        log = json.loads((out / "log.json").read_text()).get("epochs", [])

    def epoch_end(solver, record):
        log.append(dict(record))
        write_json(out / "log.json", {"epochs": log, "cell": config.cell})
        if on_epoch_end is not None:
            on_epoch_end(solver, record)

    solver = CaptioningSolver(
        model,
        data,
        update_rule="adam",
        optim_config={"learning_rate": config.learning_rate},
        lr_decay=config.lr_decay,
        batch_size=config.batch_size,
        num_epochs=config.epochs,
        print_every=10**9,
        verbose=verbose,
        seed=config.seed,
        grad_clip=config.grad_clip,
        patience=config.patience,
        val_images=config.val_images,
        progress=progress,
        loss_curve_path=out / "loss.png",
        checkpoint_dir=out,
        checkpoint_extra=_features_extra(store),
        resume_from=(out / "last.npz") if resume else None,
        on_epoch_end=epoch_end,
    )
    started = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - started
    return {
        "run": str(out),
        "cell": config.cell,
        "epochs": solver.epoch,
        "iterations": solver.iteration,
        "best_epoch": solver.best_epoch,
        "best_val_bleu4": None if solver.best_score is None else float(solver.best_score),
        "final_train_loss": solver.train_loss_history[-1] if solver.train_loss_history else None,
        "stop_reason": solver.stop_reason or "finished",
        "train_captions": int(data["train_captions"].shape[0]),
        "vocab_size": len(vocab.idx_to_word),
        "truncated_captions": data.get("n_truncated", {}),
        "seconds": round(seconds, 2),
        "best": str(out / "best.npz"),
        "loss_curve": str(out / "loss.png"),
        "loss_history": solver.loss_history,
        "train_loss_history": solver.train_loss_history,
        "val_loss_history": solver.val_loss_history,
        "val_bleu4_history": solver.val_metric_history,
    }


# ----------------------------------------------------------------------------- decoding


def decode(model: CaptioningRNN, features: np.ndarray, beam: int = 1, max_length: int = 20):
    """Captions (as text) for features (N, D): greedy for ``beam == 1``, else beam search."""
    if beam < 1:
        raise UserError(f"beam must be >= 1, got {beam}")
    if beam == 1:
        words = greedy_decode(model, features, max_length=max_length)
    else:
        words = beam_search(model, features, beam_size=beam, max_length=max_length).captions[:, 0]
    return captions_to_text(words, model.idx_to_word)


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
    from captionlab.captioning.metrics import coco_metrics

    ckpt = resolve_model_path(model_path)
    model, state = load_checkpoint(ckpt)
    dataset = load_dataset(dataset_path, image_root=image_root)
    records = dataset.split(split)
    if not records:
        raise DataError(f"{dataset.source}: no images in split {split!r}")
    if limit is not None:
        records = records[:limit]
    if store_path is None:
        store_path = (state.get("extra") or {}).get("feature_store")
        if store_path is None:
            raise UserError("give --features STORE: the checkpoint names no feature store")
    store = FeatureStore.open(store_path)
    ids = [r.image_id for r in records]
    features = store.features_for(ids).astype(model.dtype, copy=False)
    if features.shape[1] != model.params["W_proj"].shape[0]:
        raise DataError(
            f"{store.path}: features are {features.shape[1]}-d, the model "
            f"{ckpt} expects {model.params['W_proj'].shape[0]}-d"
        )
    scenes = _load_scenes(dataset, scenes_path)
    references = {r.image_id: list(r.captions) for r in records}
    results = {}
    for beam in beams:
        name = "greedy" if beam == 1 else f"beam{beam}"
        texts = decode(model, features, beam=beam)
        hyps = dict(zip(ids, texts, strict=True))
        metrics = coco_metrics(hyps, references, meteor=meteor) if coco else {}
        if scenes is not None:
            metrics.update(_scene_scores(texts, [scenes[i] for i in ids]))
        results[name] = {
            "metrics": metrics,
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


def _load_scenes(dataset: CaptionDataset, scenes_path) -> dict | None:
    from captionlab.data.shapes import load_scenes

    path = Path(scenes_path) if scenes_path else Path(dataset.source).parent / "scenes.json"
    if not path.is_file():
        if scenes_path:
            raise DataError(f"{path}: scenes file not found")
        return None
    return load_scenes(path)


def _scene_scores(texts: list[str], scenes: list[dict]) -> dict:
    from captionlab.captioning.scene_accuracy import scene_accuracy
    from captionlab.data.shapes import parse_caption

    return scene_accuracy([parse_caption(t) for t in texts], scenes)


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
    texts = decode(model, features, beam=beam)
    return [{"image": str(p), "caption": t} for p, t in zip(image_paths, texts, strict=True)]


#: The columns of the printed comparison tables (all metrics stay in the JSON files).
TABLE_COLUMNS = (
    "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
    "object_f1", "attribute_accuracy", "count_accuracy", "relation_accuracy",
)  # fmt: skip


def metrics_table(rows: dict[str, dict]) -> str:
    """A printed table of the main metrics, one row per model/decoding."""
    from captionlab.captioning.metrics import format_metrics_table

    return format_metrics_table(
        {
            name: {c: m[c] for c in (*TABLE_COLUMNS, "unavailable") if c in m}
            for name, m in rows.items()
        }
    )


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy values and paths converted)."""
    blob = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    atomic_write(path, lambda f: f.write(blob))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
