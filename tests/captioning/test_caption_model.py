"""CaptioningRNN: the cs231n behaviours, for the rnn, lstm and gru cells."""

from __future__ import annotations

import numpy as np
import pytest
from captioning_helpers import make_captions, make_vocab
from threadpoolctl import threadpool_limits

from captionlab.captioning import CaptioningRNN, CaptioningSolver
from captionlab.nn.gradcheck import eval_numerical_gradient, rel_error

CELLS = ["rnn", "lstm", "gru"]


def _cs231n_fixed_model(cell: str) -> tuple[CaptioningRNN, np.ndarray, np.ndarray]:
    """The cs231n notebooks' fixed-value setup (N=10, D=20, W=30, H=40, T=13, V=3)."""
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    V = len(word_to_idx)
    model = CaptioningRNN(
        word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, dtype=np.float64
    )
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    captions = (np.arange(N * T) % V).reshape(N, T)
    return model, captions, np.empty(0)


def test_rnn_loss_matches_cs231n_notebook():
    model, captions, _ = _cs231n_fixed_model("rnn")
    features = np.linspace(-1.5, 0.3, num=10 * 20).reshape(10, 20)
    loss, _ = model.loss(features, captions)
    assert abs(loss - 9.83235591003) < 1e-10


def test_lstm_loss_matches_cs231n_notebook():
    model, captions, _ = _cs231n_fixed_model("lstm")
    features = np.linspace(-0.5, 1.7, num=10 * 20).reshape(10, 20)
    loss, _ = model.loss(features, captions)
    assert abs(loss - 9.82445935443) < 1e-10


