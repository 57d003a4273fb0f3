"""Generating captions: greedy, beam search, temperature sampling, and the folded input table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from captioning_helpers import make_vocab

from captionlab.captioning import (
    CaptioningRNN,
    beam_search,
    caption_logprob,
    captions_to_text,
    greedy_decode,
    sample_temperature,
)
from captionlab.captioning.model import cell_step_from_input
from captionlab.nn import gru_step_forward, lstm_step_forward, rnn_step_forward

CELLS = ["rnn", "lstm", "gru"]


def _model(cell, V=12, D=6, W=5, H=7, seed=0, dtype=np.float64, scale=1.0):
    model = CaptioningRNN(
        make_vocab(V),
        input_dim=D,
        wordvec_dim=W,
        hidden_dim=H,
        cell_type=cell,
        dtype=dtype,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 100)
    for k, v in model.params.items():  # weights large enough for peaked, varied words
        model.params[k] = (scale * rng.standard_normal(v.shape)).astype(dtype)
    return model


def _features(N=8, D=6, seed=1):
    return np.random.default_rng(seed).standard_normal((N, D))


@pytest.mark.parametrize("cell", CELLS)
def test_step_from_input_equals_nn_step_functions(cell):
    rng = np.random.default_rng(3)
    N, D, H = 4, 5, 6
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x, h, c = rng.standard_normal((N, D)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, G * H)), rng.standard_normal((H, G * H))
    b, bh = rng.standard_normal(G * H), rng.standard_normal(G * H)
    got_h, got_c = cell_step_from_input(cell, x @ Wx + b, h, c, Wh, bh)
    if cell == "rnn":
        want_h, want_c = rnn_step_forward(x, h, Wx, Wh, b)[0], None
    elif cell == "lstm":
        want_h, want_c, _ = lstm_step_forward(x, h, c, Wx, Wh, b)
    else:
        want_h, want_c = gru_step_forward(x, h, Wx, Wh, b, bh)[0], None
    np.testing.assert_allclose(got_h, want_h, rtol=1e-12, atol=1e-12)
    if want_c is not None:
        np.testing.assert_allclose(got_c, want_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_folded_decoding_equals_step_function_decoding(cell):
    model, feats = _model(cell), _features()
    np.testing.assert_array_equal(
        greedy_decode(model, feats, 9, fold=True), greedy_decode(model, feats, 9, fold=False)
    )
    # one image, a few steps: fewer lookups than V, so the default does not build the table
    np.testing.assert_array_equal(
        greedy_decode(model, feats[:1], 3), greedy_decode(model, feats[:1], 3, fold=True)
    )
    fast = beam_search(model, feats, beam_size=3, max_length=9, fold=True)
    ref = beam_search(model, feats, beam_size=3, max_length=9, fold=False)
    np.testing.assert_array_equal(fast.captions, ref.captions)
    np.testing.assert_allclose(fast.logprobs, ref.logprobs, rtol=1e-10)


def _reference_greedy(model, feats, max_length):
    """The cs231n loop with the nn step functions, then <NULL> after the first <END>."""
    p = model.params
    N = feats.shape[0]
    h = feats @ p["W_proj"] + p["b_proj"]
    c = np.zeros_like(h)
    word = np.full(N, 1)
    out = np.zeros((N, max_length), dtype=np.int32)
    for t in range(max_length):
        x = p["W_embed"][word]
        if model.cell_type == "rnn":
            h, _ = rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
        elif model.cell_type == "lstm":
            h, c, _ = lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = gru_step_forward(x, h, p["Wx"], p["Wh"], p["b"], p["bh"])
        word = np.argmax(h @ p["W_vocab"] + p["b_vocab"], axis=1)
        out[:, t] = word
    for row in out:
        ends = np.flatnonzero(row == 2)
        if ends.size:
            row[ends[0] + 1 :] = 0
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_greedy_matches_reference_loop(cell, dtype):
    # settings where some captions stop early and some do not (both paths run)
    seed, end_bias = {"rnn": (0, 1.0), "lstm": (2, 0.0), "gru": (1, 1.0)}[cell]
    model, feats = _model(cell, seed=seed, dtype=dtype, scale=0.8), _features(N=16)
    model.params["b_vocab"][2] += end_bias
    got = model.sample(feats, max_length=10)
    assert got.shape == (16, 10) and got.dtype == np.int32
    np.testing.assert_array_equal(got, _reference_greedy(model, feats, 10))
    ended = [row[:-1] == 2 for row in got]
    assert 0 < np.sum(np.any(ended, axis=1)) < 16  # some ended early, some did not


@pytest.mark.parametrize("cell", CELLS)
def test_beam_size_one_is_greedy(cell):
    model, feats = _model(cell), _features(N=16)
    greedy = greedy_decode(model, feats, max_length=10)
    beam = beam_search(model, feats, beam_size=1, max_length=10)
    assert beam.captions.shape == (16, 1, 10)
    np.testing.assert_array_equal(beam.captions[:, 0], greedy)
    np.testing.assert_allclose(
        beam.logprobs[:, 0], caption_logprob(model, feats, greedy), rtol=1e-10
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("beam_size", [2, 5])
def test_beam_is_never_worse_than_greedy(cell, beam_size):
    model, feats = _model(cell, scale=0.7), _features(N=32)
    greedy_lp = caption_logprob(model, feats, greedy_decode(model, feats, max_length=8))
    beam = beam_search(model, feats, beam_size=beam_size, max_length=8)
    assert beam.captions.shape == (32, beam_size, 8)
    assert np.all(beam.logprobs[:, 0] >= greedy_lp - 1e-9)
    assert np.any(beam.logprobs[:, 0] > greedy_lp + 1e-6)  # and sometimes strictly better
    # results are sorted best first, and the reported log-probabilities are the captions'
    assert np.all(np.diff(beam.logprobs, axis=1) <= 1e-12)
    for j in range(beam_size):
        np.testing.assert_allclose(
            beam.logprobs[:, j], caption_logprob(model, feats, beam.captions[:, j]), rtol=1e-9
        )


def test_beam_search_finds_the_exact_best_caption_when_wide_enough():
    """With B >= V^(L-1) nothing is pruned: beam search equals exhaustive search."""
    V, L = 5, 3
    model, feats = _model("lstm", V=V, scale=1.5), _features(N=4)
    candidates = np.array(list(itertools.product(range(V), repeat=L)), dtype=np.int32)
    best = []
    for n in range(4):
        f = np.repeat(feats[n : n + 1], len(candidates), axis=0)
        lp = caption_logprob(model, f, candidates)
        # captions that differ only after <END> are the same caption: keep canonical ones
        canonical = np.array([_canonical(c) for c in candidates])
        lp = np.where(canonical, lp, -np.inf)
        best.append(lp.max())
    result = beam_search(model, feats, beam_size=V ** (L - 1) * V, max_length=L, top_k=3)
    np.testing.assert_allclose(result.logprobs[:, 0], best, rtol=1e-10)
    # the top 3 are distinct captions
    for n in range(4):
        assert len({tuple(c) for c in result.captions[n]}) == 3


def _canonical(caption):
    ends = np.flatnonzero(caption == 2)
    return not ends.size or np.all(caption[ends[0] + 1 :] == 0)


def test_beam_finished_captions_are_padded_and_lengths_counted():
    model, feats = _model("gru", V=8, scale=1.2), _features(N=10)
    res = beam_search(model, feats, beam_size=4, max_length=12)
    for n, j in itertools.product(range(10), range(4)):
        row = res.captions[n, j]
        ends = np.flatnonzero(row == 2)
        if ends.size:
            assert np.all(row[ends[0] + 1 :] == 0)
            assert res.lengths[n, j] == ends[0] + 1
        else:
            assert res.lengths[n, j] == 12


def test_length_penalty_reranks_by_normalised_score():
    model, feats = _model("rnn", V=8, scale=1.0), _features(N=20)
    plain = beam_search(model, feats, beam_size=4, max_length=10)
    pen = beam_search(model, feats, beam_size=4, max_length=10, length_penalty=1.0)
    factor = ((5.0 + pen.lengths) / 6.0) ** 1.0
    np.testing.assert_allclose(pen.scores, pen.logprobs / factor)
    assert np.all(np.diff(pen.scores, axis=1) <= 1e-12)
    np.testing.assert_allclose(plain.scores, plain.logprobs)
    # a positive penalty never prefers a shorter caption than plain log-probability does
    assert np.all(pen.lengths[:, 0] >= plain.lengths[:, 0])


def test_beam_argument_errors():
    model, feats = _model("rnn"), _features(N=2)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, feats, beam_size=0)
    with pytest.raises(ValueError, match="top_k"):
        beam_search(model, feats, beam_size=2, top_k=3)


def test_temperature_sampling_is_seeded_and_tends_to_greedy():
    model, feats = _model("lstm", scale=1.0), _features(N=30)
    a = sample_temperature(model, feats, temperature=1.0, max_length=8, seed=7)
    b = sample_temperature(model, feats, temperature=1.0, max_length=8, seed=7)
    c = sample_temperature(model, feats, temperature=1.0, max_length=8, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = greedy_decode(model, feats, max_length=8)
    np.testing.assert_array_equal(sample_temperature(model, feats, 0.0, 8, seed=1), greedy)
    cold = sample_temperature(model, feats, temperature=1e-3, max_length=8, seed=1)
    np.testing.assert_array_equal(cold, greedy)
    for row in a:  # the same <END> / <NULL> convention as greedy
        ends = np.flatnonzero(row == 2)
        if ends.size:
            assert np.all(row[ends[0] + 1 :] == 0)


def test_temperature_sampling_follows_the_model_distribution():
    """One step, many samples: word frequencies match softmax(scores / T)."""
    model, feats = _model("rnn", V=6, scale=0.5), _features(N=1)
    feats = np.repeat(feats, 20000, axis=0)
    T = 2.0
    words = sample_temperature(model, feats, temperature=T, max_length=1, seed=0)[:, 0]
    p = model.params
    h = np.tanh(
        p["W_embed"][1] @ p["Wx"] + p["b"] + (feats[0] @ p["W_proj"] + p["b_proj"]) @ p["Wh"]
    )
    scores = (h @ p["W_vocab"] + p["b_vocab"]) / T
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    freq = np.bincount(words, minlength=6) / words.size
    np.testing.assert_allclose(freq, probs, atol=0.015)


def test_captions_to_text_stops_at_end_and_drops_specials():
    idx_to_word = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "circle"]
    caps = np.array([[1, 4, 5, 6, 2, 4, 0], [4, 6, 0, 0, 0, 0, 0]])
    assert captions_to_text(caps, idx_to_word) == ["a red circle", "a circle"]
    assert captions_to_text(caps[0], dict(enumerate(idx_to_word))) == ["a red circle"]


def test_decoding_needs_start_token():
    model = CaptioningRNN({"<NULL>": 0, "cat": 1}, input_dim=3, wordvec_dim=2, hidden_dim=2)
    with pytest.raises(ValueError, match="<START>"):
        model.sample(np.zeros((1, 3)))


def test_beam_wider_than_the_candidates():
    """B > V: the first step has only V candidates; later steps fill the beam."""
    model, feats = _model("rnn", V=5), _features(N=3)
    one = beam_search(model, feats, beam_size=8, max_length=1)
    assert one.captions.shape == (3, 5, 1)  # only V distinct one-word captions exist
    assert all(sorted(one.captions[n, :, 0]) == [0, 1, 2, 3, 4] for n in range(3))
    two = beam_search(model, feats, beam_size=8, max_length=2)
    assert two.captions.shape == (3, 8, 2)
    assert all(len({tuple(c) for c in two.captions[n]}) == 8 for n in range(3))


@pytest.mark.parametrize("cell", CELLS)
def test_beam_with_captions_that_end_early(cell):
    """Finished hypotheses skip the step; results still match greedy and the scores."""
    model, feats = _model(cell, V=10, scale=0.8, seed=4), _features(N=24)
    model.params["b_vocab"][2] += 0.3  # <END> likelier: beams finish at different steps
    greedy = greedy_decode(model, feats, max_length=10)
    one = beam_search(model, feats, beam_size=1, max_length=10)
    np.testing.assert_array_equal(one.captions[:, 0], greedy)
    res = beam_search(model, feats, beam_size=4, max_length=10)
    assert np.sum(res.lengths < 10) > 0 and len(np.unique(res.lengths)) >= 3  # varied ends
    ref = beam_search(model, feats, beam_size=4, max_length=10, fold=False)
    np.testing.assert_array_equal(res.captions, ref.captions)
    for j in range(4):
        np.testing.assert_allclose(
            res.logprobs[:, j], caption_logprob(model, feats, res.captions[:, j]), rtol=1e-9
        )
    assert np.all(res.logprobs[:, 0] >= caption_logprob(model, feats, greedy) - 1e-9)
