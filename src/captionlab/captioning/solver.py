"""Training a captioning model: the cs231n ``CaptioningSolver`` and what real training needs.

The solver knows nothing model-specific: it calls ``model.loss(features, captions) ->
(loss, grads)`` and updates ``model.params`` with an update rule from
:mod:`captionlab.nn.optim` (``update(w, dw, config) -> (next_w, config)``).

The data dict (cs231n layout; arrays, not files)::

    train_captions   (N, T) int     word indices, <START> ... <END> <NULL> ...
    train_image_idxs (N,)   int     row of train_features for each caption
    train_features   (M, ...) float one image's features per row: (M, D) pooled vectors, or
                                    (M, L, D) grids, as the model's ``feature_shape`` says;
                                    an array, or an object that reads the rows it is indexed
                                    with (``shape``, ``dtype``, ``ndim``, ``x[idx]``, as a
                                    feature store's ``StoredRows``), so grids too large for
                                    memory are read minibatch by minibatch
    val_captions, val_image_idxs, val_features    the same, optional
    val_texts        (N,) str       optional: each validation caption as text, the reference the
                                    metric compares with (default: val_captions decoded, where
                                    a word outside the vocabulary reads "<UNK>")
    idx_to_word      list or dict   optional (the model's vocabulary is used otherwise)
    word_to_idx      dict           optional

Several captions may share an image: the validation metric compares each image's greedy
caption with all of that image's reference captions.

Example::

    solver = CaptioningSolver(model, data, update_rule="adam",
                              optim_config={"learning_rate": 5e-3}, lr_decay=0.995,
                              batch_size=25, num_epochs=50, print_every=10,
                              seed=0, grad_clip=5.0, patience=5, checkpoint_dir="runs/a")
    solver.train()
    solver.loss_history   # one training loss per iteration
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from captionlab.captioning.checkpoint import load_checkpoint, save_checkpoint
from captionlab.captioning.generate import captions_to_text, greedy_decode
from captionlab.errors import CheckpointError, DataError, UserError
from captionlab.nn import optim


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss or a gradient became NaN or infinite; training stopped."""


@dataclass
class SolverOptions:
    """What the solver does beyond cs231n's; every field is also a keyword argument.

    Attributes:
        seed: seeds the minibatch order; the same seed (and model) gives the same run.
        grad_clip: if set, scale the gradients so their global L2 norm is at most this.
        divergence_factor: stop (:class:`TrainingDivergedError`) when a step's loss exceeds
            this many times the run's first loss (an untrained model's); ``None``: only a
            NaN or infinite loss or gradient stops training.
        patience: stop after this many epochs without improvement of the monitored value.
        monitor: ``'auto'`` (the validation metric if there is validation data and a
            metric, else the validation loss, else the epoch's training loss),
            ``'val_metric'``, ``'val_loss'`` or ``'train_loss'``.
        metric: ``metric(hypotheses: list[str], references: list[list[str]]) -> float``,
            higher is better; default BLEU-4 from :mod:`captionlab.captioning.metrics`.
        metric_name: the name shown in logs and histories.
        val_images: how many validation images (a fixed, evenly spaced subset) are decoded
            and scored each epoch.
        val_loss_captions: at most this many of those images' captions (evenly spaced) give
            the validation loss.
        max_length: words generated at most when decoding for the metric (default: the
            caption length T of the validation captions).
        val_batch_size: batch size for validation loss and decoding.
        restore_best: at the end of training (or on divergence) put the best parameters
            into the model; by default the model keeps the last parameters, as in cs231n,
            and the best ones are in ``best_params`` (and ``best.npz``).
        progress: show a tqdm progress bar with the loss.
        loss_curve_path: if set, save a PNG of the loss curves there after every epoch.
        checkpoint_dir: if set, write ``last.npz`` after every epoch and ``best.npz`` on
            every improvement (atomically).
        checkpoint_extra: JSON-able dict stored in every checkpoint's ``extra``.
        resume_from: a checkpoint written by this solver: continue that run.
        on_epoch_end: ``callback(solver, record: dict)`` after every epoch.
        on_checkpoint: ``callback(solver, path: Path, kind: 'last' | 'best')``.
        blas_threads: threads of NumPy's BLAS during training: ``'auto'`` (race one thread
            against all at the start of every epoch, on real steps, and keep the faster;
            see :class:`BlasThreads`), a number, or ``None`` (leave BLAS as it is).
    """

    seed: int | None = None
    grad_clip: float | None = None
    divergence_factor: float | None = 100.0
    patience: int | None = None
    monitor: str = "auto"
    metric: Callable[[list[str], list[list[str]]], float] | None = None
    metric_name: str = "bleu4"
    val_images: int = 200
    val_loss_captions: int = 500
    max_length: int | None = None
    val_batch_size: int = 500
    restore_best: bool = False
    progress: bool = False
    loss_curve_path: str | os.PathLike | None = None
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_extra: dict = field(default_factory=dict)
    resume_from: str | os.PathLike | None = None
    on_epoch_end: Callable[[Any, dict], None] | None = None
    on_checkpoint: Callable[[Any, Path, str], None] | None = None
    blas_threads: int | str | None = "auto"


