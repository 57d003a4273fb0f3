"""Saliency maps: which input pixels move a class score (cs231n assignment 3, then two refinements).

Shapes: ``N`` images, ``C`` = 3 colour channels, ``H x W`` pixels, ``K`` classes.
``X`` is a float tensor ``(N, C, H, W)`` already preprocessed for ``model``; ``y`` holds one
class index per image, ``(N,)``; ``model(X)`` returns unnormalised class scores ``(N, K)``.

* **Vanilla** (Simonyan et al. 2014; cs231n ``compute_saliency_maps``): ``|d s_y / d X|``,
  reduced over channels by the maximum, ``(N, H, W)``.
* **SmoothGrad** (Smilkov et al. 2017): the mean of ``|d s_y / d X~|`` over ``S`` noisy
  copies ``X~ = X + eps``, ``eps ~ N(0, sigma^2)``, ``sigma = noise_level * (max X - min X)``.
  The noisy copies run through the model as one batch (in chunks of ``batch_size``).
* **Integrated Gradients** (Sundararajan et al. 2017):
  ``(X - X0) * mean_k d s_y / d X (X0 + a_k (X - X0))`` with midpoints ``a_k = (k + 1/2) / M``,
  ``k = 0..M-1`` (Captum's ``riemann_middle``); the path points run as one batch.

Every method leaves the caller's objects as found (Captum's contract): the input tensor is
cloned, the model is put in eval mode with its parameters' ``requires_grad`` switched off for
the call, and both are restored afterwards; no ``.grad`` is written anywhere (gradients come
from :func:`torch.autograd.grad`). The deletion metric (Petsiuk et al. 2018) measures how
faithful a map is.

:func:`saliency_of_targets` maps several targets (``K``) of one image: vanilla gradients and
IG feed every target the same inputs, so they run the forward pass once for all targets and
backward once per target; the result equals :func:`saliency` on the image repeated ``K``
times (SmoothGrad draws other noise for every copy, so it runs exactly that).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from captionlab.vision.settings import SALIENCY_METHODS as METHODS

REDUCTIONS = ("max", "sum", "none")


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients for the duration; restores both exactly on exit.

    Gradients are then computed for the input only, which is what visualization needs and
    about a third cheaper than also computing weight gradients. Only the modules that were
    in training mode and the parameters that required gradients are touched, and each is
    given back its own flag (a caller's mix of modes survives).
    """
    training = [m for m in model.modules() if m.training]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if training:
        model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for m in training:
            m.training = True


def as_targets(y: int | Sequence[int] | torch.Tensor, N: int, device: torch.device) -> torch.Tensor:
    """Class indices as a long tensor ``(N,)``; one int is used for every image."""
    if isinstance(y, int):
        return torch.full((N,), y, dtype=torch.long, device=device)
    t = torch.as_tensor(y, dtype=torch.long, device=device).reshape(-1)
    if t.shape[0] == 1 and N > 1:
        t = t.expand(N)
    if t.shape[0] != N:
        raise ValueError(f"targets must be one per image, (N,) = ({N},), got {tuple(t.shape)}")
    return t.clone()


def _check_images(X: torch.Tensor) -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 4 or not X.is_floating_point():
        got = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X must be a float tensor (N, C, H, W), got {got}")


def _reduce(grads: torch.Tensor, reduce: str) -> torch.Tensor:
    """``(N, C, H, W)`` attributions -> ``(N, H, W)`` (``max``/``sum`` of ``|.|``) or as is."""
    if reduce == "max":
        return grads.abs().amax(dim=1)
    if reduce == "sum":
        return grads.abs().sum(dim=1)
    if reduce == "none":
        return grads
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def default_batch_size(X: torch.Tensor) -> int:
    """Images per forward/backward for SmoothGrad and IG: 5 on a CPU, 64 on a GPU.

    Measured on the 2-core CPU with EfficientNet-Lite0 at 224x224, SmoothGrad with 25
    samples took 1.8-2.0 s in batches of 5 and 4.2-5.0 s in one batch of 25 (the larger
    batch's activations overflow the caches); a GPU wants large batches.
    """
    return 5 if X.device.type == "cpu" else 64


