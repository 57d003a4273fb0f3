"""Class visualization: cs231n's helpers, seeding, and gradient ascent on a tiny CNN."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d
from test_saliency import snapshot, tiny_cnn

from captionlab.vision import class_viz as cv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cs231n_jitter(X, ox, oy):
    """The assignment's version, with torch.cat."""
    if ox != 0:
        X = torch.cat([X[:, :, :, -ox:], X[:, :, :, :-ox]], dim=3)
    if oy != 0:
        X = torch.cat([X[:, :, -oy:], X[:, :, :-oy]], dim=2)
    return X


@pytest.mark.parametrize(("ox", "oy"), [(0, 0), (3, 0), (0, 5), (7, 2)])
def test_jitter_matches_cs231n_and_inverts(ox, oy):
    X = torch.arange(2 * 3 * 9 * 10, dtype=torch.float32).reshape(2, 3, 9, 10)
    out = cv.jitter(X, ox, oy)
    assert torch.equal(out, cs231n_jitter(X, ox, oy))
    assert torch.equal(cv.jitter(out, -ox, -oy), X)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_matches_scipy_and_is_in_place(sigma):
    X = torch.rand((2, 3, 11, 13), generator=torch.Generator().manual_seed(0))
    expected = gaussian_filter1d(X.numpy(), sigma, axis=2)
    expected = gaussian_filter1d(expected, sigma, axis=3)
    assert np.allclose(cv.gaussian_blur(X, sigma).numpy(), expected, atol=1e-6)
    Y = X.clone()
    assert cv.blur_image(Y, sigma=sigma) is Y
    assert np.allclose(Y.numpy(), expected, atol=1e-6)


def small_run(model, **kw):
    options = dict(num_iterations=30, size=16, learning_rate=3.0, max_jitter=2, seed=0)
    options.update(kw)
    return cv.visualize_class([1, 3], model, **options)


def test_visualization_raises_target_probability_and_is_seeded():
    model = tiny_cnn()
    start = small_run(model, num_iterations=0)
    res = small_run(model, input_range=(-1.0, 1.0), checkpoints=(10, 30))
    assert res.images.shape == (2, 3, 16, 16)
    assert (res.target_prob > 5 * start.target_prob).all()
    assert (res.checkpoint_probs[10] < res.checkpoint_probs[30]).all()
    assert res.images.min() >= -1.0 and res.images.max() <= 1.0
    assert sorted(res.checkpoint_probs) == [10, 30]
    assert torch.allclose(res.checkpoint_probs[30], res.target_prob)
    again = small_run(model, input_range=(-1.0, 1.0))
    assert torch.equal(again.images, res.images)
    other = small_run(model, input_range=(-1.0, 1.0), seed=1)
    assert not torch.equal(other.images, res.images)


def test_leaves_model_and_global_rngs_alone():
    model = tiny_cnn().train()
    before = snapshot(model, torch.zeros(1))
    torch_state = torch.random.get_rng_state()
    seen = []
    small_run(model, num_iterations=5, show_every=2, callback=lambda t, im: seen.append(t))
    assert seen == [2, 4, 5]
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert model.training and before["flags"] == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


def test_create_class_visualization_cs231n_signature():
    model = tiny_cnn()
    out = cv.create_class_visualization(
        2, model, torch.float32, num_iterations=3, size=16, show_every=25, l2_reg=1e-3
    )
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    assert set(cv.CS231N_DEFAULTS) == set(cv.DEFAULTS)
    assert cv.CS231N_DEFAULTS["learning_rate"] == 25.0 and cv.CS231N_DEFAULTS["l2_reg"] == 1e-3


def test_negative_iterations_rejected():
    with pytest.raises(ValueError, match="num_iterations"):
        cv.visualize_class(0, tiny_cnn(), num_iterations=-1)