class BlasThreads:
    """The BLAS thread count for each epoch, chosen by timing the epoch's first steps.

    A training step's matrix products are short and wide (the batch's hidden state times
    ``Wh``, once per time step). On a quiet machine all cores run them fastest; while other
    programs keep the cores busy, every product waits for a core for each of its worker
    threads, and one thread is many times faster (an attention training step took 3.6 s with
    two OpenBLAS threads and 0.5 s with one on the 2-core machine at load 5;
    ``benchmarks/bench_gemm.py``). So, in ``'auto'`` mode, after the epoch's first step
    (untimed: it may compile kernels) the next four steps run with 1, all, all, 1 threads
    (an ABBA order, so a drift in load cancels), and the rest of the epoch uses the count
    whose faster step was faster. The steps are real training steps: nothing is spent but
    the slower arm's two steps. The thread count changes how OpenBLAS splits a product,
    so large products may round differently, and two runs of one seed that chose differently
    can drift apart in the last digits (as torch's runs do across thread counts); a fixed
    ``blas_threads`` makes a run repeat exactly whatever the load.
    """

    TRIAL = (1, 0, 0, 1)  # 0: all cores

    def __init__(self, setting: int | str | None) -> None:
        if setting not in (None, "auto") and (not isinstance(setting, int) or setting < 1):
            raise ValueError(
                f"blas_threads must be 'auto', a positive int or None, got {setting!r}"
            )
        self.setting = setting
        self.cores = os.cpu_count() or 1
        self.chosen: int | None = None
        self._times: dict[int, list[float]] = {}
        self._controller = None
        if setting is not None:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()

    def start_epoch(self) -> None:
        self._times = {1: [], self.cores: []}
        self.chosen = self.setting if isinstance(self.setting, int) else None

    def _racing(self, j: int) -> bool:
        return self.setting == "auto" and self.cores > 1 and 1 <= j <= len(self.TRIAL)

    def limit(self, j: int):
        """A context for step ``j`` of the epoch with the thread count it runs under."""
        if self._controller is None:
            return nullcontext()
        if self._racing(j):
            n = self.TRIAL[j - 1] or self.cores
        elif self.chosen is not None:
            n = self.chosen
        else:
            return nullcontext()  # step 0 of an auto epoch, or a single core: as BLAS is
        return self._controller.limit(limits=n, user_api="blas")

    def record(self, j: int, seconds: float) -> None:
        """Step ``j`` took ``seconds``; after the trial, choose."""
        if not self._racing(j):
            return
        n = self.TRIAL[j - 1] or self.cores
        self._times[n].append(seconds)
        if j == len(self.TRIAL):
            one, every = min(self._times[1]), min(self._times[self.cores])
            self.chosen = 1 if one < every else self.cores


_MONITORS = ("auto", "val_metric", "val_loss", "train_loss")


@contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """The model in evaluation mode inside the block (dropout off), its mode restored
    after; a model without ``training``, ``eval()`` and ``train()`` is left alone."""
    training = getattr(model, "training", None)
    if training is None or not (hasattr(model, "eval") and hasattr(model, "train")):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


