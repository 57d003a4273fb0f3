"""The ranges of the visualization settings, declared once (torch-free).

:mod:`captionlab.vision.tasks` checks every call against them (naming the keyword) and the
``saliency``, ``fool`` and ``dream`` commands read their flags with them (naming the flag),
so a NaN, an infinity or a value out of range never reaches the network: it would draw a
blank map or put NaN into ``--json`` output.
"""

from __future__ import annotations

from captionlab.bounds import SEED, Bound, integer, real
from captionlab.errors import UserError

__all__ = ["DREAM", "FOOL", "SALIENCY", "SALIENCY_METHODS", "check_settings"]

# The saliency methods (captionlab.vision.saliency.METHODS), named here without torch so that
# the command line and the server can list them without loading it.
SALIENCY_METHODS = ("vanilla", "smoothgrad", "ig")

SALIENCY: dict[str, Bound] = {
    "samples": integer(1, 10_000),  # SmoothGrad: noisy copies
    "noise": real(0, 10),  # SmoothGrad: noise std / image value range
    "steps": integer(1, 10_000),  # Integrated Gradients: path points
    "seed": SEED,
}

FOOL: dict[str, Bound] = {
    "epsilon": real(0, 1),  # L-infinity budget, a fraction of the pixel range (None: no bound)
    "step_size": real(0, 1, lo_open=True),  # PGD step, a fraction of the range (None: eps/4)
    "learning_rate": real(0, lo_open=True),  # unbounded attack: L2 length of a step
    "max_iter": integer(0, 100_000),
    "confidence": real(0, 1, hi_open=True),
}

DREAM: dict[str, Bound] = {
    "num_iterations": integer(0, 100_000),
    "learning_rate": real(0, lo_open=True),
    "l2_reg": real(0),
    "blur_every": integer(0, 100_000),
    "blur_sigma": real(0, 100),
    "max_jitter": integer(0, 512),
    "init_std": real(0, 100),
    "size": integer(32, 1024),
    "seed": SEED,
}


#: Settings whose ``None`` means "not given" (the unbounded attack; the default step).
_OPTIONAL = frozenset({"epsilon", "step_size"})


def check_settings(bounds: dict[str, Bound], values: dict) -> dict:
    """``values`` checked against ``bounds`` (a number out of range raises UserError naming
    the setting); settings without a bound pass unchanged."""
    out = dict(values)
    for name, value in values.items():
        if name in bounds and not (value is None and name in _OPTIONAL):
            out[name] = bounds[name].check(value, name)
    if set(bounds) >= {"epsilon", "step_size"} and (
        out.get("step_size") is not None and out.get("epsilon") is None
    ):
        raise UserError("step_size is a PGD setting: give epsilon too")
    return out
