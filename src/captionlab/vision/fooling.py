"""Fooling (adversarial) images: small changes that make a classifier say a chosen class.

Shapes: ``N`` images, ``C`` channels, ``H x W`` pixels, ``K`` classes; ``X`` (N, C, H, W) is
preprocessed for ``model``, which returns scores (N, K).

* :func:`make_fooling_image` is cs231n's attack: gradient ascent on the target score with
  the step normalised to length ``learning_rate``,
  ``X <- X + lr * g / ||g||_2`` with ``g = d s_target / d X``, until the model predicts the
  target or ``max_iter`` steps are spent. Unbounded: it stops at the first flip.
* :func:`pgd_attack` is the bounded attack users expect: targeted projected gradient descent
  on the cross-entropy of the target with an L-infinity budget,
  ``X <- clip(Proj_eps(X - alpha * sign(d CE / d X)))``.

Budgets and step sizes are in pixel units divided by 255 (``epsilon=8/255`` means eight grey
levels); ``input_range = (lo, hi)``, the preprocessed values of pixels 0 and 255, maps them to
the model's scale (multiplied by ``hi - lo``) and bounds the images. ``None`` means the model
takes pixels scaled to ``[0, 1]``.

Both attacks run the batch together; an image stops changing once it is fooled. The caller's
model and tensors are left as found (see :func:`captionlab.vision.saliency.frozen`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captionlab.vision.saliency import _check_images, as_targets, frozen


@dataclass
class FoolingResult:
    """What an attack produced, one entry per image.

    ``images`` (N, C, H, W) on the model's scale; ``success`` (N,) bool: the model predicts
    the target; ``iterations`` (N,) steps used; ``target_prob`` (N,) softmax probability of
    the target; ``l2`` and ``linf`` (N,) norms of ``images - X`` in pixel units / 255.
    """

    images: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    target_prob: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor

    def summary(self) -> dict:
        """JSON-able lists of the per-image numbers (not the images)."""
        return {
            "success": [bool(v) for v in self.success.tolist()],
            "iterations": [int(v) for v in self.iterations.tolist()],
            "target_prob": [float(v) for v in self.target_prob.tolist()],
            "l2": [float(v) for v in self.l2.tolist()],
            "linf": [float(v) for v in self.linf.tolist()],
        }


def _scale(input_range: tuple[float, float] | None) -> float:
    """Model-scale units per (pixel / 255)."""
    if input_range is None:
        return 1.0
    lo, hi = input_range
    if not hi > lo:
        raise ValueError(f"input_range must be (lo, hi) with hi > lo, got {input_range}")
    return float(hi - lo)


def _done(scores: torch.Tensor, targets: torch.Tensor, stop_prob: float | None) -> torch.Tensor:
    """(N,) bool: predicted as the target, with probability >= ``stop_prob`` if given."""
    done = scores.argmax(dim=1) == targets
    if stop_prob is not None:
        done &= scores.softmax(dim=1).gather(1, targets[:, None])[:, 0] >= stop_prob
    return done


def _run(X, targets, model, max_iter, step, stop_prob, *, early_stop, project=None):
    """The attack loop shared by both attacks; returns (images (N, C, H, W), iterations (N,)).

    Only the images still going run through the model each step (a fooled image is frozen,
    so the batch shrinks as images succeed). ``step(x, scores, t)`` returns the next images
    (n, C, H, W) for the subset ``x`` with scores (n, K) and targets ``t`` (n,);
    ``project(x_new, x_start)`` maps them back into the budget.
    """
    N = X.shape[0]
    X_adv = X.detach().clone()
    iterations = torch.zeros(N, dtype=torch.long)
    going = torch.ones(N, dtype=torch.bool, device=X.device)
    with frozen(model):
        for _ in range(max_iter):
            idx = going.nonzero()[:, 0]
            x = X_adv[idx].requires_grad_(True)  # (n, C, H, W), a copy
            scores = model(x)  # (n, K)
            keep = torch.ones(len(idx), dtype=torch.bool, device=X.device)
            if early_stop:
                keep = ~_done(scores, targets[idx], stop_prob)  # (n,)
                going[idx] = keep
                if not bool(keep.any()):
                    break
            # rows are independent (eval mode), so the rows that just finished are dropped here
            x_new = step(x, scores, targets[idx])[keep]
            idx = idx[keep]
            if project is not None:
                x_new = project(x_new, X[idx].detach())
            X_adv[idx] = x_new.detach()
            iterations[idx.cpu()] += 1
    return X_adv, iterations


def _finish(
    X: torch.Tensor,
    X_adv: torch.Tensor,
    targets: torch.Tensor,
    model: torch.nn.Module,
    iterations: torch.Tensor,
    scale: float,
) -> FoolingResult:
    with torch.no_grad():
        probs = model(X_adv).softmax(dim=1)  # (N, K)
    N = X.shape[0]
    delta = (X_adv - X).reshape(N, -1) / scale  # pixel units / 255
    return FoolingResult(
        images=X_adv.detach(),
        success=probs.argmax(dim=1) == targets,
        iterations=iterations,
        target_prob=probs.gather(1, targets[:, None])[:, 0],
        l2=delta.norm(dim=1),
        linf=delta.abs().amax(dim=1),
    )


def fool(
    X: torch.Tensor,
    target_y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    learning_rate: float = 1.0,
    max_iter: int = 100,
    input_range: tuple[float, float] | None = None,
    stop_prob: float | None = None,
) -> FoolingResult:
    """cs231n's normalised-gradient attack on a batch; see the module docstring.

    ``learning_rate`` is the L2 length of each step on the model's scale. With
    ``input_range`` given, images are clamped to it after each step (cs231n does not clamp).
    An image is done when the model predicts the target (cs231n) and, if ``stop_prob`` is
    given, gives it at least that probability (a margin that survives rounding to pixels).
    """
    _check_images(X)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    N = X.shape[0]
    targets = as_targets(target_y, N, X.device)
    scale = _scale(input_range)

    def step(x, scores, t):  # x (n, C, H, W) of the images still going
        (g,) = torch.autograd.grad(scores.gather(1, t[:, None]).sum(), x)
        norms = g.reshape(len(t), -1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
        x_new = x.detach() + learning_rate * g / norms
        return x_new if input_range is None else x_new.clamp(*input_range)

    X_adv, iterations = _run(X, targets, model, max_iter, step, stop_prob, early_stop=True)
    return _finish(X, X_adv, targets, model, iterations, scale)


def make_fooling_image(
    X: torch.Tensor,
    target_y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    learning_rate: float = 1.0,
    max_iter: int = 100,
    input_range: tuple[float, float] | None = None,
    stop_prob: float | None = None,
) -> torch.Tensor:
    """cs231n: ``X`` (N, C, H, W) -> fooling images (N, C, H, W) classified as ``target_y``.

    The same attack as :func:`fool`, returning only the images; ``X`` is not modified.
    """
    return fool(
        X,
        target_y,
        model,
        learning_rate=learning_rate,
        max_iter=max_iter,
        input_range=input_range,
        stop_prob=stop_prob,
    ).images


def pgd_attack(
    X: torch.Tensor,
    target_y: int | Sequence[int] | torch.Tensor,
    model: torch.nn.Module,
    *,
    epsilon: float = 8 / 255,
    step_size: float | None = None,
    max_iter: int = 50,
    input_range: tuple[float, float] | None = None,
    stop_on_success: bool = True,
    stop_prob: float | None = None,
) -> FoolingResult:
    """Targeted L-infinity PGD: ``max |X_adv - X| <= epsilon`` (pixel units / 255).

    ``step_size`` defaults to ``epsilon / 4`` (also in pixel units / 255). Starts at ``X``
    (no random start, so results are deterministic). With ``stop_on_success`` an image stops
    changing once the model predicts the target (with probability >= ``stop_prob`` if given);
    otherwise all ``max_iter`` steps run.
    """
    _check_images(X)
    if epsilon < 0 or max_iter < 0:
        raise ValueError(f"epsilon and max_iter must be >= 0, got {epsilon} and {max_iter}")
    N = X.shape[0]
    targets = as_targets(target_y, N, X.device)
    scale = _scale(input_range)
    eps = epsilon * scale
    alpha = (epsilon / 4 if step_size is None else step_size) * scale
    X0 = X.detach()

    def step(x, scores, t):
        loss = torch.nn.functional.cross_entropy(scores, t, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        x_new = x.detach() - alpha * g.sign()
        return x_new if input_range is None else x_new.clamp(*input_range)

    def project(x_new, x_start):  # onto the L-inf ball around the original images
        x_new = x_start + (x_new - x_start).clamp(-eps, eps)
        return x_new if input_range is None else x_new.clamp(*input_range)

    X_adv, iterations = _run(
        X0, targets, model, max_iter, step, stop_prob, early_stop=stop_on_success, project=project
    )
    return _finish(X0, X_adv, targets, model, iterations, scale)
