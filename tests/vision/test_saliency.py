"""Saliency maps on a tiny CNN: against Captum, a hand reference, and the caller's objects."""

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from captionlab.vision import saliency as sal

K = 5  # classes of the tiny model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cnn(seed: int = 0, classes: int = K) -> torch.nn.Module:
    """A small classifier with batch-norm and dropout, so that eval mode matters."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.Softplus(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
        torch.nn.Softplus(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(32, classes),
    )
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
        model[-1].weight.mul_(20.0)  # scores that can reach confident probabilities
    return model.eval()


def images(N: int = 3, H: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((N, 3, H, H), generator=g) * 2 - 1


def reference_saliency(X, y, model):
    """cs231n's loop: one image at a time, .backward(), max |grad| over channels."""
    model.eval()
    out = []
    for i in range(X.shape[0]):
        x = X[i : i + 1].clone().requires_grad_(True)
        model(x)[0, y[i]].backward()
        out.append(x.grad.abs().amax(dim=1)[0])
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def snapshot(model, X):
    return {
        "training": model.training,
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "X": X.detach().clone(),
        "X_requires_grad": X.requires_grad,
        "X_grad": None if X.grad is None else X.grad.clone(),
    }


def assert_unchanged(before, model, X):
    after = snapshot(model, X)
    assert after["training"] == before["training"]
    assert after["flags"] == before["flags"]
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(after["X"], before["X"])
    assert after["X_requires_grad"] == before["X_requires_grad"]
    assert (after["X_grad"] is None) == (before["X_grad"] is None)
    if before["X_grad"] is not None:
        assert torch.equal(after["X_grad"], before["X_grad"])


def caller_state(model, X):
    """A caller in the middle of training: train mode, one frozen layer, stale grads."""
    model.train()
    model[0].bias.requires_grad_(False)
    model[-1].weight.grad = torch.full_like(model[-1].weight, 0.5)
    X = X.clone().requires_grad_(True)
    X.grad = torch.full_like(X, 7.0)
    return X


def test_vanilla_matches_captum_and_reference():
    model, X, y = tiny_cnn(), images(), torch.tensor([0, 3, 4])
    maps = sal.compute_saliency_maps(X, y, model)
    assert maps.shape == (3, 12, 12)
    assert maps.requires_grad is False
    captum = (
        Saliency(model).attribute(X.clone().requires_grad_(True), target=y, abs=True).amax(dim=1)
    )
    assert torch.allclose(maps, captum, atol=1e-6, rtol=0)
    assert torch.allclose(maps, reference_saliency(X, y, model), atol=1e-6, rtol=0)
    assert maps.abs().max() > 0


@pytest.mark.parametrize("method", sal.METHODS)
def test_methods_leave_callers_objects_as_found(method):
    model = tiny_cnn()
    X = caller_state(model, images())
    before = snapshot(model, X)
    maps = sal.saliency(X, [1, 2, 0], model, method=method)
    assert maps.shape == (3, 12, 12)
    assert_unchanged(before, model, X)


def test_eval_mode_is_used_even_when_caller_trains():
    model, X, y = tiny_cnn(), images(), torch.tensor([0, 1, 2])
    expected = sal.compute_saliency_maps(X, y, model)
    model.train()
    assert torch.equal(sal.compute_saliency_maps(X, y, model), expected)
    assert model.training


def test_one_int_target_is_broadcast_and_reduce_options():
    model, X = tiny_cnn(), images()
    a = sal.compute_saliency_maps(X, 2, model)
    b = sal.compute_saliency_maps(X, [2, 2, 2], model)
    assert torch.equal(a, b)
    raw = sal.compute_saliency_maps(X, 2, model, reduce="none")
    assert raw.shape == X.shape
    assert (raw < 0).any()
    assert torch.allclose(sal.compute_saliency_maps(X, 2, model, reduce="sum"), raw.abs().sum(1))