def score_gradients(
    X: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, batch_size: int | None = None
) -> torch.Tensor:
    """``d s_{y_i} / d X_i`` for each image, ``(N, C, H, W)``, in chunks of ``batch_size``.

    Assumes the model is already :func:`frozen`; ``X`` is not modified.
    """
    N = X.shape[0]
    step = N if not batch_size else batch_size
    if step >= N:  # one batch: no copy into an output buffer
        x = X.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
        return g
    out = torch.empty_like(X)
    for lo in range(0, N, step):
        x = X[lo : lo + step].detach().clone().requires_grad_(True)
        scores = model(x)  # (n, K)
        picked = scores.gather(1, y[lo : lo + step, None]).sum()
        (g,) = torch.autograd.grad(picked, x)
        out[lo : lo + step] = g
    return out


def target_gradients(
    X: torch.Tensor, targets: torch.Tensor, model: torch.nn.Module, batch_size: int | None = None
) -> torch.Tensor:
    """``d s_{t_k} / d X_n`` for every target ``k`` and image ``n``, ``(K, N, C, H, W)``.

    The same as :func:`score_gradients` on ``X`` repeated once per target, but each chunk of
    ``batch_size`` images runs forward once and backward ``K`` times (``retain_graph``).
    ``targets`` (K,) long. Assumes the model is already :func:`frozen`.
    """
    N = X.shape[0]
    K = targets.shape[0]
    step = N if not batch_size else batch_size
    out = torch.empty((K, *X.shape), dtype=X.dtype, device=X.device)
    for lo in range(0, N, step):
        x = X[lo : lo + step].detach().clone().requires_grad_(True)
        scores = model(x)  # (n, classes): one forward for every target
        for k in range(K):
            picked = scores[:, targets[k]].sum()
            (out[k, lo : lo + step],) = torch.autograd.grad(picked, x, retain_graph=k < K - 1)
    return out


