"""Class visualization: an image the network finds maximally "class y" (cs231n assignment 3).

Regularised gradient ascent from noise (Simonyan et al. 2014, with the jitter and blur of
Yosinski et al. 2015). With ``I`` the image (N, C, H, W) on the model's scale and
``s_y(I)`` the unnormalised score of class ``y``, each step does:

1. jitter: roll ``I`` by a random ``(ox, oy)`` in ``[0, max_jitter]`` pixels;
2. ascend ``s_y(I) - l2_reg * ||I||_2^2`` with a step normalised to L2 length
   ``learning_rate`` per image: ``I <- I + lr * g / ||g||_2``;
3. undo the jitter, clamp to ``input_range``, and every ``blur_every`` steps blur with a
   Gaussian of ``blur_sigma`` pixels.

cs231n's defaults were for SqueezeNet on ImageNet-standardised input (values in about
[-2.1, 2.6]): l2 1e-3, lr 25, 100 iterations, blur every 10 steps with sigma 0.5, jitter 16,
start ``N(0, 1)``. This project's backbone (EfficientNet-Lite0) takes ``(x - 127) / 128`` in
[-0.99, 1.0], about half that scale. cs231n's step and regularisers work unchanged there
(``benchmarks/bench_visualization.py``: 10 classes, from goldfish to volcano, all at target
probability >= 0.997 after 100 and after 200 steps), so :data:`DEFAULTS` keeps them and only
halves the start noise to ``N(0, 0.5^2)`` (the same noise relative to the input range).
Smoother, more object-like but paler pictures come from ``blur_every=2, blur_sigma=0.7,
learning_rate=15`` (also > 0.99 after 100 steps for tarantula and flamingo).

Seeded: the start and the jitter come from private generators (the global RNGs are untouched).
The model is left as found (eval mode and ``requires_grad`` restored, no ``.grad`` written).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from captionlab.vision.class_viz_defaults import CS231N_DEFAULTS, DEFAULTS
from captionlab.vision.saliency import as_targets, frozen

__all__ = [
    "CS231N_DEFAULTS",
    "DEFAULTS",
    "ClassVisualization",
    "blur_image",
    "create_class_visualization",
    "gaussian_blur",
    "jitter",
    "visualize_class",
]


def jitter(X: torch.Tensor, ox: int, oy: int) -> torch.Tensor:
    """cs231n: roll ``X`` (N, C, H, W) by ``ox`` pixels along W and ``oy`` along H (new tensor)."""
    return torch.roll(X, shifts=(oy, ox), dims=(2, 3))


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4.0
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)  # (2r + 1,)


def _symmetric_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices padding a length-``n`` axis by ``r`` as scipy's ``reflect`` (d c b a | a b c d)."""
    i = torch.arange(-r, n + r, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


def gaussian_blur(X: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of ``X`` (N, C, H, W); a new tensor.

    Matches ``scipy.ndimage.gaussian_filter1d`` along H then W (mode ``reflect``,
    truncate 4.0), which cs231n's ``blur_image`` uses.
    """
    if sigma <= 0:
        return X.clone()
    N, C, H, W = X.shape
    k = _gaussian_kernel(sigma, X.dtype, X.device)
    r = (k.numel() - 1) // 2
    y = X.index_select(2, _symmetric_index(H, r, X.device))  # (N, C, H + 2r, W)
    y = F.conv2d(y.reshape(N * C, 1, H + 2 * r, W), k.reshape(1, 1, -1, 1))
    y = y.reshape(N, C, H, W).index_select(3, _symmetric_index(W, r, X.device))
    y = F.conv2d(y.reshape(N * C, 1, H, W + 2 * r), k.reshape(1, 1, 1, -1))
    return y.reshape(N, C, H, W)


def blur_image(X: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """cs231n: blur ``X`` (N, C, H, W) IN PLACE with a Gaussian of ``sigma`` and return it.

    In place because cs231n's ``create_class_visualization`` calls ``blur_image(img.data)``
    without using the result; use :func:`gaussian_blur` for a new tensor.
    """
    with torch.no_grad():
        X.copy_(gaussian_blur(X, sigma))
    return X


@dataclass
class ClassVisualization:
    """The result: ``images`` (N, C, H, W) on the model's scale; ``target_prob`` (N,) the
    softmax probability of each target on the final image; ``checkpoint_probs`` maps an
    iteration count to the (N,) probabilities after that many steps."""

    images: torch.Tensor
    target_prob: torch.Tensor
    checkpoint_probs: dict[int, torch.Tensor] = field(default_factory=dict)


def visualize_class(
    target_y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    l2_reg: float = DEFAULTS["l2_reg"],
    learning_rate: float = DEFAULTS["learning_rate"],
    num_iterations: int = DEFAULTS["num_iterations"],
    blur_every: int = DEFAULTS["blur_every"],
    blur_sigma: float = DEFAULTS["blur_sigma"],
    max_jitter: int = DEFAULTS["max_jitter"],
    init_std: float = DEFAULTS["init_std"],
    size: int = 224,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    checkpoints: Sequence[int] = (),
    callback: Callable[[int, torch.Tensor], None] | None = None,
    show_every: int = 25,
) -> ClassVisualization:
    """Visualize one class per image; ``target_y`` is an int or a sequence (N,) of ints.

    All images of the batch share the jitter offsets; each has its own start and step norm.
    ``callback(t, images)`` is called every ``show_every`` steps and after the last one, with
    a detached copy (N, C, H, W). ``device`` defaults to the model's.
    """
    if num_iterations < 0 or blur_every < 0 or max_jitter < 0:
        raise ValueError(
            "num_iterations, blur_every and max_jitter must be >= 0, got "
            f"{num_iterations}, {blur_every}, {max_jitter}"
        )
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    N = 1 if isinstance(target_y, int) else len(torch.as_tensor(target_y).reshape(-1))
    targets = as_targets(target_y, N, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rng = random.Random(seed)
    img = (init_std * torch.randn((N, 3, size, size), generator=gen, dtype=dtype)).to(device)
    if input_range is not None:
        img = img.clamp(*input_range)
    wanted = set(checkpoints)
    recorded: dict[int, torch.Tensor] = {}
    with frozen(model):
        for t in range(1, num_iterations + 1):
            ox, oy = rng.randint(0, max_jitter), rng.randint(0, max_jitter)
            x = jitter(img, ox, oy).requires_grad_(True)
            scores = model(x)  # (N, K)
            objective = scores.gather(1, targets[:, None]).sum() - l2_reg * (x * x).sum()
            (g,) = torch.autograd.grad(objective, x)
            norms = g.reshape(N, -1).norm(dim=1).clamp_min(1e-12).reshape(N, 1, 1, 1)
            with torch.no_grad():
                img = jitter(x + learning_rate * g / norms, -ox, -oy)
                if input_range is not None:
                    img = img.clamp(*input_range)
                if blur_every and t % blur_every == 0:
                    img = gaussian_blur(img, blur_sigma)
                if t in wanted:
                    recorded[t] = model(img).softmax(dim=1).gather(1, targets[:, None])[:, 0]
            if callback is not None and (t % max(show_every, 1) == 0 or t == num_iterations):
                callback(t, img.detach().clone())
        with torch.no_grad():
            final = model(img).softmax(dim=1).gather(1, targets[:, None])[:, 0]
    return ClassVisualization(images=img.detach(), target_prob=final, checkpoint_probs=recorded)


def create_class_visualization(
    target_y: int,
    model: torch.nn.Module,
    dtype: torch.dtype = torch.float32,
    **kwargs,
) -> torch.Tensor:
    """cs231n's entry point: the visualization of ``target_y`` as a tensor (1, C, H, W).

    ``kwargs`` are those of :func:`visualize_class` (cs231n's ``l2_reg``, ``learning_rate``,
    ``num_iterations``, ``blur_every``, ``max_jitter``, ``show_every`` included). Unlike
    cs231n, the model is not converted to ``dtype``; the image is made in ``dtype``.
    """
    return visualize_class(target_y, model, dtype=dtype, **kwargs).images
