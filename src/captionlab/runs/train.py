"""Training runs: a dataset and its feature store -> a run folder (see :mod:`captionlab.runs`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captionlab._atomic import write_json
from captionlab.captioning import (
    AttentionCaptioner,
    CaptioningRNN,
    CaptioningSolver,
    CaptioningTransformer,
)
from captionlab.captioning.checkpoint import MAX_PARAMETERS, parameter_count
from captionlab.data import CaptionDataset, Vocabulary, load_dataset, to_caption_data
from captionlab.data.features import FeatureStore
from captionlab.errors import DataError, UserError
from captionlab.runs.config import TrainConfig
from captionlab.runs.folder import RunFolder, check_store_matches, data_identity, read_log
from captionlab.runs.inference import checkpoint_extra

__all__ = [
    "build_model",
    "build_vocabulary",
    "check_model_size",
    "load_training_data",
    "model_spec",
    "train_run",
]


def model_spec(config: TrainConfig, store: FeatureStore) -> tuple[type, dict]:
    """The captioner class ``config.model`` names and its architecture (the dict its
    ``from_config`` takes), sized for the store's features; a model that reads a grid fails
    first, naming the store and the flag that makes one, when the store has none. A new kind
    of captioner is one more branch here."""
    common = {"wordvec_dim": config.wordvec_dim, "hidden_dim": config.hidden_dim,
              "dtype": config.dtype}  # fmt: skip
    if config.model == "attention":
        store.require_grid()
        L, D = store.grid_shape
        return AttentionCaptioner, {
            "input_dim": D, "attention_dim": config.attention_dim,
            "attention_penalty": config.attention_penalty,
            "num_cells": L if config.position_embedding else None,
            "locations": config.uses_locations, **common,
        }  # fmt: skip
    if config.model == "transformer":
        L, D = None, store.dim
        if config.grid:
            store.require_grid()
            L, D = store.grid_shape
        return CaptioningTransformer, {
            "input_dim": D, "wordvec_dim": config.wordvec_dim, "num_heads": config.num_heads,
            "num_layers": config.num_layers, "max_length": max(50, config.max_length + 1),
            "dropout": config.dropout, "dim_feedforward": config.hidden_dim,
            "dtype": config.dtype, "grid": config.grid,
            "num_cells": L if config.grid and config.position_embedding else None,
            "memory_norm": bool(config.memory_norm),
            "encoder_layers": config.encoder_layers or 0,
            "locations": config.uses_locations,
            "location_summary": config.uses_location_summary,
            "coverage": config.uses_coverage,
        }  # fmt: skip
    return CaptioningRNN, {"input_dim": store.dim, "cell_type": config.cell, **common}


def build_model(config: TrainConfig, word_to_idx: dict[str, int], store: FeatureStore):
    """The captioner ``config.model`` names (see :func:`model_spec`), seeded by ``config.seed``."""
    cls, arch = model_spec(config, store)
    return cls.from_config(word_to_idx, arch, seed=config.seed)


def _check_store_covers(
    store: FeatureStore, dataset: CaptionDataset, splits, dataset_sha256: str | None = None
) -> None:
    have = set(store.image_ids)
    for split in splits:
        missing = [r.image_id for r in dataset.split(split) if r.image_id not in have]
        if missing:
            raise DataError(
                f"{store.path}: feature store lacks {len(missing)} {split} image(s) of "
                f"{dataset.source}, e.g. {missing[0]!r}; run `captionlab features` on that dataset"
            )
        check_store_matches(store, dataset, dataset.split(split), dataset_sha256)


def load_training_data(
    dataset: CaptionDataset,
    store: FeatureStore,
    vocab: Vocabulary,
    max_length: int,
    dataset_sha256: str | None = None,
    grid: bool = False,
) -> dict:
    """The cs231n data dict for the solver: train and val splits with their features (the
    store must hold every image of those splits, extracted from the dataset's files): the
    pooled vectors (in memory) or, with ``grid``, the grids (read from the store minibatch by
    minibatch, see :meth:`FeatureStore.grid_rows`)."""
    splits = tuple(s for s in ("train", "val") if dataset.split(s))
    if "train" not in splits:
        raise DataError(f"{dataset.source}: no images in split 'train'")
    _check_store_covers(store, dataset, splits, dataset_sha256)
    features_for = store.grid_rows if grid else store.features_for
    return to_caption_data(dataset, vocab, features_for, max_length, splits=splits)


#: The most training words a vocabulary may leave as <UNK> (past it, a model learns noise
#: and its validation score means nothing).
MAX_UNKNOWN_FRACTION = 0.5
#: The most bytes the word scores of one batch may take (scores, softmax, gradient).
MAX_BATCH_SCORE_BYTES = 2 << 30


def build_vocabulary(dataset: CaptionDataset, config: TrainConfig) -> Vocabulary:
    """The training captions' vocabulary; refused when ``min_word_count`` leaves most words
    unknown (the flag, the words kept and the share of <UNK> are named)."""
    captions = dataset.all_captions("train")
    vocab = Vocabulary.build(captions, min_count=config.min_word_count)
    unknown = vocab.unknown_fraction(captions)
    if unknown > MAX_UNKNOWN_FRACTION:
        raise UserError(
            f"--min-word-count {config.min_word_count} keeps {len(vocab) - 4} words and "
            f"turns {100 * unknown:.0f}% of the training words into <UNK> (at most "
            f"{100 * MAX_UNKNOWN_FRACTION:.0f}% may be); lower it"
        )
    return vocab


def check_model_size(config: TrainConfig, store: FeatureStore, vocab_size: int) -> None:
    """Refuse, before any allocation, a model past the checkpoint limit of parameters or a
    batch whose word scores would not fit (naming the flags, the size and the limit)."""
    cls, arch = model_spec(config, store)
    count = parameter_count(cls.shapes_for(arch, vocab_size))
    itemsize = np.dtype(config.dtype).itemsize
    if count > MAX_PARAMETERS:
        raise UserError(
            f"--hidden-dim {config.hidden_dim} and --wordvec-dim {config.wordvec_dim} make a "
            f"{_kind(config)} model of {count:,} parameters ({count * itemsize / 2**30:.1f} "
            f"GiB) for {vocab_size} words and {arch['input_dim']}-d features, past the limit "
            f"of {MAX_PARAMETERS:,}; lower --hidden-dim or --wordvec-dim"
        )
    scores = 3 * config.batch_size * config.max_length * vocab_size * itemsize
    if scores > MAX_BATCH_SCORE_BYTES:
        raise UserError(
            f"--batch-size {config.batch_size} x --max-length {config.max_length} x "
            f"{vocab_size} words need {scores / 2**30:.1f} GiB for one batch's word scores, past "
            f"the limit of {MAX_BATCH_SCORE_BYTES / 2**30:.0f} GiB; lower --batch-size"
        )


def train_run(
    dataset_path: str | Path | None,
    store_path: str | Path | None,
    out_dir: str | Path,
    config: TrainConfig | dict | None,
    *,
    image_root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = True,
    on_epoch_end: Callable | None = None,
) -> dict:
    """Train a captioner on ``dataset_path`` with features from ``store_path`` into ``out_dir``.

    A new run refuses a folder holding a run (``overwrite`` replaces it). With ``resume``,
    continue the run in ``out_dir`` from its ``last.npz`` with its own config and vocabulary:
    ``config`` (a dict of the settings asked for, or a whole TrainConfig) may only raise
    ``epochs``; ``dataset_path``/``store_path`` default to the run's and must hold the same
    data. See :mod:`captionlab.runs.folder`. Returns a JSON-able summary.
    """
    run = RunFolder(out_dir)
    out = run.path
    header: dict = {}
    if resume:
        saved, header, vocab = run.read_header()
        config = run.resume_config(saved, config)
        saved_data, saved_store = run.saved_sources(header)
        dataset_path = dataset_path or saved_data
        store_path = store_path or saved_store
    else:
        if not dataset_path or not store_path:
            raise UserError("a new run needs --data DATASET and --features STORE")
        if not isinstance(config, TrainConfig):
            config = TrainConfig(**(config or {}))
        run.check_new(overwrite)
    # the images themselves are not needed: their features are in the store, which is
    # checked to hold this dataset's images
    dataset = load_dataset(dataset_path, image_root=image_root, check_images=False)
    store = FeatureStore.open(store_path)
    identity = data_identity(dataset_path, dataset, store)
    if resume:
        run.check_same_data(header, identity)
    else:
        vocab = build_vocabulary(dataset, config)
    check_model_size(config, store, len(vocab))  # fails first if a grid is missing
    data = load_training_data(dataset, store, vocab, config.max_length,
                              identity["dataset_sha256"], grid=config.uses_grid)  # fmt: skip
    if not resume:
        run.prepare_new(overwrite=overwrite)
        run.write_header(config, vocab, identity, store)
    model = build_model(config, vocab.word_to_idx, store)
    log: list[dict] = read_log(out / "log.json") if resume else []

    def epoch_end(solver, record):
        log.append(dict(record))
        write_json(out / "log.json", {"epochs": log, "cell": _kind(config)})
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
        monitor=config.monitor,
        val_images=config.val_images,
        progress=progress,
        loss_curve_path=out / "loss.png",
        checkpoint_dir=out,
        checkpoint_extra=checkpoint_extra(store, identity, out),
        resume_from=(out / "last.npz") if resume else None,
        on_epoch_end=epoch_end,
    )
    done = None
    if resume:
        _align_log(log, solver, out, config)
        if solver.epoch >= config.epochs:
            done = (
                f"nothing to do: the run has done its {solver.epoch} epochs "
                f"(give --epochs above {solver.epoch} to train longer)"
            )
        elif solver.options.patience is not None and solver.bad_epochs >= config.patience:
            done = (
                f"nothing to do: the run stopped early after {solver.epoch} epochs (no "
                f"improvement for {solver.bad_epochs} epochs; --patience is {config.patience})"
            )
    started = time.perf_counter()
    if done is None:
        solver.train()
    else:
        solver.stop_reason = done
    return _summary(out, config, solver, data, vocab, time.perf_counter() - started)


def _kind(config: TrainConfig) -> str:
    """The run's short name: the cell of an rnn, else the model kind."""
    return config.cell if config.model == "rnn" else config.model


def _align_log(log: list[dict], solver, out: Path, config: TrainConfig) -> None:
    """Make ``log.json`` agree with the checkpoint resumed from: a run killed between writing
    ``last.npz`` and ``log.json`` lacks the last epoch's record (rebuilt from the solver's
    state, which holds all it says); records past the checkpoint are dropped."""
    del log[solver.epoch :]
    if len(log) == solver.epoch - 1 and solver.epoch >= 1:
        e = solver.epoch
        metric = solver.val_metric_history[e - 1] if len(solver.val_metric_history) >= e else None
        val_loss = solver.val_loss_history[e - 1] if len(solver.val_loss_history) >= e else None
        log.append(
            {
                "epoch": e,
                "iteration": solver.iteration,
                "train_loss": solver.train_loss_history[e - 1],
                "val_loss": val_loss,
                solver.options.metric_name: metric,
                "improved": solver.best_epoch == e,
                "learning_rate": next(iter(solver.optim_configs.values()), {}).get("learning_rate"),
            }
        )
        write_json(out / "log.json", {"epochs": log, "cell": _kind(config)})


def _summary(out: Path, config: TrainConfig, solver, data: dict, vocab, seconds: float) -> dict:
    """The JSON-able summary of a finished training run."""
    monitor = solver._monitor()
    best = None if solver.best_score is None else float(solver.best_score)
    return {
        "run": str(out),
        "model": config.model,
        "cell": _kind(config),
        "epochs": solver.epoch,
        "iterations": solver.iteration,
        "best_epoch": solver.best_epoch,
        "monitor": monitor,
        "best_val_bleu4": best if monitor == "val_metric" else None,
        "best_val_loss": -best if monitor == "val_loss" and best is not None else None,
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