def saliency_of_targets(
    X: torch.Tensor,
    y: Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    method: str = "vanilla",
    **options,
) -> torch.Tensor:
    """Maps of ``K`` targets ``y`` (K,) of one image ``X`` (1, C, H, W), ``(K, H, W)``.

    Equals ``saliency(X.expand(K, -1, -1, -1), y, model, method, **options)`` (the tests
    hold it to that): vanilla and IG share one forward pass per input among the targets
    (:func:`target_gradients`); SmoothGrad, whose copies each draw their own noise, runs
    :func:`saliency` itself.
    """
    _check_images(X)
    if X.shape[0] != 1:
        raise ValueError(f"X must be one image (1, C, H, W), got {tuple(X.shape)}")
    targets = torch.as_tensor(y, dtype=torch.long, device=X.device).reshape(-1)
    K = targets.shape[0]
    if method not in ("vanilla", "ig") or K <= 1:
        return saliency(X.expand(K, -1, -1, -1), targets, model, method, **options)
    reduce = options.pop("reduce", "max")
    if method == "vanilla":
        if options:
            raise TypeError(f"vanilla saliency takes no options {sorted(options)}")
        with frozen(model):
            grads = target_gradients(X, targets, model)[:, 0]  # (K, C, H, W)
        return _reduce(grads, reduce)
    steps, baseline = options.pop("steps", 32), options.pop("baseline", 0.0)
    batch_size = options.pop("batch_size", None)
    if options:
        raise TypeError(f"integrated_gradients got unexpected options {sorted(options)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    path, delta = _ig_path(X, baseline, steps)  # (1, M, C, H, W), (1, C, H, W)
    step = batch_size or default_batch_size(X)
    with frozen(model):
        grads = target_gradients(path[0], targets, model, step)  # (K, M, C, H, W)
    return _reduce(delta * grads.mean(dim=1), reduce)  # (K, C, H, W) before the reduction


def compute_saliency_maps(
    X: torch.Tensor,
    y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    reduce: str = "max",
) -> torch.Tensor:
    """Vanilla gradient saliency (cs231n): ``max_c |d s_y / d X|``.

    Inputs: ``X`` (N, C, H, W) float; ``y`` (N,) class indices (or one int for all);
    ``model`` returning scores (N, K). Returns a detached tensor (N, H, W) on ``X``'s device
    (``(N, C, H, W)`` signed gradients with ``reduce="none"``).
    """
    _check_images(X)
    targets = as_targets(y, X.shape[0], X.device)
    with frozen(model):
        grads = score_gradients(X, targets, model)
    return _reduce(grads, reduce)


def noisy_copies(X: torch.Tensor, n_samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """SmoothGrad's inputs: ``n_samples`` copies of each image plus Gaussian noise of std
    ``noise_level`` times the image's value range, ``(N, S, C, H, W)``, detached.

    The noise comes from a private CPU generator seeded with ``seed`` (the global RNG is
    untouched), so the same call draws the same copies on any device.
    """
    N, C, H, W = X.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((N, n_samples, C, H, W), generator=gen, dtype=X.dtype).to(X.device)
    span = (X.amax(dim=(1, 2, 3)) - X.amin(dim=(1, 2, 3))).reshape(N, 1, 1, 1, 1)
    return X.detach()[:, None] + noise_level * span * noise


def smoothgrad(
    X: torch.Tensor,
    y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    batch_size: int | None = None,
    seed: int = 0,
    reduce: str = "max",
) -> torch.Tensor:
    """SmoothGrad: mean of ``|grad|`` over ``n_samples`` noisy copies, then reduced, (N, H, W).

    ``noise_level`` is the noise standard deviation as a fraction of each image's value range.
    The noisy copies of all images run as batches of ``batch_size`` (default:
    :func:`default_batch_size`); the noise comes from a private generator seeded with
    ``seed`` (the global RNG is untouched).
    """
    _check_images(X)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    N, C, H, W = X.shape
    S = n_samples
    targets = as_targets(y, N, X.device)
    noisy = noisy_copies(X, S, noise_level, seed).reshape(N * S, C, H, W)
    step = batch_size or default_batch_size(X)
    with frozen(model):
        grads = score_gradients(noisy, targets.repeat_interleave(S), model, step)
    mean_abs = grads.abs().reshape(N, S, C, H, W).mean(dim=1)  # (N, C, H, W)
    return _reduce(mean_abs, reduce)


def integrated_gradients(
    X: torch.Tensor,
    y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    baseline: float | torch.Tensor = 0.0,
    steps: int = 32,
    batch_size: int | None = None,
    reduce: str = "max",
) -> torch.Tensor:
    """Integrated Gradients from ``baseline`` (a number or a tensor broadcastable to ``X``).

    The ``steps`` path points of all images run as batches of ``batch_size`` (default:
    :func:`default_batch_size`). With
    ``reduce="none"`` the signed attributions ``(N, C, H, W)`` are returned; they sum to
    about ``s_y(X) - s_y(baseline)`` (completeness).
    """
    _check_images(X)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    N, C, H, W = X.shape
    M = steps
    targets = as_targets(y, N, X.device)
    path, delta = _ig_path(X, baseline, M)
    step = batch_size or default_batch_size(X)
    with frozen(model):
        grads = score_gradients(
            path.reshape(N * M, C, H, W), targets.repeat_interleave(M), model, step
        )
    attributions = delta * grads.reshape(N, M, C, H, W).mean(dim=1)  # (N, C, H, W)
    return _reduce(attributions, reduce)


def _ig_path(
    X: torch.Tensor, baseline: float | torch.Tensor, M: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG's path points ``X0 + a_k (X - X0)`` (N, M, C, H, W) and ``X - X0`` (N, C, H, W)."""
    x0 = torch.as_tensor(baseline, dtype=X.dtype, device=X.device).expand_as(X).detach()
    delta = X.detach() - x0  # (N, C, H, W)
    alphas = (torch.arange(M, dtype=X.dtype, device=X.device) + 0.5) / M  # (M,)
    path = x0[:, None] + alphas.reshape(1, M, 1, 1, 1) * delta[:, None]  # (N, M, C, H, W)
    return path, delta


def saliency(
    X: torch.Tensor,
    y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    method: str = "vanilla",
    **options,
) -> torch.Tensor:
    """Dispatch on ``method`` in :data:`METHODS`; ``options`` go to that method. (N, H, W)."""
    if method == "vanilla":
        return compute_saliency_maps(X, y, model, **options)
    if method == "smoothgrad":
        return smoothgrad(X, y, model, **options)
    if method == "ig":
        return integrated_gradients(X, y, model, **options)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def layer_cam_of_targets(
    X: torch.Tensor,
    y: Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    layer: torch.nn.Module,
    *,
    n_samples: int = 1,
    noise_level: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """LayerCAM maps of ``K`` targets ``y`` (K,) of one image ``X`` (1, C, H, W) at the output
    ``A`` (1, C', h, w) of ``layer`` (a submodule of ``model`` that runs once per forward),
    ``(K, h, w)`` at the layer's resolution.

    LayerCAM (Jiang et al. 2021), Grad-CAM with a weight per position instead of one per
    channel::

        map_k = ReLU( sum_c ReLU(d s_k / d A_c) * A_c )

    averaged over :func:`noisy_copies` of the image (SmoothGrad's ``n_samples`` copies at
    ``noise_level``; the defaults, one copy without noise, give the map of the image itself).
    Every target sees the same copies: each chunk of ``batch_size`` copies runs forward once
    and backward once per target, and each backward stops at the layer.
    """
    (cams,) = layer_cams_of_targets(X, y, model, [layer], n_samples=n_samples,
                                    noise_level=noise_level, seed=seed,
                                    batch_size=batch_size)  # fmt: skip
    return cams


def layer_cams_of_targets(
    X: torch.Tensor,
    y: Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    *,
    n_samples: int = 1,
    noise_level: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """:func:`layer_cam_of_targets` at several layers at once: one ``(K, h_i, w_i)`` map per
    layer of ``layers``, each equal to that function's at that layer. Each backward runs
    once for all the layers and stops at the shallowest."""
    _check_images(X)
    if X.shape[0] != 1:
        raise ValueError(f"X must be one image (1, C, H, W), got {tuple(X.shape)}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    targets = torch.as_tensor(y, dtype=torch.long, device=X.device).reshape(-1)
    K = targets.shape[0]
    copies = noisy_copies(X, n_samples, noise_level, seed)[0]  # (S, C, H, W)
    step = batch_size or default_batch_size(X)
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [
        layer.register_forward_hook(lambda module, inputs, out, seen=seen: seen.append(out))
        for layer, seen in zip(layers, outputs, strict=True)
    ]
    totals: list[torch.Tensor] | None = None
    try:
        with frozen(model):
            for lo in range(0, n_samples, step):
                # the input needs a gradient so that A is in the graph (parameters are frozen)
                x = copies[lo : lo + step].clone().requires_grad_(True)
                for seen in outputs:
                    seen.clear()
                scores = model(x)  # (n, classes)
                for seen in outputs:
                    if len(seen) != 1:
                        raise ValueError(f"layer must run once in the model's forward pass, "
                                         f"it ran {len(seen)} times")  # fmt: skip
                As = [seen[0] for seen in outputs]  # each (n, C_i, h_i, w_i)
                if totals is None:
                    totals = [A.new_zeros((K, *A.shape[2:])) for A in As]
                for k in range(K):
                    Gs = torch.autograd.grad(
                        scores[:, targets[k]].sum(), As, retain_graph=k < K - 1
                    )
                    for total, G, A in zip(totals, Gs, As, strict=True):
                        cam = (G.clamp_min(0) * A.detach()).sum(dim=1).clamp_min(0)  # (n, h, w)
                        total[k] += cam.sum(dim=0)
    finally:
        for handle in handles:
            handle.remove()
    assert totals is not None
    return [total / n_samples for total in totals]


@torch.no_grad()
def deletion_curve(
    X: torch.Tensor,
    y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    maps: torch.Tensor,
    *,
    n_steps: int = 16,
    fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion metric: delete the most salient pixels first and follow the target probability.

    ``maps`` (N, H, W) ranks the pixels (ties broken by position). At fractions
    ``0, 1/n_steps, ..., 1`` of the pixels set to ``fill`` (all channels), the softmax
    probability of ``y`` is measured. Returns ``(probs (N, n_steps + 1), auc (N,))`` where
    ``auc`` is the trapezoid area under the curve over ``[0, 1]``; lower means the map found
    the pixels the model relies on. The model runs in eval mode; nothing is modified.
    """
    _check_images(X)
    N, _, H, W = X.shape
    if maps.shape != (N, H, W):
        raise ValueError(f"maps must be (N, H, W) = {(N, H, W)}, got {tuple(maps.shape)}")
    targets = as_targets(y, N, X.device)
    P = H * W
    order = maps.reshape(N, P).argsort(dim=1, descending=True, stable=True)  # (N, P)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=X.device).expand(N, P))
    counts = [round(P * k / n_steps) for k in range(n_steps + 1)]
    probs = torch.empty((N, n_steps + 1), dtype=X.dtype, device=X.device)
    was_training = model.training
    model.eval()
    try:
        for i in range(N):
            keep = rank[i][None, :] >= torch.tensor(counts, device=X.device)[:, None]  # (T, P)
            keep = keep.reshape(-1, 1, H, W).to(X.dtype)
            batch = X[i : i + 1] * keep + fill * (1 - keep)  # (T, C, H, W)
            probs[i] = model(batch).softmax(dim=1)[:, targets[i]]
    finally:
        model.train(was_training)
    auc = torch.trapezoid(probs, dx=1.0 / n_steps, dim=1)
    return probs, auc
