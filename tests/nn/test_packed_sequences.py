"""Recurrences over sequences of different lengths (``lengths=``, longest row first).

A row's steps past its length are not computed: its hidden states there are 0, the
gradients arriving there are ignored, and everything else equals the plain recurrence run
over all steps with those gradients set to zero. Checked for every layer, both dtypes and
both kernel sets, at a shape where the kernels run on one thread and one where they run on
all of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from captionlab import nn
from captionlab.nn.functional import Lengths

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def _args(layer, N, T, H, dtype, seed=0):
    G = GATES[layer]
    rng = np.random.default_rng(seed)
    xa = rng.standard_normal((N, T, G * H))
    h0 = rng.standard_normal((N, H))
    Wh = rng.standard_normal((H, G * H)) / np.sqrt(H)
    b = rng.standard_normal(G * H) * 0.5
    extra = [rng.standard_normal(G * H) * 0.5] if layer == "gru" else []
    dh = rng.standard_normal((N, T, H))
    return [a.astype(dtype) for a in (xa, h0, Wh, b, *extra)], dh.astype(dtype)


def _lengths(N, T, seed):
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(0, T + 1, size=N))[::-1].copy()
    lengths[0] = T  # one full row, and one empty row, whatever the draw
    lengths[-1] = 0
    return lengths


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("N", "T", "H"), [(6, 5, 7), (40, 6, 349)])
@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_packed_recurrence_equals_the_plain_one_on_the_real_steps(layer, N, T, H, dtype, kernels):
    if kernels == "numba":
        pytest.importorskip("numba")
    args, dh = _args(layer, N, T, H, dtype)
    lengths = _lengths(N, T, seed=N)
    real = (np.arange(T)[None, :] < lengths[:, None])[..., None]  # (N, T, 1)
    fwd = getattr(nn, f"{layer}_recurrence_forward")
    bwd = getattr(nn, f"{layer}_recurrence_backward")
    with nn.use_kernels(kernels):
        h, cache = fwd(*args)
        ref = bwd(dh * real, cache)  # the plain recurrence, no gradient past the lengths
        hp, cachep = fwd(*args, lengths=lengths)
        noisy = dh + 1e3 * ~real  # gradients past the lengths must be ignored
        got = bwd(noisy, cachep)
    tol = TOL[dtype]
    np.testing.assert_allclose(hp, h * real, rtol=tol, atol=tol * np.abs(h).max())
    assert not hp[~real[..., 0]].any()  # exactly zero past each row's length
    assert not got[0][~real[..., 0]].any()
    for k, (a, r) in enumerate(zip(got, ref, strict=True)):
        r = r * real if k == 0 else r
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol * np.abs(r).max(), err_msg=str(k))


@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_full_lengths_are_the_plain_path(layer):
    args, dh = _args(layer, 5, 4, 6, np.float64, seed=3)
    fwd = getattr(nn, f"{layer}_recurrence_forward")
    bwd = getattr(nn, f"{layer}_recurrence_backward")
    h, cache = fwd(*args)
    h2, cache2 = fwd(*args, lengths=np.full(5, 4))
    np.testing.assert_array_equal(h, h2)
    for a, r in zip(bwd(dh, cache2), bwd(dh, cache), strict=True):
        np.testing.assert_array_equal(a, r)


def test_packed_recurrence_passes_a_gradient_check():
    """The packed LSTM's gradients, checked numerically (float64) through a loss that only
    reads the real steps."""
    args, dh = _args("lstm", 4, 5, 3, np.float64, seed=4)
    xa, h0, Wh, b = args
    lengths = np.array([5, 3, 3, 1])

    def loss(_):
        h, _ = nn.lstm_recurrence_forward(xa, h0, Wh, b, lengths=lengths)
        return float(np.sum(h * dh))

    _, cache = nn.lstm_recurrence_forward(xa, h0, Wh, b, lengths=lengths)
    dxa, dh0, dWh, db = nn.lstm_recurrence_backward(dh, cache)
    for arr, grad in ((xa, dxa), (h0, dh0), (Wh, dWh), (b, db)):
        num = nn.eval_numerical_gradient(loss, arr, verbose=False, h=1e-5)
        assert nn.rel_error(num, grad) < 1e-7


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        ([3, 4, 1], "non-increasing"),
        ([5, 2, 1], r"in \[0, T\] = \[0, 4\]"),
        ([3, -1, -1], r"in \[0, T\]"),
        ([3, 2], r"shape \(N,\)"),
        ([3.0, 2.0, 1.0], "integers"),
    ],
)
def test_bad_lengths_are_refused_by_name(lengths, match):
    args, _ = _args("lstm", 3, 4, 2, np.float64)
    with pytest.raises(ValueError, match=match):
        nn.lstm_recurrence_forward(*args, lengths=np.array(lengths))


def test_lengths_counts_and_index():
    packed = Lengths(np.array([3, 3, 1, 0]), N=4, T=3)
    np.testing.assert_array_equal(packed.counts, [3, 2, 2])
    np.testing.assert_array_equal(packed.index, [0, 1, 2, 3, 4, 5, 6])
    assert Lengths.of(None, 4, 3) is None and Lengths.of(np.full(4, 3), 4, 3) is None
    assert Lengths.of(packed, 4, 3) is packed  # made once, passed on without a second check
    other = Lengths.of(packed, 4, 4)  # another T: checked again for it
    np.testing.assert_array_equal(other.counts, [3, 2, 2, 0])
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        Lengths.of(packed, 5, 3)
