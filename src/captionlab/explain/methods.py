"""The word-explanation methods by name, and which captioners each one explains (torch-free).

``captionlab explain`` (its ``--method`` choices) and ``captionlab serve`` (the API's
``method`` field, each model's list of methods) read the names here without loading torch or
a captioner; :class:`~captionlab.explain.Explainer` checks every call with
:func:`check_method`, so the command line and the server refuse a method in the same words.

A captioner reads its image as one pooled feature vector (N, D) or as a grid of cells
(N, L, D) (:func:`captionlab.explain.pipeline.feature_layout`).
"""

from __future__ import annotations

from captionlab.errors import UserError
from captionlab.vision.settings import SALIENCY_METHODS

__all__ = [
    "GRID_METHODS",
    "LAYOUTS",
    "METHODS",
    "PIXEL_METHODS",
    "check_method",
    "methods_for",
    "needs_grid_error",
]

# The gradient of a word's log-probability to the pixels, by the saliency methods of
# captionlab.vision.saliency (vanilla gradient, SmoothGrad, Integrated Gradients): every captioner.
PIXEL_METHODS = SALIENCY_METHODS
# Methods that need the captioner's grid of cells (AttentionCaptioner, grid Transformer):
# Grad-CAM at the captioner's input grid, and Guided Grad-CAM (SmoothGrad's pixel map times
# the Grad-CAM map upsampled to the pixels, Selvaraju et al. 2017).
GRID_METHODS = ("gradcam", "guided-gradcam")
METHODS = (*PIXEL_METHODS, *GRID_METHODS)
LAYOUTS = ("pooled", "grid")


def methods_for(layout: str) -> tuple[str, ...]:
    """The methods that explain a captioner of ``layout`` features: ``"pooled"`` (N, D) gets
    :data:`PIXEL_METHODS`, ``"grid"`` (N, L, D) all of :data:`METHODS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return METHODS if layout == "grid" else PIXEL_METHODS


def check_method(method: str, layout: str, captioner: str) -> None:
    """UserError unless ``method`` explains a captioner of ``layout`` features; the message
    names the method and, by ``captioner`` (``"this CaptioningRNN"``, ``"model 'lstm'
    (lstm)"``), the captioner it cannot explain."""
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method not in methods_for(layout):
        raise needs_grid_error(method, captioner)


def needs_grid_error(method: str, captioner: str) -> UserError:
    """The refusal of a grid method for ``captioner``, a captioner of pooled features."""
    return UserError(
        f"method {method} needs a captioner over a grid of cells; {captioner} reads one "
        f"pooled feature vector (use {', '.join(PIXEL_METHODS)})"
    )