def test_smoothgrad_seeded_batched_and_reduces_to_vanilla_without_noise():
    model, X, y = tiny_cnn(), images(), torch.tensor([4, 0, 1])
    a = sal.smoothgrad(X, y, model, n_samples=10, batch_size=25, seed=3)
    b = sal.smoothgrad(X, y, model, n_samples=10, batch_size=4, seed=3)
    c = sal.smoothgrad(X, y, model, n_samples=10, seed=4)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, sal.smoothgrad(X, y, model, n_samples=10, seed=3), atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)
    assert sal.default_batch_size(X) == 5
    state = torch.random.get_rng_state()
    quiet = sal.smoothgrad(X, y, model, n_samples=4, noise_level=0.0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(quiet, sal.compute_saliency_maps(X, y, model), atol=1e-6)


def test_smoothgrad_is_mean_of_abs_gradients_of_noisy_copies():
    model, X = tiny_cnn(), images(N=1)
    S, level = 6, 0.2
    noise = torch.randn((1, S, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    span = X.max() - X.min()
    noisy = (X[:, None] + level * span * noise)[0]
    raw = sal.smoothgrad(X, 1, model, n_samples=S, noise_level=level, reduce="none")
    grads = []
    for i in range(S):
        x = noisy[i : i + 1].clone().requires_grad_(True)
        model(x)[0, 1].backward()
        grads.append(x.grad.abs())
    assert torch.allclose(raw, torch.cat(grads).mean(0, keepdim=True), atol=1e-6)


def test_integrated_gradients_matches_captum_and_completeness():
    model, X, y = tiny_cnn(), images(N=2), torch.tensor([3, 1])
    ours = sal.integrated_gradients(X, y, model, steps=16, batch_size=7, reduce="none")
    ig = IntegratedGradients(model)
    theirs = ig.attribute(X.clone(), target=y, n_steps=16, method="riemann_middle")
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)
    fine = sal.integrated_gradients(X, y, model, steps=256, reduce="none")
    with torch.no_grad():
        gap = model(X).gather(1, y[:, None])[:, 0] - model(torch.zeros_like(X))[:, y].diag()
    assert torch.allclose(fine.sum(dim=(1, 2, 3)), gap, atol=1e-3, rtol=1e-3)


def test_integrated_gradients_tensor_baseline():
    model, X = tiny_cnn(), images(N=1)
    base = torch.full_like(X, 0.3)
    ours = sal.integrated_gradients(X, 0, model, baseline=base, steps=8, reduce="none")
    theirs = IntegratedGradients(model).attribute(
        X, baselines=base, target=0, n_steps=8, method="riemann_middle"
    )
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(ours, sal.integrated_gradients(X, 0, model, steps=8, reduce="none"))


class OnePatch(torch.nn.Module):
    """Class 0's score is the sum of the top-left 4x4 patch: only those pixels matter."""

    def forward(self, x):
        s = x[:, :, :4, :4].sum(dim=(1, 2, 3)) * 3.0
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_curve_rewards_the_right_pixels():
    model = OnePatch()
    X = torch.ones((1, 3, 12, 12))
    good = torch.zeros((1, 12, 12))
    good[:, :4, :4] = 1.0
    probs, auc_good = sal.deletion_curve(X, 0, model, good, n_steps=12)
    _, auc_bad = sal.deletion_curve(X, 0, model, 1.0 - good, n_steps=12)
    assert probs.shape == (1, 13)
    with torch.no_grad():
        assert torch.isclose(probs[0, 0], model(X).softmax(1)[0, 0])
    assert torch.isclose(probs[0, -1], torch.tensor(0.5))  # all pixels filled with 0
    assert auc_good.item() < auc_bad.item() - 0.3


def test_errors_name_what_was_expected():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"X must be a float tensor \(N, C, H, W\), got \(3, 12\)"):
        sal.compute_saliency_maps(torch.zeros(3, 12), 0, model)
    with pytest.raises(ValueError, match="targets must be one per image"):
        sal.compute_saliency_maps(images(), [0, 1], model)
    with pytest.raises(ValueError, match="method must be one of"):
        sal.saliency(images(), 0, model, method="gradcam")
    with pytest.raises(ValueError, match="reduce must be one of"):
        sal.compute_saliency_maps(images(), 0, model, reduce="mean")


def test_mixed_train_eval_modes_survive():
    """A caller with a frozen-BN recipe (model in train mode, BN in eval) gets it back."""
    model = tiny_cnn().train()
    model[1].eval()
    sal.smoothgrad(images(), 0, model, n_samples=2)
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize(
    "method, options",
    [("vanilla", {}), ("ig", {"steps": 6, "batch_size": 4, "baseline": -0.5}),
     ("ig", {"steps": 5}), ("smoothgrad", {"n_samples": 3, "batch_size": 2, "seed": 4})],
)  # fmt: skip
def test_maps_of_several_targets_equal_the_image_repeated_per_target(method, options):
    """saliency_of_targets shares one forward pass among the targets of one image (vanilla,
    IG): the maps equal saliency() on the image repeated once per target, in float64."""
    model, X = tiny_cnn().double(), images(N=1).double()
    y = torch.tensor([3, 1, 3, 0])
    before = snapshot(model, X)
    for reduce in ("max", "none"):
        ours = sal.saliency_of_targets(X, y, model, method, reduce=reduce, **options)
        theirs = sal.saliency(X.expand(4, -1, -1, -1), y, model, method, reduce=reduce, **options)
        assert ours.shape == theirs.shape and theirs.abs().amax() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12 * theirs.abs().amax())
    assert not torch.allclose(ours[0], ours[1])  # the targets' maps differ
    assert_unchanged(before, model, X)
    with pytest.raises(
        ValueError, match=r"X must be one image \(1, C, H, W\), got \(2, 3, 12, 12\)"
    ):
        sal.saliency_of_targets(images(N=2), y, model, method, **options)


