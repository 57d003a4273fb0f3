"""The trained captioners the server offers: found once at start-up, loaded once, by name.

This is the one module of :mod:`captionlab.serve` that uses the captioning library (run
folders, checkpoints, the feature extractor a checkpoint names, decoding). Everything else
in the server asks a :class:`ModelRegistry` for captions of uint8 images and never touches a
checkpoint or a path.

Discovery (:meth:`ModelRegistry.discover`): in each folder given, a run folder holding
``best.npz`` (``DIR/lstm/best.npz`` -> model ``lstm``), the folder itself when it is a run
(``DIR/best.npz`` -> the folder's name), and loose checkpoints (``DIR/name.npz`` -> ``name``).
A name found twice gets the given folder's name in front (``other/lstm``). Requests name a
model only by these names; a name is a key of a dict, never a path.

Captions are returned as :class:`Caption` records: the text, its words, and a slot for
per-word attention maps, ``None`` for models without attention (all of today's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captionlab.errors import UserError

__all__ = ["Caption", "ModelRegistry", "ServedModel", "UnknownModelError", "find_checkpoints"]

MAX_BEAM = 10
MAX_WORDS = 20  # words per caption at most (the training captions have at most 15)


class UnknownModelError(UserError):
    """A request named a model the server does not have."""


@dataclass
class Caption:
    """One decoded caption.

    ``attention`` is ``None`` for a model without attention. A model with attention fills it
    with ``{"grid": [h, w], "maps": [[h*w weights] for each word]}`` (row-major cells); no
    model does yet.
    """

    decoding: str  # "greedy" or "beam"
    beam_size: int
    text: str
    words: list[str]
    attention: dict | None = None


@dataclass
class ServedModel:
    """A loaded captioner: the network, the extractor of its features, and what to show."""

    name: str
    source: str  # the checkpoint file, for the log printed at start-up (never sent out)
    cell: str
    vocab_size: int
    hidden_dim: int
    image_size: int
    has_attention: bool
    model: object = field(repr=False)
    extractor: object = field(repr=False)

    def describe(self) -> dict:
        """What ``GET /api/models`` tells about this model (no paths)."""
        return {
            "name": self.name,
            "cell": self.cell,
            "vocab_size": self.vocab_size,
            "hidden_dim": self.hidden_dim,
            "image_size": self.image_size,
            "attention": self.has_attention,
        }


def _candidates(folder: Path) -> list[tuple[str, Path]]:
    """``(name, checkpoint)`` pairs in ``folder``, sorted by name."""
    found: list[tuple[str, Path]] = []
    if (folder / "best.npz").is_file():
        found.append((folder.resolve().name, folder / "best.npz"))
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() and (child / "best.npz").is_file():
            found.append((child.name, child / "best.npz"))
        elif child.is_file() and child.suffix == ".npz" and child.stem not in ("best", "last"):
            found.append((child.stem, child))
    return found


def find_checkpoints(folders: list[str | Path]) -> list[tuple[str, Path]]:
    """``(name, checkpoint)`` for every run in ``folders`` (see the module docstring), names
    unique: a repeated name gets the name of the folder given in front (``other/lstm``)."""
    named: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--models {folder}: no such folder of trained runs")
        for name, path in _candidates(folder):
            if name in seen:
                name = f"{folder.resolve().name}/{name}"
            while name in seen:
                name += "+"
            seen.add(name)
            named.append((name, path))
    return named


class ModelRegistry:
    """Captioners by name. Build with :meth:`discover` (or :meth:`from_checkpoints`)."""

    def __init__(self, models: list[ServedModel], skipped: list[str] | None = None):
        self._models = {m.name: m for m in models}
        #: one line per checkpoint that was found but could not be loaded
        self.skipped = list(skipped or [])

    @classmethod
    def discover(cls, folders: list[str | Path], device: str = "cpu") -> ModelRegistry:
        """Load every run :func:`find_checkpoints` finds in ``folders``.

        A folder that does not exist is the user's mistake (:class:`UserError`); a
        checkpoint that cannot be loaded is skipped and listed in :attr:`skipped`.
        """
        return cls.from_checkpoints(find_checkpoints(folders), device=device)

    @classmethod
    def from_checkpoints(
        cls, named: list[tuple[str, str | Path]], device: str = "cpu"
    ) -> ModelRegistry:
        models, skipped = [], []
        for name, path in named:
            try:
                models.append(_load(name, Path(path), device))
            except UserError as exc:
                skipped.append(f"{name}: {exc}")
        return cls(models, skipped)

    # -- lookup -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def describe(self) -> list[dict]:
        return [m.describe() for m in self._models.values()]

    def get(self, name: str) -> ServedModel:
        if name not in self._models:
            have = ", ".join(self._models) or "none (start the server with --models DIR)"
            raise UnknownModelError(f"unknown model {name!r}; this server has: {have}")
        return self._models[name]

    # -- captioning -------------------------------------------------------------------------
    def caption(self, name: str, pixels: np.ndarray, beam: int = 3) -> list[Caption]:
        """Captions of one image by model ``name``: greedy, and beam search when ``beam > 1``.

        ``pixels`` uint8 (S, S, 3) with ``S`` the model's ``image_size`` (the centre crop the
        features are taken from, as in training).
        """
        from captionlab.runs.inference import caption_features

        served = self.get(name)
        if not 1 <= beam <= MAX_BEAM:
            raise UserError(f"beam must be in 1..{MAX_BEAM}, got {beam}")
        S = served.image_size
        if pixels.shape != (S, S, 3) or pixels.dtype != np.uint8:
            raise ValueError(
                f"pixels must be uint8 ({S}, {S}, 3), got {pixels.dtype} {pixels.shape}"
            )
        model = served.model
        features = served.extractor.transform_images(pixels[None]).astype(model.dtype)  # (1, D)
        out = []
        for size in (1, beam) if beam > 1 else (1,):
            (text,) = caption_features(model, features, beam=size, max_length=MAX_WORDS)
            out.append(
                Caption(
                    decoding="greedy" if size == 1 else "beam",
                    beam_size=size,
                    text=text,
                    words=text.split(),
                )
            )
        return out


def _load(name: str, path: Path, device: str) -> ServedModel:
    from captionlab.captioning import load_checkpoint
    from captionlab.runs.inference import extractor_for_checkpoint, resolve_model_path

    ckpt = resolve_model_path(path)
    model, state = load_checkpoint(ckpt)
    extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
    if extractor.dim != model.config.input_dim:
        raise UserError(
            f"{ckpt}: the model expects {model.config.input_dim}-d features, its extractor "
            f"makes {extractor.dim}-d"
        )
    return ServedModel(
        name=name,
        source=str(ckpt),
        cell=model.cell_type,
        vocab_size=len(model.word_to_idx),
        hidden_dim=model.config.hidden_dim,
        image_size=extractor.config.image_size,
        has_attention=False,
        model=model,
        extractor=extractor,
    )
