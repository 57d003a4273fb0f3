"""Fooling images on a tiny CNN: they fool, stay in budget, and leave the caller's objects."""

import pytest
import torch
from test_saliency import assert_unchanged, caller_state, images, snapshot, tiny_cnn

from captionlab.vision import fooling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANGE = (-1.0, 1.0)  # the tiny model's inputs: pixels / 127.5 - 1, so 2 units per 255 levels


def targets_not_predicted(model, X):
    with torch.no_grad():
        pred = model(X).argmax(1)
    return (pred + 1) % 5, pred


def test_make_fooling_image_flips_to_target_and_leaves_x():
    model, X = tiny_cnn(), images()
    target, pred = targets_not_predicted(model, X)
    X_before = X.clone()
    X_fool = fooling.make_fooling_image(X, target, model, learning_rate=1.0, max_iter=200)
    assert X_fool.shape == X.shape
    assert torch.equal(X, X_before)
    with torch.no_grad():
        assert torch.equal(model(X_fool).argmax(1), target)
    assert not torch.equal(target, pred)


def test_fool_reports_consistent_numbers():
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    res = fooling.fool(X, target, model, learning_rate=0.5, max_iter=300, input_range=RANGE)
    assert res.success.all()
    assert (res.iterations >= 1).all() and (res.iterations <= 300).all()
    delta = (res.images - X).reshape(3, -1) / 2.0
    assert torch.allclose(res.l2, delta.norm(dim=1), atol=1e-6)
    assert torch.allclose(res.linf, delta.abs().amax(dim=1), atol=1e-6)
    with torch.no_grad():
        p = model(res.images).softmax(1)[torch.arange(3), target]
    assert torch.allclose(res.target_prob, p, atol=1e-6)
    assert res.images.min() >= -1.0 and res.images.max() <= 1.0
    summary = res.summary()
    assert summary["success"] == [True, True, True] and len(summary["l2"]) == 3
    # each step has L2 length lr, so the distance is at most lr * iterations (in model units)
    assert ((res.l2 * 2.0) <= 0.5 * res.iterations + 1e-5).all()


def test_image_already_of_target_class_is_untouched():
    model, X = tiny_cnn(), images()
    _, pred = targets_not_predicted(model, X)
    res = fooling.fool(X, pred, model)
    assert res.success.all()
    assert (res.iterations == 0).all()
    assert torch.equal(res.images, X)


def test_stops_at_step_cap():
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    res = fooling.fool(X, target, model, learning_rate=1e-4, max_iter=3)
    assert (res.iterations == 3).all()
    assert not res.success.any()


@pytest.mark.parametrize("attack", ["fool", "pgd"])
def test_attacks_leave_callers_objects_as_found(attack):
    model = tiny_cnn()
    X = caller_state(model, images())
    before = snapshot(model, X)
    if attack == "fool":
        fooling.fool(X, [1, 2, 3], model, max_iter=5)
    else:
        fooling.pgd_attack(X, [1, 2, 3], model, epsilon=4 / 255, max_iter=5, input_range=RANGE)
    assert_unchanged(before, model, X)


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_pgd_stays_in_budget_and_range(eps):
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    res = fooling.pgd_attack(X, target, model, epsilon=eps, max_iter=20, input_range=RANGE)
    assert (res.linf <= eps + 1e-6).all()
    assert ((res.images - X).abs().max() <= eps * 2.0 + 1e-6).item()
    assert res.images.min() >= -1.0 and res.images.max() <= 1.0


def test_pgd_succeeds_with_big_budget_and_zero_budget_changes_nothing():
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    big = fooling.pgd_attack(X, target, model, epsilon=1.0, step_size=0.05, max_iter=200)
    assert big.success.all()
    none = fooling.pgd_attack(X, target, model, epsilon=0.0, max_iter=5)
    assert torch.equal(none.images, X)
    assert not none.success.any()


def test_pgd_without_early_stop_runs_all_steps_and_raises_target_prob():
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    early = fooling.pgd_attack(X, target, model, epsilon=0.5, max_iter=30)
    full = fooling.pgd_attack(X, target, model, epsilon=0.5, max_iter=30, stop_on_success=False)
    assert (full.iterations == 30).all()
    assert (full.target_prob >= early.target_prob - 1e-6).all()


def test_bad_arguments():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="input_range must be"):
        fooling.pgd_attack(images(), 0, model, input_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="epsilon and max_iter must be >= 0"):
        fooling.pgd_attack(images(), 0, model, epsilon=-1.0)


def test_stop_prob_keeps_going_past_the_flip():
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    flip = fooling.fool(X, target, model, learning_rate=0.2, max_iter=300)
    sure = fooling.fool(X, target, model, learning_rate=0.2, max_iter=300, stop_prob=0.95)
    assert sure.success.all() and (sure.target_prob >= 0.95).all()
    assert (sure.iterations > flip.iterations).all()
    kw = dict(epsilon=1.0, step_size=0.05, max_iter=200)
    flip = fooling.pgd_attack(X, target, model, **kw)
    sure = fooling.pgd_attack(X, target, model, stop_prob=0.6, **kw)
    assert (sure.target_prob >= 0.6).all() and (sure.iterations > flip.iterations).all()


@pytest.mark.parametrize("attack", ["fool", "pgd"])
def test_batch_equals_one_image_at_a_time(attack):
    """Images finish at different steps; the shrinking batch must not mix them up."""
    model, X = tiny_cnn(), images()
    target, _ = targets_not_predicted(model, X)
    run = {
        "fool": lambda x, t: fooling.fool(x, t, model, learning_rate=0.3, max_iter=100),
        "pgd": lambda x, t: fooling.pgd_attack(
            x, t, model, epsilon=1.0, step_size=0.05, max_iter=200
        ),
    }[attack]
    batch = run(X, target)
    assert len(set(batch.iterations.tolist())) > 1  # they did finish at different steps
    for i in range(3):
        one = run(X[i : i + 1], target[i : i + 1])
        assert torch.allclose(one.images[0], batch.images[i], atol=1e-5)
        assert one.iterations[0] == batch.iterations[i]