# ----------------------------------------------------------------------------- LayerCAM
def test_layer_cam_matches_layercam_from_captums_layer_gradients():
    """LayerCAM = ReLU(sum_c ReLU(dS/dA_c) * A_c) at the layer, one map per target; A and its
    gradient taken independently by Captum's layer attributions."""
    from captum.attr import LayerActivation, LayerGradientXActivation

    model, X = tiny_cnn(), images(N=1)
    layer = model[3]  # the stride-2 conv: 6 x 6 maps
    targets = [0, 3, 4]
    ours = sal.layer_cam_of_targets(X, targets, model, layer)
    assert ours.shape == (3, 6, 6) and not ours.requires_grad
    A = LayerActivation(model, layer).attribute(X)  # (1, 8, 6, 6)
    grads = LayerGradientXActivation(model, layer, multiply_by_inputs=False)
    for k, t in enumerate(targets):
        G = grads.attribute(X, target=t)  # the layer's gradient alone
        expected = (G.clamp_min(0) * A).sum(dim=1).clamp_min(0)[0]
        assert expected.max() > 0
        torch.testing.assert_close(ours[k], expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours[0], ours[1])  # the targets' maps differ


def test_layer_cam_over_noisy_copies_is_the_mean_of_their_maps_in_any_batches():
    model, X = tiny_cnn(), images(N=1)
    layer, targets = model[3], [1, 2]
    copies = sal.noisy_copies(X, 4, 0.2, seed=3)[0]  # (4, 3, 12, 12): SmoothGrad's copies
    assert not torch.equal(copies[0], copies[1])
    each = torch.stack([sal.layer_cam_of_targets(c[None], targets, model, layer) for c in copies])
    for batch_size in (1, 3, None):
        got = sal.layer_cam_of_targets(X, targets, model, layer, n_samples=4, noise_level=0.2,
                                       seed=3, batch_size=batch_size)  # fmt: skip
        torch.testing.assert_close(got, each.mean(dim=0), rtol=1e-5, atol=1e-7)
    no_noise = sal.layer_cam_of_targets(X, targets, model, layer, n_samples=3)
    torch.testing.assert_close(no_noise, sal.layer_cam_of_targets(X, targets, model, layer))


def test_layer_cams_at_several_layers_equal_each_layers_own():
    """One pass for several layers gives each layer's map as :func:`layer_cam_of_targets`
    would alone (same noisy copies), and removes every hook."""
    model, X = tiny_cnn(), images(N=1)
    layers, targets = [model[0], model[3]], [1, 2, 4]
    options = {"n_samples": 3, "noise_level": 0.2, "seed": 5, "batch_size": 2}
    maps = sal.layer_cams_of_targets(X, targets, model, layers, **options)
    assert [tuple(m.shape) for m in maps] == [(3, 12, 12), (3, 6, 6)]
    for layer, got in zip(layers, maps, strict=True):
        alone = sal.layer_cam_of_targets(X, targets, model, layer, **options)
        torch.testing.assert_close(got, alone, rtol=1e-6, atol=1e-8)
        assert not layer._forward_hooks
    with pytest.raises(ValueError, match="at least one layer"):
        sal.layer_cams_of_targets(X, targets, model, [])


def test_layer_cam_leaves_callers_objects_as_found_and_removes_its_hook():
    model = tiny_cnn()
    X = caller_state(model, images(N=1))
    before = snapshot(model, X)
    sal.layer_cam_of_targets(X, [1, 4], model, model[3], n_samples=2, noise_level=0.1)
    assert_unchanged(before, model, X)
    assert not model[3]._forward_hooks
    stranger = torch.nn.Conv2d(3, 3, 1)  # not in the model: it never runs
    with pytest.raises(ValueError, match="layer must run once in the model's forward pass, "
                       "it ran 0 times"):  # fmt: skip
        sal.layer_cam_of_targets(X, [1], model, stranger)
    assert not stranger._forward_hooks
    assert_unchanged(before, model, X)
    with pytest.raises(ValueError, match=r"X must be one image \(1, C, H, W\)"):
        sal.layer_cam_of_targets(images(N=2), [1], model, model[3])
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        sal.layer_cam_of_targets(X, [1], model, model[3], n_samples=0)