class CaptioningSolver:
    """Trains a captioning model by minibatch gradient descent (cs231n constructor).

    Args:
        model: an object with ``params`` (dict of arrays) and
            ``loss(features, captions) -> (loss, grads)``; for the validation metric it
            also implements the decoding interface (:mod:`captionlab.captioning.generate`)
            and ``sample``. A model with ``training`` and ``eval()`` / ``train()`` (dropout)
            is validated in evaluation mode and put back after.
        data: the data dict described in the module docstring.
        update_rule: a name in :mod:`captionlab.nn.optim` (``sgd``, ``sgd_momentum``,
            ``rmsprop``, ``adam``) or a function ``update(w, dw, config)``.
        optim_config: hyperparameters for the update rule (``learning_rate``, ...), copied
            for every parameter.
        lr_decay: multiply the learning rate by this after every epoch.
        batch_size: captions per minibatch.
        num_epochs: epochs to train for.
        print_every: print the training loss every this many iterations (if ``verbose``).
        verbose: print progress.
        options: a :class:`SolverOptions`; its fields may also be given as keywords.

    Attributes:
        loss_history: training loss of every iteration.
        train_loss_history, val_loss_history, val_metric_history: one entry per epoch.
        best_params, best_score, best_epoch: the best parameters by the monitored value.
        epoch: epochs completed.
    """

    def __init__(
        self,
        model,
        data: dict,
        update_rule: str | Callable = "sgd",
        optim_config: dict | None = None,
        lr_decay: float = 1.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        print_every: int = 10,
        verbose: bool = True,
        options: SolverOptions | None = None,
        **kwargs,
    ) -> None:
        names = {f.name for f in fields(SolverOptions)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(
                f"Unrecognized arguments {', '.join(unknown)}; "
                f"solver options are: {', '.join(sorted(names))}"
            )
        self.options = copy.copy(options) if options is not None else SolverOptions()
        for key, value in kwargs.items():
            setattr(self.options, key, value)
        if self.options.monitor not in _MONITORS:
            raise ValueError(f"monitor must be one of {_MONITORS}, got {self.options.monitor!r}")
        self.blas = BlasThreads(self.options.blas_threads)

        self.model = model
        self.data = data
        self.optim_config = dict(optim_config or {})
        self.lr_decay = float(lr_decay)
        self.batch_size = int(batch_size)
        self.num_epochs = int(num_epochs)
        self.print_every = int(print_every)
        self.verbose = bool(verbose)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        if isinstance(update_rule, str):
            if not hasattr(optim, update_rule):
                raise ValueError(f'Invalid update_rule "{update_rule}"')
            self.update_rule_name = update_rule
            self.update_rule = getattr(optim, update_rule)
        else:
            self.update_rule_name = getattr(update_rule, "__name__", "custom")
            self.update_rule = update_rule

        self._check_data()
        self._prepare_validation()
        self._reset()
        if self.options.resume_from is not None:
            self.resume(self.options.resume_from)

    # ------------------------------------------------------------------ set-up
    def _array(self, key: str, ndim: int, kind: str, dims: str) -> np.ndarray:
        value = self.data[key]
        if not all(hasattr(value, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
            value = np.asarray(value)  # rows readers (StoredRows) stay as they are
        if value.ndim != ndim or value.dtype.kind not in kind:
            raise DataError(
                f"data[{key!r}] must be a {dims} array of "
                f"{'integers' if kind == 'iu' else 'floats'}, got {value.dtype} {value.shape}"
            )
        return value

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        caps = self._array(f"{split}_captions", 2, "iu", "(N, T)")
        idxs = self._array(f"{split}_image_idxs", 1, "iu", "(N,)")
        shape = tuple(getattr(self.model, "feature_shape", (None,)))
        dims = "(M, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        feats = self._array(f"{split}_features", 1 + len(shape), "f", dims)
        if idxs.shape[0] != caps.shape[0]:
            raise DataError(
                f"data['{split}_image_idxs'] must have one entry per caption "
                f"({caps.shape[0]}), got {idxs.shape[0]}"
            )
        if idxs.size and (idxs.min() < 0 or idxs.max() >= feats.shape[0]):
            raise DataError(
                f"data['{split}_image_idxs'] must index rows of {split}_features "
                f"[0, {feats.shape[0]}), got values in [{idxs.min()}, {idxs.max()}]"
            )
        if any(d is not None and d != got for d, got in zip(shape, feats.shape[1:], strict=True)):
            raise DataError(f"data['{split}_features'] must be {dims}, got {feats.shape}")
        return caps, idxs, feats

    def _check_data(self) -> None:
        missing = [
            k
            for k in ("train_captions", "train_image_idxs", "train_features")
            if k not in self.data
        ]
        if missing:
            raise DataError(f"data is missing {', '.join(repr(k) for k in missing)}")
        self.train_captions, self.train_image_idxs, self.train_features = self._split("train")
        if self.train_captions.shape[0] == 0:
            raise DataError("data['train_captions'] holds no captions")
        self.has_val = all(
            k in self.data for k in ("val_captions", "val_image_idxs", "val_features")
        )
        if self.has_val:
            self.val_captions, self.val_image_idxs, self.val_features = self._split("val")
            self.has_val = self.val_captions.shape[0] > 0

    def _prepare_validation(self) -> None:
        """Fix the validation subset once: evenly spaced images, all their captions."""
        self.val_subset = None
        if not self.has_val:
            return
        images = np.unique(self.val_image_idxs)  # (I,)
        count = min(self.options.val_images, images.size)
        if count == 0:  # no images decoded: the validation loss over all images is monitored
            loss_rows = np.arange(self.val_captions.shape[0])
            if loss_rows.size > self.options.val_loss_captions:
                keep = np.linspace(0, loss_rows.size - 1, self.options.val_loss_captions)
                loss_rows = np.unique(keep.round().astype(np.int64))
            self.val_subset = {
                "images": images[:0], "caption_rows": loss_rows, "references": None,
                "idx_to_word": None,
            }  # fmt: skip
            return
        pick = np.unique(np.linspace(0, images.size - 1, count).round().astype(np.int64))
        images = images[pick]
        cap_rows = np.flatnonzero(np.isin(self.val_image_idxs, images))
        loss_rows = cap_rows
        if cap_rows.size > self.options.val_loss_captions:
            keep = np.linspace(0, cap_rows.size - 1, self.options.val_loss_captions)
            loss_rows = cap_rows[np.unique(keep.round().astype(np.int64))]
        idx_to_word = self.data.get("idx_to_word", getattr(self.model, "idx_to_word", None))
        references = None
        if idx_to_word is not None:
            given = self.data.get("val_texts")
            if given is not None and len(given) != self.val_captions.shape[0]:
                raise DataError(
                    f"data['val_texts'] must hold one text per validation caption "
                    f"({self.val_captions.shape[0]}), got {len(given)}"
                )
            texts = (
                [str(given[r]) for r in cap_rows]
                if given is not None
                else captions_to_text(self.val_captions[cap_rows], idx_to_word)
            )
            by_image: dict[int, list[str]] = {int(i): [] for i in images}
            for row, text in zip(cap_rows, texts, strict=True):
                by_image[int(self.val_image_idxs[row])].append(text)
            references = [by_image[int(i)] for i in images]
        self.val_subset = {
            "images": images,  # (I,) rows of val_features
            "caption_rows": loss_rows,  # rows of val_captions for the loss
            "references": references,  # I lists of reference sentences
            "idx_to_word": idx_to_word,
        }

    def _reset(self) -> None:
        self.epoch = 0
        self.iteration = 0
        self.loss_history: list[float] = []
        self.train_loss_history: list[float] = []
        self.val_loss_history: list[float] = []
        self.val_metric_history: list[float] = []
        self.grad_norm_history: list[float] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_params: dict[str, np.ndarray] | None = None
        self.bad_epochs = 0
        self.stop_reason: str | None = None
        self.last_checkpoint: Path | None = None
        self.rng = np.random.default_rng(self.options.seed)
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly (arrays and JSON values)."""
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "update_rule": self.update_rule_name,
            "optim_configs": {p: dict(c) for p, c in self.optim_configs.items()},
            "lr_decay": self.lr_decay,
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
            "loss_history": list(self.loss_history),
            "train_loss_history": list(self.train_loss_history),
            "val_loss_history": list(self.val_loss_history),
            "val_metric_history": list(self.val_metric_history),
            "grad_norm_history": list(self.grad_norm_history),
            "metric_name": self.options.metric_name,
            "best": {
                "score": self.best_score,
                "epoch": self.best_epoch,
                "params": self.best_params,
            },
            "bad_epochs": self.bad_epochs,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (the model's parameters aside)."""
        try:
            self.epoch = int(state["epoch"])
            self.iteration = int(state["iteration"])
            self.optim_configs = {
                p: {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
                for p, c in state["optim_configs"].items()
            }
            self.loss_history = [float(x) for x in state["loss_history"]]
            self.train_loss_history = [float(x) for x in state["train_loss_history"]]
            self.val_loss_history = [float(x) for x in state["val_loss_history"]]
            self.val_metric_history = [float(x) for x in state["val_metric_history"]]
            self.grad_norm_history = [float(x) for x in state.get("grad_norm_history", [])]
            best = state["best"]
            self.best_score = best["score"]
            self.best_epoch = best["epoch"]
            self.best_params = (
                None
                if best["params"] is None
                else {k: np.array(v) for k, v in best["params"].items()}
            )
            self.bad_epochs = int(state["bad_epochs"])
            self.rng.bit_generator.state = state["rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"solver state is incomplete or malformed: {exc!r}") from None
        if set(self.optim_configs) != set(self.model.params):
            raise CheckpointError(
                f"solver state has optimizer state for {sorted(self.optim_configs)}, "
                f"the model has parameters {sorted(self.model.params)}"
            )
        arrays = [(f"optim_configs.{p}.{k}", p, v) for p, c in self.optim_configs.items()
                  for k, v in c.items() if isinstance(v, np.ndarray)]  # fmt: skip
        arrays += [(f"best.params.{p}", p, v) for p, v in (self.best_params or {}).items()]
        for where, name, value in arrays:
            want = self.model.params[name].shape if name in self.model.params else None
            if value.shape != want:
                raise CheckpointError(
                    f"solver state field {where!r} must have shape {want}, got {value.shape}"
                )

    def resume(self, path: str | os.PathLike) -> None:
        """Load parameters and solver state from a checkpoint this solver wrote."""
        loaded, state = load_checkpoint(path)
        if state["solver_state"] is None:
            raise CheckpointError(f"{path}: holds no solver state, so the run cannot resume")
        for name, value in self.model.params.items():
            got = loaded.params.get(name)
            if got is None or got.shape != value.shape:
                raise CheckpointError(
                    f"{path}: parameter {name!r} must have shape {value.shape} for this model, "
                    f"got {None if got is None else got.shape}"
                )
        if getattr(self.model, "word_to_idx", loaded.word_to_idx) != loaded.word_to_idx:
            raise CheckpointError(f"{path}: its vocabulary differs from the model's")
        for name in self.model.params:
            self.model.params[name] = loaded.params[name].astype(
                self.model.params[name].dtype, copy=True
            )
        try:
            self.load_state_dict(state["solver_state"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ one step
    def _step(self, batch: np.ndarray) -> float:
        """One gradient step on the captions ``batch`` (indices into train_captions)."""
        captions = self.train_captions[batch]  # (B, T)
        features = self.train_features[self.train_image_idxs[batch]]  # (B, D)
        loss, grads = self.model.loss(features, captions)
        norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))
        where = f"at epoch {self.epoch + 1}, iteration {self.iteration + 1}"
        if not np.isfinite(loss) or not np.isfinite(norm):
            what = "loss" if not np.isfinite(loss) else "gradient norm"
            value = loss if not np.isfinite(loss) else norm
            self._diverged(f"{what} became {value} {where}")
        factor = self.options.divergence_factor
        if factor is not None and self.loss_history:
            first = abs(self.loss_history[0])
            if first > 0 and loss > factor * first:
                self._diverged(
                    f"the loss grew from {self.loss_history[0]:.4g} (first iteration) to "
                    f"{loss:.4g} {where}, more than {factor:g} times"
                )
        self.grad_norm_history.append(norm)
        clip = self.options.grad_clip
        if clip is not None and norm > clip:
            scale = clip / (norm + 1e-12)
            grads = {k: g * np.asarray(scale, dtype=g.dtype) for k, g in grads.items()}
        for p, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config
        self.loss_history.append(float(loss))
        self.iteration += 1
        return float(loss)

    def _diverged(self, what: str) -> None:
        kept = ""
        if self.options.restore_best and self.best_params is not None:
            self._restore_best()
            kept = f"; the model holds the best parameters (epoch {self.best_epoch})"
        ckpt = ""
        if self.last_checkpoint is not None:
            best = Path(self.options.checkpoint_dir) / "best.npz"
            ckpt = (
                f"; kept: the best checkpoint {best} (epoch {self.best_epoch}) and the last "
                f"good checkpoint: {self.last_checkpoint}"
            )
        elif self.options.checkpoint_dir is not None:
            ckpt = "; no epoch had finished, so no checkpoint was written"
        self.stop_reason = f"diverged: {what}"
        raise TrainingDivergedError(
            f"training stopped: {what} (try a lower learning rate or grad_clip){kept}{ckpt}"
        )

    def _restore_best(self) -> None:
        for k, v in self.best_params.items():
            self.model.params[k] = v.copy()

    # ------------------------------------------------------------------ validation
    def _metric_fn(self):
        if self.options.metric is not None:
            return self.options.metric
        from captionlab.captioning.metrics import bleu4

        return bleu4

    def validation_loss(self) -> float | None:
        """Mean loss per caption over the fixed validation subset (None without val data)."""
        if self.val_subset is None:
            return None
        rows = self.val_subset["caption_rows"]
        total, count = 0.0, 0
        for i in range(0, rows.size, self.options.val_batch_size):
            chunk = rows[i : i + self.options.val_batch_size]
            feats = self.val_features[self.val_image_idxs[chunk]]
            loss, _ = self.model.loss(feats, self.val_captions[chunk])
            total += loss * chunk.size
            count += chunk.size
        return total / max(count, 1)

    def validation_metric(self) -> float | None:
        """The metric of greedy captions of the fixed validation images, each against all
        of its reference captions (None without val data or vocabulary)."""
        subset = self.val_subset
        if subset is None or subset["references"] is None or not hasattr(self.model, "sample"):
            return None
        max_length = self.options.max_length or self.val_captions.shape[1]
        hyps: list[str] = []
        images = subset["images"]
        for i in range(0, images.size, self.options.val_batch_size):
            feats = self.val_features[images[i : i + self.options.val_batch_size]]
            words = greedy_decode(self.model, feats, max_length=max_length)
            hyps.extend(captions_to_text(words, subset["idx_to_word"]))
        return float(self._metric_fn()(hyps, subset["references"]))

    def _monitor(self) -> str:
        monitor = self.options.monitor
        if monitor == "auto":
            if self.val_subset is not None and self.val_subset["references"] is not None:
                return "val_metric"
            return "val_loss" if self.val_subset is not None else "train_loss"
        return monitor

    # ------------------------------------------------------------------ the loop
    def train(self) -> CaptioningSolver:
        """Run (or continue) the optimization for ``num_epochs`` epochs; returns self."""
        from tqdm import tqdm

        N = self.train_captions.shape[0]
        iterations_per_epoch = max(N // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        monitor = self._monitor()
        bar = tqdm(
            total=num_iterations,
            initial=min(self.epoch * iterations_per_epoch, num_iterations),
            disable=not self.options.progress,
            desc="train",
            unit="it",
        )
        say = bar.write if self.options.progress else print
        # Overflow is checked at every step (a NaN or infinite loss, or a loss growing past
        # divergence_factor, stops training with one message); NumPy's warnings would only
        # repeat it, before it.
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                while self.epoch < self.num_epochs:
                    order = self.rng.permutation(N)
                    epoch_losses = []
                    self.blas.start_epoch()
                    for j in range(iterations_per_epoch):
                        batch = order[j * self.batch_size : (j + 1) * self.batch_size]
                        with self.blas.limit(j):
                            started = time.perf_counter()
                            loss = self._step(batch)
                            self.blas.record(j, time.perf_counter() - started)
                        epoch_losses.append(loss)
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                        if self.verbose and self.iteration % self.print_every == 0:
                            say(f"(Iteration {self.iteration} / {num_iterations}) loss: {loss:f}")
                    self.epoch += 1
                    for config in self.optim_configs.values():
                        if "learning_rate" in config:
                            config["learning_rate"] *= self.lr_decay
                    if self._end_epoch(float(np.mean(epoch_losses)), monitor, say):
                        break
        finally:
            bar.close()
        if self.options.restore_best and self.best_params is not None:
            self._restore_best()
        return self

    def _end_epoch(self, train_loss: float, monitor: str, say) -> bool:
        """Validate, keep the best, checkpoint, call back; True means stop early."""
        self.train_loss_history.append(train_loss)
        with evaluation_mode(self.model):
            val_loss = self.validation_loss()
            val_metric = self.validation_metric()
        if val_loss is not None:
            self.val_loss_history.append(val_loss)
        if val_metric is not None:
            self.val_metric_history.append(val_metric)
        value = {"val_metric": val_metric, "val_loss": val_loss, "train_loss": train_loss}[monitor]
        if value is None:
            raise ValueError(f"monitor {monitor!r} needs validation data")
        score = value if monitor == "val_metric" else -value
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        else:
            self.bad_epochs += 1
        patience = self.options.patience
        stop = patience is not None and self.bad_epochs >= patience
        if stop:
            self.stop_reason = f"early stop: no improvement of {monitor} for {patience} epochs"

        record = {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "train_loss": train_loss,
            "val_loss": val_loss,
            self.options.metric_name: val_metric,
            "improved": improved,
            "learning_rate": next(iter(self.optim_configs.values()), {}).get("learning_rate"),
            "blas_threads": self.blas.chosen,  # this epoch's (None: BLAS left as it was)
        }
        if self.verbose:
            parts = [f"(Epoch {self.epoch} / {self.num_epochs}) train loss: {train_loss:.4f}"]
            if val_loss is not None:
                parts.append(f"val loss: {val_loss:.4f}")
            if val_metric is not None:
                parts.append(f"val {self.options.metric_name}: {val_metric:.4f}")
            say(", ".join(parts) + (" *" if improved else ""))
        if self.options.checkpoint_dir is not None:
            self._checkpoint("last")
            if improved:
                self._checkpoint("best")
        if self.options.loss_curve_path is not None:
            self.save_loss_curve(self.options.loss_curve_path)
        if self.options.on_epoch_end is not None:
            self.options.on_epoch_end(self, record)
        if stop and self.verbose:
            say(self.stop_reason)
        return stop

    def _checkpoint(self, kind: str) -> Path:
        path = Path(self.options.checkpoint_dir) / f"{kind}.npz"
        save_checkpoint(
            path,
            self.model,
            solver_state=self.state_dict(),
            extra=dict(self.options.checkpoint_extra or {}),
        )
        self.last_checkpoint = path if kind == "last" else (self.last_checkpoint or path)
        if self.options.on_checkpoint is not None:
            self.options.on_checkpoint(self, path, kind)
        return path

    # ------------------------------------------------------------------ figures
    def save_loss_curve(self, path: str | os.PathLike) -> Path:
        """Save the training loss per iteration and the per-epoch curves as a PNG."""
        from captionlab.captioning.plots import plot_loss_curves

        histories = {
            "loss_history": self.loss_history,
            "train_loss_history": self.train_loss_history,
            "val_loss_history": self.val_loss_history,
            "val_metric_history": self.val_metric_history,
            "metric_name": self.options.metric_name,
        }
        return plot_loss_curves(path, {"": histories})


__all__ = ["CaptioningSolver", "SolverOptions", "TrainingDivergedError"]
