"""What the page shows about the pretrained CNN: classes, saliency, fooling, class pictures.

:class:`VisionEngine` holds one EfficientNet-Lite0 and answers with JSON-able dicts, images
as PNG data URLs. It wraps :mod:`captionlab.vision` (saliency, fooling, class_viz, figures)
with the settings of the matching ``captionlab`` commands, and bounds every knob a request
may turn (samples, steps, iterations) so that no request can ask for unbounded work.

Every method runs on the caller's thread and is CPU-bound: the server calls them from its
one work queue, one at a time (:mod:`captionlab.serve.work`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from captionlab.errors import UserError
from captionlab.serve.imaging import png_data_url
from captionlab.vision import tasks
from captionlab.vision.backbone import deprocess, load_backbone
from captionlab.vision.imagenet import CLASS_NAMES, NUM_CLASSES, SYNONYMS, resolve_class
from captionlab.vision.settings import SALIENCY_METHODS

__all__ = ["LIMITS", "SALIENCY_METHODS", "UnknownClassError", "VisionEngine", "parse_budget"]

CNN_SIZE = 224  # what the backbone was trained on


@dataclass(frozen=True)
class Limits:
    """The largest work a request may ask for (and the defaults the page uses)."""

    top_max: int = 20
    samples_max: int = 50  # SmoothGrad noisy copies
    samples_default: int = 25
    steps_max: int = 64  # Integrated Gradients path points
    steps_default: int = 32
    fool_iter_max: int = 200
    fool_iter_default: int = 100
    dream_iter_max: int = 300
    dream_iter_default: int = 100


LIMITS = Limits()


class UnknownClassError(UserError):
    """A request named an ImageNet class that does not exist (or is ambiguous)."""


def find_class(text: str, field: str = "target") -> int:
    """A class name, synonym, WordNet id or index -> its index (UnknownClassError otherwise)."""
    try:
        return resolve_class(text)
    except UserError as exc:
        raise UnknownClassError(f"{field}: {exc}") from None


def parse_budget(text: str, field: str = "epsilon") -> float | None:
    """``"2/255"``, ``"0.008"`` -> a fraction of the pixel range; ``""``/``"none"`` -> None."""
    text = (text or "").strip().lower()
    if text in ("", "none", "unbounded"):
        return None
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{field} must be like 2/255, 0.008 or 'none', got {text!r}") from None
    if not 0 < value <= 1:
        raise UserError(f"{field} must be a fraction of the pixel range in (0, 1], got {text!r}")
    return value


def class_entry(index: int, probability: float) -> dict:
    return {"index": int(index), "name": CLASS_NAMES[int(index)], "probability": float(probability)}


def class_catalogue() -> list[dict]:
    """All 1000 classes with their synonyms, for the page's completion."""
    return [
        {"index": i, "name": CLASS_NAMES[i], "synonyms": list(SYNONYMS[i][1:])}
        for i in range(NUM_CLASSES)
    ]


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.shape != (CNN_SIZE, CNN_SIZE, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 (224, 224, 3), got {pixels.dtype} {pixels.shape}")


class VisionEngine:
    """The pretrained backbone and the visualizations of :mod:`captionlab.vision.tasks`,
    within the server's :data:`LIMITS`, answered as JSON-able dicts with PNG data URLs."""

    def __init__(self, device: str = "cpu", model: torch.nn.Module | None = None):
        self.model = model if model is not None else load_backbone(device=device)
        self.device = next(self.model.parameters()).device

    def classify(self, pixels: np.ndarray, top: int = 5) -> list[dict]:
        """The ``top`` classes of an image, most probable first."""
        if not 1 <= top <= LIMITS.top_max:
            raise UserError(f"top must be in 1..{LIMITS.top_max}, got {top}")
        _check_pixels(pixels)
        return [_entry(c) for c in tasks.classify(self.model, pixels[None], top)[0]]

    def saliency(
        self,
        pixels: np.ndarray,
        method: str = "vanilla",
        target: int | None = None,
        samples: int = LIMITS.samples_default,
        steps: int = LIMITS.steps_default,
    ) -> dict:
        """Saliency map of ``target`` (default: the top class) by ``method``, as overlay PNG."""
        from captionlab.vision.figures import normalize_map, overlay

        if method not in SALIENCY_METHODS:
            raise UserError(f"method must be one of {', '.join(SALIENCY_METHODS)}, got {method!r}")
        if not 1 <= samples <= LIMITS.samples_max:
            raise UserError(f"samples must be in 1..{LIMITS.samples_max}, got {samples}")
        if not 1 <= steps <= LIMITS.steps_max:
            raise UserError(f"steps must be in 1..{LIMITS.steps_max}, got {steps}")
        _check_pixels(pixels)
        res = tasks.saliency_maps(
            self.model, pixels, target, (method,), samples=samples, steps=steps
        )
        heat = res["maps"][method]  # (224, 224)
        return {
            "method": method,
            "target": _entry(res["target"]),
            "overlay": png_data_url(overlay(pixels, heat)),
            "map": png_data_url(np.repeat(normalize_map(heat)[..., None], 3, axis=2)),
        }

    def fool(
        self,
        pixels: np.ndarray,
        target: int,
        epsilon: float | None = 2 / 255,
        max_iter: int = LIMITS.fool_iter_default,
        confidence: float = 0.9,
    ) -> dict:
        """A fooling image toward ``target``: PGD within ``epsilon`` (L-inf, pixel range
        fraction), or cs231n's unbounded attack when ``epsilon`` is None."""
        from captionlab.vision.figures import magnified_difference

        if not 1 <= max_iter <= LIMITS.fool_iter_max:
            raise UserError(f"max_iter must be in 1..{LIMITS.fool_iter_max}, got {max_iter}")
        _check_pixels(pixels)
        res = tasks.fool(
            self.model, pixels, target, epsilon=epsilon, max_iter=max_iter, confidence=confidence
        )
        fooled = res["image"]  # what the page shows: rounded to pixels
        shown, magnify, linf = magnified_difference(pixels, fooled)
        after = res["predicted_after_saving"]
        return {
            "target": class_entry(target, res["target_prob_after_saving"]),
            "attack": res["attack"],
            "epsilon": epsilon,
            "success": res["success_after_saving"],
            "iterations": res["iterations"],
            "max_change": linf,  # in grey levels (0..255)
            "magnify": magnify,
            "original_class": _entry(res["predicted_before"]),
            "fooled_class": _entry(after),
            "images": {
                "original": png_data_url(pixels),
                "fooled": png_data_url(fooled),
                "difference": png_data_url(shown),
            },
        }

    def dream(
        self,
        target: int,
        iterations: int = LIMITS.dream_iter_default,
        seed: int = 0,
        progress: Callable[[int, int, str | None], None] | None = None,
        every: int = 10,
    ) -> dict:
        """Class visualization from noise; ``progress(step, total, preview_png_url)``."""
        if not 1 <= iterations <= LIMITS.dream_iter_max:
            raise UserError(f"iterations must be in 1..{LIMITS.dream_iter_max}, got {iterations}")

        def callback(t: int, images: torch.Tensor) -> None:
            if progress is not None:
                progress(t, iterations, png_data_url(deprocess(images)[0]))

        res = tasks.dream(
            self.model, [target], num_iterations=iterations, seed=seed, size=CNN_SIZE,
            callback=callback, show_every=every,
        )  # fmt: skip
        return {
            "target": _entry(res["classes"][0]),
            "iterations": iterations,
            "image": png_data_url(res["images"][0]),
        }


def _entry(c: dict) -> dict:
    """A class as :mod:`captionlab.vision.tasks` gives it -> the API's ``class_entry``."""
    return class_entry(c["index"], c["prob"])
