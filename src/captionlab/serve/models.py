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

Captions are returned as :class:`Caption` records: the text, its words and, for a model
that attends over a grid of cells (an ``AttentionCaptioner``, a ``CaptioningTransformer``
over a grid), each word's attention: the ``s x s`` cell weights and a picture of it.
:meth:`ModelRegistry.explain` explains a caption word by word (:mod:`captionlab.explain`:
the gradient of each word's log-probability through the captioner and the CNN to the
pixels), with the backbone the model's features come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captionlab.errors import CheckpointError, UserError
from captionlab.explain.methods import METHODS as EXPLAIN_METHODS  # torch-free
from captionlab.explain.methods import (
    can_hold_attention,
    check_hold_attention,
    check_method,
    methods_for,
)
from captionlab.serve.imaging import png_data_url

__all__ = [
    "EXPLAIN_LIMITS",
    "EXPLAIN_METHODS",
    "SAMPLED_METHODS",
    "Caption",
    "ExplainLimits",
    "ModelRegistry",
    "ServedModel",
    "UnknownModelError",
    "find_checkpoints",
]

MAX_BEAM = 10
MAX_WORDS = 20  # words per caption at most (the training captions have at most 15)
# the explain methods that take ``samples``
SAMPLED_METHODS = ("smoothgrad", "guided-gradcam", "layercam")


@dataclass(frozen=True)
class ExplainLimits:
    """The most work one explain request may ask for, and the page's defaults. Every word
    costs a backward pass of the CNN per SmoothGrad sample or IG step: 8 words at 160 px
    with 8 samples is 64 passes (seconds on a laptop's CPU). SmoothGrad's noise is
    ``captionlab explain``'s (the Explainer's default), so the page's maps are the CLI's."""

    samples_max: int = 25  # SmoothGrad noisy copies (``captionlab explain``'s default)
    samples_default: int = 8
    steps_max: int = 32  # Integrated Gradients path points
    steps_default: int = 16


EXPLAIN_LIMITS = ExplainLimits()


class UnknownModelError(UserError):
    """A request named a model the server does not have."""


