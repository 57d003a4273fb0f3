"""What people ask of the CNN, one function each: classify, explain (saliency), fool, dream.

Each takes uint8 images and the backbone and returns plain results (numbers, uint8 images,
maps as arrays) that the command line, the demo and the web page turn into text, figures or
JSON; the figures themselves are drawn by :mod:`captionlab.vision.figures`.

Images are uint8 (S, S, 3) as :func:`captionlab.vision.images.read_image` gives them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from captionlab.vision import saliency as sal
from captionlab.vision.backbone import INPUT_RANGE, deprocess, preprocess
from captionlab.vision.imagenet import CLASS_NAMES, top_classes
from captionlab.vision.settings import DREAM, FOOL, SALIENCY, check_settings

__all__ = ["classify", "dream", "fool", "predict", "saliency_maps"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 1000) float32 of uint8 images (N, S, S, 3)."""
    with torch.no_grad():
        x = preprocess(pixels).to(_device(model))
        return model(x).softmax(dim=1).cpu().numpy()


def classify(model: torch.nn.Module, pixels: np.ndarray, k: int = 5) -> list[list[dict]]:
    """The top ``k`` classes ``{"index", "name", "prob"}`` of each image (N, S, S, 3)."""
    return [top_classes(p, k) for p in predict(model, pixels)]


def saliency_maps(
    model: torch.nn.Module,
    pixels: np.ndarray,
    target: int | None = None,
    methods: Sequence[str] = ("vanilla",),
    *,
    samples: int = 25,
    noise: float = 0.15,
    steps: int = 32,
    seed: int = 0,
) -> dict:
    """Saliency maps of one image (S, S, 3) for ``target`` (default: the predicted class).

    Args:
        methods: any of ``vanilla``, ``smoothgrad`` (``samples`` noisy copies with noise std
            ``noise`` of the value range, seeded), ``ig`` (``steps`` path points from a
            black image).

    Returns:
        ``{"target": {"index", "name", "prob"}, "predicted": {...}, "maps": {method: (S, S)
        float32}, "seconds": {method: s}}``.
    """
    settings = check_settings(
        SALIENCY, {"samples": samples, "noise": noise, "steps": steps, "seed": seed}
    )
    samples, noise, steps, seed = (settings[k] for k in ("samples", "noise", "steps", "seed"))
    x = preprocess(pixels).to(_device(model))  # (1, 3, S, S)
    probs = predict(model, pixels[None])[0]
    if target is None:
        target = int(probs.argmax())
    options = {
        "vanilla": {},
        "smoothgrad": {"n_samples": samples, "noise_level": noise, "seed": seed},
        # the black image as baseline: pixel 0 on the model's scale
        "ig": {"steps": steps, "baseline": float(INPUT_RANGE[0])},
    }
    maps, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        result = sal.saliency(x, target, model, method=method, **options[method])
        maps[method] = result[0].cpu().numpy()
        seconds[method] = time.perf_counter() - start
    return {
        "target": {"index": target, "name": CLASS_NAMES[target], "prob": float(probs[target])},
        "predicted": top_classes(probs, 1)[0],
        "maps": maps,
        "seconds": seconds,
    }


def fool(
    model: torch.nn.Module,
    pixels: np.ndarray,
    target: int,
    *,
    epsilon: float | None = None,
    step_size: float | None = None,
    learning_rate: float = 1.0,
    max_iter: int = 100,
    confidence: float = 0.9,
) -> dict:
    """A fooling image of one image (S, S, 3) toward class ``target``.

    Without ``epsilon``: cs231n's unbounded attack (normalised steps of L2 length
    ``learning_rate``); with it: targeted PGD within that L-infinity budget (a fraction of
    the pixel range), steps of ``step_size`` (default epsilon/4). The attack keeps going
    after the flip until the target has probability ``confidence`` (0: stop at the flip).

    Returns:
        ``{"image": uint8 (S, S, 3) the fooling image rounded to pixels, "attack", "epsilon",
        "success", "iterations", "target_prob", "l2", "linf", "predicted_before",
        "predicted_after_saving", "success_after_saving", "target_prob_after_saving",
        "seconds"}``.
    """
    from captionlab.vision import fooling

    settings = check_settings(
        FOOL,
        {
            "epsilon": epsilon, "step_size": step_size, "learning_rate": learning_rate,
            "max_iter": max_iter, "confidence": confidence,
        },
    )  # fmt: skip
    epsilon, step_size = settings["epsilon"], settings["step_size"]
    learning_rate, max_iter = settings["learning_rate"], settings["max_iter"]
    confidence = settings["confidence"]
    x = preprocess(pixels).to(_device(model))  # (1, 3, S, S)
    stop_prob = confidence or None
    start = time.perf_counter()
    if epsilon is None:
        res = fooling.fool(
            x, target, model, learning_rate=learning_rate, max_iter=max_iter,
            input_range=INPUT_RANGE, stop_prob=stop_prob,
        )  # fmt: skip
    else:
        res = fooling.pgd_attack(
            x, target, model, epsilon=epsilon, step_size=step_size, max_iter=max_iter,
            input_range=INPUT_RANGE, stop_prob=stop_prob,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    fooled = deprocess(res.images)[0]  # what is saved: the image rounded to pixels
    before, after = predict(model, np.stack([pixels, fooled]))
    top_after = top_classes(after, 1)[0]
    return {
        "image": fooled,
        "attack": "cs231n" if epsilon is None else "pgd",
        "epsilon": epsilon,
        "success": bool(res.success[0]),
        "iterations": int(res.iterations[0]),
        "target_prob": float(res.target_prob[0]),
        "l2": float(res.l2[0]),
        "linf": float(res.linf[0]),
        "predicted_before": top_classes(before, 1)[0],
        "predicted_after_saving": top_after,
        "success_after_saving": top_after["index"] == target,
        "target_prob_after_saving": float(after[target]),
        "seconds": seconds,
    }


def dream(model: torch.nn.Module, targets: Sequence[int], **options) -> dict:
    """Class visualizations of ``targets`` by regularised gradient ascent from noise.

    ``options`` are :func:`captionlab.vision.class_viz.visualize_class`'s (``l2_reg``,
    ``learning_rate``, ``num_iterations``, ``blur_every``, ``blur_sigma``, ``max_jitter``,
    ``init_std``, ``size``, ``seed``, ``callback``).

    Returns:
        ``{"images": list of uint8 (S, S, 3), "classes": [{"index", "name", "prob"}],
        "seconds"}``.
    """
    from captionlab.vision.class_viz import visualize_class

    options = check_settings(DREAM, options)
    start = time.perf_counter()
    res = visualize_class(list(targets), model, input_range=INPUT_RANGE, **options)
    probs = [float(p) for p in res.target_prob.tolist()]
    return {
        "images": list(deprocess(res.images)),
        "classes": [
            {"index": t, "name": CLASS_NAMES[t], "prob": p}
            for t, p in zip(targets, probs, strict=True)
        ],
        "seconds": time.perf_counter() - start,
    }
