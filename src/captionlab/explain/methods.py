"""The word-explanation methods by name, and which captioners each one explains (torch-free).

``captionlab explain`` (its ``--method`` choices) and ``captionlab serve`` (the API's
``method`` field, each model's list of methods) read the names here without loading torch or
a captioner; :class:`~captionlab.explain.Explainer` checks every call with
:func:`check_method`, so the command line and the server refuse a method in the same words.

A captioner reads its image as one pooled feature vector (N, D) or as a grid of cells
(N, L, D) (:func:`captionlab.explain.pipeline.feature_layout`).
"""

from __future__ import annotations

import inspect

from captionlab.errors import UserError
from captionlab.vision.settings import SALIENCY_METHODS

__all__ = [
    "GRID_METHODS",
    "LAYERCAM_TAP",
    "LAYER_METHODS",
    "LAYOUTS",
    "METHODS",
    "PIXEL_METHODS",
    "can_hold_attention",
    "check_hold_attention",
    "check_method",
    "methods_for",
    "needs_grid_error",
]

# The gradient of a word's log-probability to the pixels, by the saliency methods of
# captionlab.vision.saliency (vanilla gradient, SmoothGrad, Integrated Gradients): every captioner.
PIXEL_METHODS = SALIENCY_METHODS
# LayerCAM (Jiang et al. 2021) of the word at a block of the backbone, averaged over
# SmoothGrad's noisy copies and upsampled to the pixels: every captioner (all of them read the
# backbone), a Grad-CAM-like map for pooled-feature captioners too.
LAYER_METHODS = ("layercam",)
# The blocks LayerCAM reads by default (``--layer``), fused (each map scaled to 1, their
# geometric mean). On 100 tuning scenes kept apart from the benchmark's (shapes seed 2024; 25
# copies at noise 0.3), one block alone put the peak on a shape word's object most often at
# block10 (stride 16): attention captioner 0.68 of 193 words (block2 0.57, block4 0.61,
# block7 0.59), LSTM 0.65 of 183 (0.52, 0.53, 0.48). Its 10 x 10 map's peak often sat just
# outside a small object's box; block10 fused with the finer block4 (stride 4) raised the shape
# words of the grid Transformer with its attention held from 0.851 to 0.918 of 194 (block2
# with block10: 0.892), of the attention captioner from 0.629 to 0.706 (held 0.696 to 0.711;
# block2: 0.711, 0.727) and left the LSTM's at 0.561 (block2: 0.620), with the models
# retrained since; chosen for the best model's shape words.
LAYERCAM_TAP = "block4,block10"
# Methods that need the captioner's grid of cells (AttentionCaptioner, grid Transformer):
# Grad-CAM at the captioner's input grid, and Guided Grad-CAM (SmoothGrad's pixel map times
# the Grad-CAM map upsampled to the pixels, Selvaraju et al. 2017).
GRID_METHODS = ("gradcam", "guided-gradcam")
METHODS = (*PIXEL_METHODS, *LAYER_METHODS, *GRID_METHODS)
LAYOUTS = ("pooled", "grid")


def methods_for(layout: str) -> tuple[str, ...]:
    """The methods that explain a captioner of ``layout`` features: ``"pooled"`` (N, D) gets
    :data:`PIXEL_METHODS` and :data:`LAYER_METHODS`, ``"grid"`` (N, L, D) all of
    :data:`METHODS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return METHODS if layout == "grid" else (*PIXEL_METHODS, *LAYER_METHODS)


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
        f"pooled feature vector (use {', '.join(methods_for('pooled'))})"
    )


def can_hold_attention(captioner) -> bool:
    """Whether ``captioner.loss`` can take its gradients with its attention weights held
    constant (``hold_attention=True``): the AttentionCaptioner's and the
    CaptioningTransformer's can (the Transformer's layer norms' scales held too);
    the RNN, LSTM and GRU have no attention to hold."""
    loss = getattr(captioner, "loss", None)
    return loss is not None and "hold_attention" in inspect.signature(loss).parameters


def check_hold_attention(captioner, option: str = "--hold-attention", who: str = "") -> None:
    """UserError unless :func:`can_hold_attention`; the message names ``option`` (the
    command's flag, or the API's field) and the model (``who``, else the captioner's class)."""
    if not can_hold_attention(captioner):
        who = who or f"this model is a {type(captioner).__name__}"
        raise UserError(f"{option} needs a captioner with attention (--model attention or "
                        f"transformer), whose attention weights it holds constant; "
                        f"{who}")  # fmt: skip