@dataclass
class Caption:
    """One decoded caption.

    ``attention`` is ``None`` for a model without attention. A model with attention fills it
    with ``{"grid": [s, s], "maps": [[s*s weights] for each word], "images": [PNG data URL
    for each word]}``: cells row-major, top-left first, each word's weights summing to 1;
    each image the model's crop seen through the word's attention (``S x S``).
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
    cell: str  # rnn, lstm, gru, attention or transformer (runs.inference.model_kind)
    vocab_size: int
    hidden_dim: int
    image_size: int
    has_attention: bool
    model: object = field(repr=False)
    extractor: object = field(repr=False)
    grid_side: int | None = None  # s of the attended s x s grid; None without attention
    explainable: bool = False  # its loss gives the gradient of its input features
    layout: str = "pooled"  # its features: "pooled" (D,) or a "grid" of cells (L, D)
    _explainers: dict = field(default_factory=dict, repr=False)  # hold_attention -> Explainer

    def describe(self) -> dict:
        """What ``GET /api/models`` tells about this model (no paths)."""
        return {
            "name": self.name,
            "cell": self.cell,
            "vocab_size": self.vocab_size,
            "hidden_dim": self.hidden_dim,
            "image_size": self.image_size,
            "attention": self.has_attention,
            "grid": None if self.grid_side is None else [self.grid_side, self.grid_side],
            "explain": self.explainable,
            "explain_methods": list(self.explain_methods),
            "hold_attention": self.can_hold_attention,
        }

    @property
    def explain_methods(self) -> tuple[str, ...]:
        """The methods ``POST /api/explain`` explains this model by (none when it cannot be
        explained; the grid methods only for a captioner over a grid of cells)."""
        return methods_for(self.layout) if self.explainable else ()

    @property
    def can_hold_attention(self) -> bool:
        """Whether its explanations can hold its attention weights constant (the attention
        captioner's and the Transformer's;
        :func:`captionlab.explain.methods.can_hold_attention`)."""
        return self.explainable and can_hold_attention(self.model)

    def explainer(self, hold_attention: bool = False):
        """The :class:`~captionlab.explain.Explainer` of this model (with its attention held,
        or not), built on first use over the backbone its extractor already holds (no
        second copy of the network; the held and the free explainer share one pipeline)."""
        hold_attention = bool(hold_attention)
        if hold_attention not in self._explainers:
            from captionlab.explain import Explainer, FeaturePipeline, feature_layout

            built = next(iter(self._explainers.values()), None)
            if built is not None:
                pipeline = built.pipeline
            else:
                ex = self.extractor
                pipeline = FeaturePipeline(ex.model, ex.config, ex.pca,
                                           layout=feature_layout(self.model),
                                           grid_pca=ex.grid_pca)  # fmt: skip
            self._explainers[hold_attention] = Explainer(
                self.model, pipeline, max_length=MAX_WORDS, hold_attention=hold_attention
            )
        return self._explainers[hold_attention]


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

    def explained(self, name: str | None = None, method: str | None = None) -> str:
        """The name of the model ``POST /api/explain`` explains: ``name``, checked (unknown,
        or a model that cannot be explained: UserError), or by default the first model with
        attention that can be explained, else the first that can. With ``method``, also a
        UserError unless that method explains the model (:func:`captionlab.explain.
        check_method`: the grid methods need a captioner over a grid of cells)."""
        if name:
            served = self.get(name)
            if not served.explainable:
                raise UserError(
                    f"model {name!r} ({served.cell}) cannot be explained: its loss gives no "
                    "gradient of its input features; explain works for rnn, lstm, gru, "
                    "attention and transformer models"
                )
        else:
            able = [m for m in self._models.values() if m.explainable]
            if not able:
                have = ", ".join(f"{m.name} ({m.cell})" for m in self._models.values())
                raise UnknownModelError(
                    "this server has no model that can be explained "
                    + (f"(it has {have})" if have else "(start it with --models DIR)")
                )
            served = next((m for m in able if m.has_attention), able[0])
        if method is not None:
            check_method(method, served.layout, f"model {served.name!r} ({served.cell})")
        return served.name

    # -- captioning -------------------------------------------------------------------------
    def _check_pixels(self, served: ServedModel, pixels: np.ndarray) -> None:
        S = served.image_size
        if pixels.shape != (S, S, 3) or pixels.dtype != np.uint8:
            raise ValueError(
                f"pixels must be uint8 ({S}, {S}, 3), got {pixels.dtype} {pixels.shape}"
            )

    def caption(self, name: str, pixels: np.ndarray, beam: int = 3) -> list[Caption]:
        """Captions of one image by model ``name``: greedy, and beam search when ``beam > 1``;
        with each word's attention for a model that has it.

        ``pixels`` uint8 (S, S, 3) with ``S`` the model's ``image_size`` (the centre crop the
        features are taken from, as in training).
        """
        from captionlab.runs.inference import best_captions

        served = self.get(name)
        if not 1 <= beam <= MAX_BEAM:
            raise UserError(f"beam must be in 1..{MAX_BEAM}, got {beam}")
        self._check_pixels(served, pixels)
        model = served.model
        if served.has_attention:
            features = served.extractor.transform_images_with_grid(pixels[None])[1]  # (1, L, D)
        else:
            features = served.extractor.transform_images(pixels[None])  # (1, D)
        features = features.astype(model.dtype)
        out = []
        for size in (1, beam) if beam > 1 else (1,):
            ids, alphas = best_captions(model, features, beam=size, max_length=MAX_WORDS,
                                        attention=True)  # fmt: skip
            steps = _word_steps(ids[0], model.idx_to_word)  # [(t, word)]
            words = [w for _, w in steps]
            attention = None
            if served.has_attention and alphas is not None:
                attention = _attention(pixels, alphas[0, [t for t, _ in steps]], served)
            out.append(
                Caption(
                    decoding="greedy" if size == 1 else "beam",
                    beam_size=size,
                    text=" ".join(words),
                    words=words,
                    attention=attention,
                )
            )
        return out

    # -- explaining ---------------------------------------------------------------------------
    def explain(
        self,
        name: str,
        pixels: np.ndarray,
        method: str = "smoothgrad",
        *,
        beam: int = 1,
        samples: int = EXPLAIN_LIMITS.samples_default,
        steps: int = EXPLAIN_LIMITS.steps_default,
        hold_attention: bool = False,
    ) -> dict:
        """Why model ``name`` says each word of its caption of ``pixels`` (uint8 (S, S, 3)):
        the caption (greedy, or beam search of size ``beam``), then per word its saliency
        map by ``method`` (a PNG over the crop), the map's peak ``[x, y]`` in the crop's
        pixels, the word's probability and, for a model with attention, its attention
        (:meth:`captionlab.explain.Explainer.explain`; SmoothGrad seeded, so answers repeat).
        The grid methods (``gradcam``, ``guided-gradcam``) explain only a model over a grid
        of cells; for another the UserError names the method and the model.
        ``hold_attention``: every gradient with the attention weights held constant (the
        attention captioner and the Transformer; for another model a UserError naming it).
        """
        from captionlab.vision.figures import overlay

        served = self.get(name)
        limits = EXPLAIN_LIMITS
        bounds = (
            ("beam", beam, MAX_BEAM),
            ("samples", samples, limits.samples_max),
            ("steps", steps, limits.steps_max),
        )
        for what, value, top in bounds:
            if not 1 <= value <= top:
                raise UserError(f"{what} must be in 1..{top}, got {value}")
        self.explained(name, method)
        if hold_attention:
            check_hold_attention(served.model, "hold_attention",
                                 f"model {served.name!r} is a {served.cell}")  # fmt: skip
        self._check_pixels(served, pixels)
        explainer = served.explainer(hold_attention)
        result = explainer.explain(pixels, method, beam=beam, samples=samples, steps=steps, seed=0)
        alphas = None  # (K, L) the cells' weights, as the caption answer gives them
        if served.has_attention and result.words and result.words[0].attention_cells is not None:
            alphas = np.stack([w.attention_cells for w in result.words])
        attention = None if alphas is None else _attention(pixels, alphas, served)
        words = []
        for k, w in enumerate(result.words):
            entry = {
                "word": w.word,
                "position": w.position,
                "prob": w.prob,
                "peak": None if w.peak is None else list(w.peak),
                "saliency": png_data_url(overlay(pixels, w.saliency)),
                "attention": None,
                "attention_peak": None,
            }
            if attention is not None:
                entry["attention"] = attention["images"][k]
                entry["attention_peak"] = list(w.attention_peak)  # its top cell's centre
            words.append(entry)
        return {
            "model": name,
            "method": method,
            "hold_attention": bool(hold_attention),
            "beam": beam,
            "samples": samples if method in SAMPLED_METHODS else None,
            "steps": steps if method == "ig" else None,
            "image_size": served.image_size,
            "image": png_data_url(pixels),
            "caption": result.caption,
            "grid": None if attention is None else attention["grid"],
            "words": words,
        }


def _word_steps(ids: np.ndarray, idx_to_word) -> list[tuple[int, str]]:
    """``(t, word)`` for the words of one decoded caption (T,): step ``t`` chose the word, so
    it pairs with that step's attention; ``<START>`` (which an untrained model may choose)
    is skipped, ``<END>`` and ``<NULL>`` end the caption."""
    from captionlab.tokens import END, NULL, START

    out = []
    for t, idx in enumerate(np.asarray(ids).reshape(-1)):
        word = idx_to_word[int(idx)]
        if word in (END, NULL):
            break
        if word != START:
            out.append((t, word))
    return out


def _attention(pixels: np.ndarray, alphas: np.ndarray, served: ServedModel) -> dict:
    """The API's attention of K words: ``alphas`` (K, L) over the model's ``s x s`` cells
    and the crop ``pixels`` (S, S, 3) -> ``{"grid", "maps", "images"}`` (see Caption)."""
    from captionlab.captioning.plots import attention_map, attention_spotlight

    S, side = served.image_size, served.grid_side
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 2 or alphas.shape[1] != side * side:
        raise ValueError(f"alphas must be (K, {side * side}), got {alphas.shape}")
    images = [png_data_url(attention_spotlight(pixels, attention_map(a, S))) for a in alphas]
    maps = [[round(float(v), 5) for v in a] for a in alphas]
    return {"grid": [side, side], "maps": maps, "images": images}


def _loads_feature_grad(model) -> bool:
    """Whether ``model.loss`` can return the gradient of its input features (what
    :mod:`captionlab.explain` needs)."""
    import inspect

    try:
        return "feature_grad" in inspect.signature(model.loss).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _load(name: str, path: Path, device: str) -> ServedModel:
    from captionlab.captioning import load_checkpoint
    from captionlab.runs.inference import (
        extractor_for_checkpoint,
        model_kind,
        needs_grid,
        resolve_model_path,
    )

    ckpt = resolve_model_path(path)
    model, state = load_checkpoint(ckpt)
    extractor = extractor_for_checkpoint(state, device=device, path=ckpt)
    config = extractor.config
    grid = needs_grid(model)
    if grid and not config.grid:
        raise CheckpointError(f"{ckpt}: a model that reads a grid, whose feature config has none")
    got = (config.grid_len, config.grid_dim) if grid else (extractor.dim,)
    want = tuple(model.feature_shape)
    if any(w is not None and w != g for w, g in zip(want, got, strict=True)):
        shown = tuple("any" if w is None else w for w in want)
        raise CheckpointError(
            f"{ckpt}: the model expects features {shown} per image, its extractor makes {got}"
        )
    size = getattr(model.config, "hidden_dim", None) or model.config.wordvec_dim
    return ServedModel(
        name=name,
        source=str(ckpt),
        cell=model_kind(model),
        vocab_size=len(model.word_to_idx),
        hidden_dim=int(size),
        image_size=config.image_size,
        has_attention=grid,
        model=model,
        extractor=extractor,
        grid_side=config.grid_side if grid else None,
        explainable=_loads_feature_grad(model),
        layout="grid" if grid else "pooled",
    )
