"""Training runs: a dataset and its feature store -> a run folder (see :mod:`captionlab.runs`)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captionlab._atomic import write_json
from captionlab.captioning import CaptioningRNN, CaptioningSolver
from captionlab.data import CaptionDataset, Vocabulary, load_dataset, to_caption_data
from captionlab.data.features import FeatureStore
from captionlab.errors import DataError, UserError
from captionlab.runs.config import TrainConfig
from captionlab.runs.inference import checkpoint_extra

__all__ = ["load_training_data", "train_run"]


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


def _open_run(
    out: Path, config: TrainConfig, dataset: CaptionDataset, resume: bool
) -> tuple[TrainConfig, Vocabulary]:
    """The config and vocabulary of the run: read back from ``out`` when resuming (``epochs``
    may only grow), else the given config and a vocabulary built from the training captions."""
    if not resume:
        vocab = Vocabulary.build(dataset.all_captions("train"), min_count=config.min_word_count)
        return config, vocab
    config_file, vocab_file, last = out / "config.json", out / "vocab.json", out / "last.npz"
    for needed in (config_file, vocab_file, last):
        if not needed.is_file():
            raise UserError(f"{needed}: missing, so {out} cannot be resumed")
    saved = json.loads(config_file.read_text())["train"]
    saved["epochs"] = max(config.epochs, saved["epochs"])
    return TrainConfig(**saved), Vocabulary.load(vocab_file)


def _write_run_header(out: Path, config: TrainConfig, vocab: Vocabulary, dataset_path, store):
    """``vocab.json`` and ``config.json`` of a new run."""
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.json")
    header = {
        "train": dataclasses.asdict(config),
        "dataset": str(Path(dataset_path).resolve()),
        "features": str(Path(store.path).resolve()),
        "feature_config": dataclasses.asdict(store.config),
    }
    write_json(out / "config.json", header)


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
    config, vocab = _open_run(out, config, dataset, resume)
    data = load_training_data(dataset, store, vocab, config.max_length)
    if not resume:
        _write_run_header(out, config, vocab, dataset_path, store)
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
        checkpoint_extra=checkpoint_extra(store),
        resume_from=(out / "last.npz") if resume else None,
        on_epoch_end=epoch_end,
    )
    started = time.perf_counter()
    solver.train()
    return _summary(out, config, solver, data, vocab, time.perf_counter() - started)


def _summary(out: Path, config: TrainConfig, solver, data: dict, vocab, seconds: float) -> dict:
    """The JSON-able summary of a finished training run."""
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