@pytest.mark.parametrize("cell", CELLS)
def test_param_names_and_shapes(cell):
    V, D, W, H = 17, 11, 7, 5
    model = CaptioningRNN(make_vocab(V), input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    expected = {
        "W_embed": (V, W),
        "W_proj": (D, H),
        "b_proj": (H,),
        "Wx": (W, G * H),
        "Wh": (H, G * H),
        "b": (G * H,),
        "W_vocab": (H, V),
        "b_vocab": (V,),
    }
    if cell == "gru":
        expected["bh"] = (3 * H,)
    assert {k: v.shape for k, v in model.params.items()} == expected
    assert all(v.dtype == np.float32 for v in model.params.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_grads_keep_dtype_and_shapes(cell, dtype):
    rng = np.random.default_rng(0)
    model = CaptioningRNN(
        make_vocab(15), input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type=cell, dtype=dtype
    )
    features = rng.standard_normal((3, 6))  # float64 input: cast to the model's dtype
    loss, grads = model.loss(features, make_captions(rng, 3, 7, 15))
    assert isinstance(loss, float)
    assert set(grads) == set(model.params)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape, k
        assert g.dtype == np.dtype(dtype), k


@pytest.mark.parametrize("cell", CELLS)
def test_initial_loss_is_about_log_V(cell):
    """Small random weights give near-uniform word scores: loss ~ (words per caption) log V."""
    V, N, T = 50, 64, 12
    rng = np.random.default_rng(1)
    model = CaptioningRNN(
        make_vocab(V), input_dim=16, wordvec_dim=8, hidden_dim=8, cell_type=cell, seed=0
    )
    model.params["W_vocab"] *= 0.001  # near-zero scores: each unmasked step costs ~ log V
    captions = make_captions(rng, N, T, V)
    loss, _ = model.loss(rng.standard_normal((N, 16)), captions)
    steps_per_caption = np.mean(np.sum(captions[:, 1:] != 0, axis=1))
    assert loss / steps_per_caption == pytest.approx(np.log(V), rel=1e-3)


def test_null_targets_are_masked():
    """Changing words after <END> (the <NULL> padding positions' inputs) changes nothing,
    and a caption made only of <NULL> targets contributes no loss."""
    rng = np.random.default_rng(2)
    model = CaptioningRNN(make_vocab(12), input_dim=4, wordvec_dim=3, hidden_dim=5, seed=0)
    features = rng.standard_normal((2, 4))
    captions = np.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    loss, _ = model.loss(features, captions)
    loss_single, _ = model.loss(features[:1], captions[:1])
    loss_second, _ = model.loss(features[1:], captions[1:])
    assert loss == pytest.approx((loss_single + loss_second) / 2, rel=1e-6)
    padded = captions.copy()
    padded[1] = [1, 0, 0, 0, 0, 0]  # nothing to predict
    loss_padded, _ = model.loss(features, padded)
    assert loss_padded == pytest.approx(loss_single / 2, rel=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_whole_model_gradient_check(cell):
    """cs231n's check: float64, small sizes, every parameter, relative error < 1e-5."""
    rng = np.random.RandomState(231)
    batch_size, timesteps, input_dim, wordvec_dim, hidden_dim = 2, 4, 4, 5, 6
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    V = len(word_to_idx)
    captions = rng.randint(V, size=(batch_size, timesteps))
    captions[:, 1] = 1  # a word that occurs twice in one batch: gradients must accumulate
    features = rng.randn(batch_size, input_dim)
    model = CaptioningRNN(
        word_to_idx,
        input_dim=input_dim,
        wordvec_dim=wordvec_dim,
        hidden_dim=hidden_dim,
        cell_type=cell,
        dtype=np.float64,
        seed=1,
    )
    for k, v in model.params.items():  # small weights, every one non-zero (GRU's bh too)
        model.params[k] = 0.3 * rng.randn(*v.shape)
    _, grads = model.loss(features, captions)
    assert set(grads) == set(model.params)
    for name in sorted(grads):

        def f(_):
            return model.loss(features, captions)[0]

        num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-5)
        assert rel_error(num, grads[name]) < 1e-5, name


@pytest.mark.parametrize("cell", CELLS)
def test_feature_gradient_and_word_mask(cell):
    """feature_grad: d loss / d features passes a numerical check; a one-word mask gives the
    gradient of that word's log-probability alone (what explaining a word needs)."""
    rng = np.random.RandomState(5)
    model = CaptioningRNN(
        make_vocab(7), input_dim=4, wordvec_dim=5, hidden_dim=6, cell_type=cell,
        dtype=np.float64, seed=2,
    )  # fmt: skip
    for k, v in model.params.items():
        model.params[k] = 0.4 * rng.randn(*v.shape)
    features, captions = rng.randn(3, 4), rng.randint(1, 7, size=(3, 6))
    _, grads = model.loss(features, captions, feature_grad=True)
    num = eval_numerical_gradient(
        lambda _: model.loss(features, captions)[0], features, verbose=False, h=1e-5
    )
    assert grads["features"].shape == features.shape
    assert rel_error(num, grads["features"]) < 1e-7
    assert "features" not in model.loss(features, captions)[1]

    mask = np.zeros((3, 5), dtype=bool)
    mask[1, 2] = True  # the third predicted word of caption 1
    loss, grads = model.loss(features, captions, mask=mask, feature_grad=True)
    scores = model.loss(features[1:2], captions[1:2, :4])[0]  # words 1..3 of caption 1
    upto2 = model.loss(features[1:2], captions[1:2, :3])[0]  # words 1..2
    assert loss == pytest.approx((scores - upto2) / 3, rel=1e-10)  # -log p(word 3) / N
    assert np.all(grads["features"][[0, 2]] == 0)
    num = eval_numerical_gradient(
        lambda _: model.loss(features, captions, mask=mask)[0], features, verbose=False, h=1e-5
    )
    assert rel_error(num, grads["features"]) < 1e-7
    with pytest.raises(ValueError, match="mask must be"):
        model.loss(features, captions, mask=mask[:, :2])


def test_gradient_check_catches_a_wrong_gradient():
    """Negative control: perturbing an analytic gradient makes the check fail."""
    rng = np.random.RandomState(0)
    model = CaptioningRNN(
        make_vocab(8), input_dim=3, wordvec_dim=4, hidden_dim=5, dtype=np.float64, seed=0
    )
    features, captions = rng.randn(2, 3), rng.randint(8, size=(2, 5))
    _, grads = model.loss(features, captions)
    num = eval_numerical_gradient(
        lambda _: model.loss(features, captions)[0], model.params["Wh"], verbose=False, h=1e-6
    )
    assert rel_error(num, grads["Wh"]) < 1e-5
    assert rel_error(num, grads["Wh"] * 1.01) > 1e-3


def test_shape_errors_name_the_argument():
    model = CaptioningRNN(make_vocab(8), input_dim=3, wordvec_dim=4, hidden_dim=5)
    with pytest.raises(ValueError, match=r"features must be \(N, 3\), got \(2, 4\)"):
        model.loss(np.zeros((2, 4)), np.ones((2, 5), dtype=int))
    with pytest.raises(ValueError, match="captions must be"):
        model.loss(np.zeros((2, 3)), np.ones((3, 5), dtype=int))
    with pytest.raises(ValueError, match="cell_type"):
        CaptioningRNN(make_vocab(8), cell_type="transformer")


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = np.random.get_state()  # noqa: NPY002 (the global generator is what is checked)
    a = CaptioningRNN(make_vocab(10), input_dim=4, wordvec_dim=3, hidden_dim=2, seed=5)
    b = CaptioningRNN(make_vocab(10), input_dim=4, wordvec_dim=3, hidden_dim=2, seed=5)
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_sample_shapes_and_end_padding():
    """Greedy captions are (N, max_length); after a caption's <END> come only <NULL>s."""
    V = 6
    model = CaptioningRNN(make_vocab(V), input_dim=4, wordvec_dim=3, hidden_dim=5, seed=3)
    feats = np.random.default_rng(0).standard_normal((20, 4))
    caps = model.sample(feats, max_length=7)
    assert caps.shape == (20, 7) and caps.dtype == np.int32
    ended = 0
    for row in caps:
        ends = np.flatnonzero(row == 2)
        if ends.size:
            ended += 1
            assert np.all(row[ends[0] + 1 :] == 0)
    assert 0 < ended < 20


def _overfit(cell, V, D, W, H, epochs=50, N=50, T=17, seed=231):
    rng = np.random.default_rng(seed)
    data = {
        "train_captions": make_captions(rng, N, T, V),
        "train_image_idxs": np.arange(N),
        "train_features": rng.standard_normal((N, D)).astype(np.float32),
    }
    model = CaptioningRNN(
        make_vocab(V), input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, seed=seed
    )
    solver = CaptioningSolver(
        model,
        data,
        update_rule="adam",
        num_epochs=epochs,
        batch_size=25,
        optim_config={"learning_rate": 5e-3},
        lr_decay=0.995,
        verbose=False,
        seed=0,
    )
    with threadpool_limits(1):  # the machines are shared: one BLAS thread is fastest
        solver.train()
    return solver.loss_history


@pytest.mark.parametrize(("cell", "bound"), [("rnn", 0.1), ("lstm", 0.5), ("gru", 0.5)])
def test_overfit_50_captions_small(cell, bound):
    """cs231n's overfit check (50 captions, Adam 5e-3, 100 iterations) at a smaller width."""
    history = _overfit(cell, V=200, D=128, W=128, H=256)
    assert history[0] > 20 and history[-1] < bound


@pytest.mark.slow
@pytest.mark.parametrize(("cell", "bound"), [("rnn", 0.1), ("lstm", 0.5), ("gru", 0.5)])
def test_overfit_50_captions_cs231n_size(cell, bound):
    """The cs231n notebooks' sizes: V=1004, D=512, word vectors 256, hidden 512."""
    history = _overfit(cell, V=1004, D=512, W=256, H=512)
    assert history[-1] < bound


def _reference_loss(model, features, captions):
    """The straightforward cs231n loss: scores at every position, then the masked loss."""
    from captionlab import nn

    p = model.params
    h0 = features @ p["W_proj"] + p["b_proj"]
    x, _ = nn.word_embedding_forward(captions[:, :-1], p["W_embed"])
    if model.cell_type == "rnn":
        h, _ = nn.rnn_forward(x, h0, p["Wx"], p["Wh"], p["b"])
    elif model.cell_type == "lstm":
        h, _ = nn.lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"])
    else:
        h, _ = nn.gru_forward(x, h0, p["Wx"], p["Wh"], p["b"], p["bh"])
    scores, cache = nn.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    out = captions[:, 1:]
    loss, dscores = nn.temporal_softmax_loss(scores, out, out != 0)
    _, dW_vocab, db_vocab = nn.temporal_affine_backward(dscores, cache)
    return loss, dW_vocab, db_vocab


@pytest.mark.parametrize("cell", CELLS)
def test_scores_only_at_unmasked_positions_equal_the_full_computation(cell):
    rng = np.random.default_rng(5)
    model = CaptioningRNN(
        make_vocab(30),
        input_dim=6,
        wordvec_dim=5,
        hidden_dim=7,
        cell_type=cell,
        dtype=np.float64,
        seed=2,
    )
    features, captions = rng.standard_normal((9, 6)), make_captions(rng, 9, 11, 30)
    assert np.mean(captions[:, 1:] == 0) > 0.2  # plenty of padding
    loss, grads = model.loss(features, captions)
    ref_loss, ref_dW, ref_db = _reference_loss(model, features, captions)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grads["W_vocab"], ref_dW, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["b_vocab"], ref_db, rtol=1e-10, atol=1e-14)
    # all targets <NULL>: zero loss and zero gradients
    empty = np.zeros_like(captions)
    empty[:, 0] = 1
    loss0, grads0 = model.loss(features, empty)
    assert loss0 == 0.0 and all(not g.any() for g in grads0.values())


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_captions_of_different_lengths_run_packed_with_the_same_loss_and_gradients(
    cell, fold, monkeypatch
):
    """The loss sorts the captions longest first and runs each only up to its last counted
    word (nn's ``lengths=``); loss, every gradient and the feature gradient (in the caller's
    row order) equal the plain recurrence over all steps. ``fold`` covers both input paths
    (the embedding folded into a table when V < N*(T-1), or not)."""
    from captionlab.nn import functional

    rng = np.random.default_rng(11)
    V = 20 if fold else 80
    model = CaptioningRNN(
        make_vocab(V), input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell,
        dtype=np.float64, seed=3,
    )  # fmt: skip
    features, captions = rng.standard_normal((9, 6)), make_captions(rng, 9, 10, V)
    lengths = (captions[:, 1:] != 0).sum(axis=1)
    assert np.any(np.diff(lengths) > 0) and len(set(lengths)) > 2  # unsorted, several lengths
    mask = captions[:, 1:] != 0
    mask[4] = False
    mask[4, 1] = True  # one word counted early in a long caption: it runs two steps
    seen = []
    plain_of = functional.Lengths.of.__func__

    def spy(cls, lengths, N, T):
        seen.append(np.array(getattr(lengths, "lengths", lengths)))
        return plain_of(cls, lengths, N, T)

    monkeypatch.setattr(functional.Lengths, "of", classmethod(spy))
    got = [model.loss(features, captions, mask=m, feature_grad=True) for m in (None, mask)]
    assert seen and all(np.all(np.diff(s) <= 0) for s in seen)  # sorted, packed
    expected = lengths.copy()
    expected[4] = 2
    want = {tuple(np.sort(lengths)[::-1]), tuple(np.sort(expected)[::-1])}
    assert {tuple(int(v) for v in s) for s in seen} == want
    monkeypatch.setattr(functional.Lengths, "of", classmethod(lambda cls, lengths, N, T: None))
    ref = [model.loss(features, captions, mask=m, feature_grad=True) for m in (None, mask)]
    for (loss, grads), (ref_loss, ref_grads) in zip(got, ref, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        assert set(grads) == set(ref_grads)
        for k in grads:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)
