"""First-order update rules (cs231n): ``update(w, dw, config=None) -> (next_w, config)``.

``w`` and ``dw`` are arrays of the same shape (any shape); ``config`` is a dict of
hyperparameters and state (velocity, moving averages, step count) that the caller keeps
between calls and passes back. Missing keys get the defaults below. The returned weights
keep ``w``'s dtype. Rules are looked up by name in :data:`UPDATE_RULES`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sgd(w: np.ndarray, dw: np.ndarray, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """Vanilla SGD: ``w -= learning_rate * dw``.

    config: ``learning_rate`` (1e-2).
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    next_w = w - (config["learning_rate"] * dw).astype(w.dtype, copy=False)
    return next_w, config


def sgd_momentum(
    w: np.ndarray, dw: np.ndarray, config: dict | None = None
) -> tuple[np.ndarray, dict]:
    """SGD with momentum: ``v = momentum * v - learning_rate * dw``; ``w += v``.

    config: ``learning_rate`` (1e-2), ``momentum`` (0.9), ``velocity`` (zeros like w).
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity")
    if v is None:
        v = np.zeros_like(w)
    v = config["momentum"] * v - config["learning_rate"] * dw
    v = v.astype(w.dtype, copy=False)
    config["velocity"] = v
    return w + v, config


def rmsprop(w: np.ndarray, dw: np.ndarray, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """RMSProp: ``cache = decay * cache + (1 - decay) * dw**2``; ``w -= lr * dw / sqrt(cache)``.

    config: ``learning_rate`` (1e-2), ``decay_rate`` (0.99), ``epsilon`` (1e-8),
    ``cache`` (zeros like w).
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    cache = config.get("cache")
    if cache is None:
        cache = np.zeros_like(w)
    d = config["decay_rate"]
    cache = (d * cache + (1 - d) * dw * dw).astype(w.dtype, copy=False)
    config["cache"] = cache
    step = config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"])
    return w - step.astype(w.dtype, copy=False), config


def adam(w: np.ndarray, dw: np.ndarray, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """Adam with bias correction (Kingma and Ba, 2015).

    ``t += 1; m = b1 m + (1-b1) dw; v = b2 v + (1-b2) dw**2;
    w -= lr * (m / (1-b1**t)) / (sqrt(v / (1-b2**t)) + eps)``.

    config: ``learning_rate`` (1e-3), ``beta1`` (0.9), ``beta2`` (0.999), ``epsilon`` (1e-8),
    ``m`` and ``v`` (zeros like w), ``t`` (0).
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    m = config.get("m")
    v = config.get("v")
    m = np.zeros_like(w) if m is None else m
    v = np.zeros_like(w) if v is None else v
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    t = config["t"]
    m = (b1 * m + (1 - b1) * dw).astype(w.dtype, copy=False)
    v = (b2 * v + (1 - b2) * dw * dw).astype(w.dtype, copy=False)
    config["m"], config["v"] = m, v
    mt = m / (1 - b1**t)
    vt = v / (1 - b2**t)
    step = config["learning_rate"] * mt / (np.sqrt(vt) + config["epsilon"])
    return w - step.astype(w.dtype, copy=False), config


UPDATE_RULES: dict[str, Callable[..., tuple[np.ndarray, dict]]] = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
}
