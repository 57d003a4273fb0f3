"""CaptioningTransformer decoding: the incremental step (key/value caches, memory keys and
values computed once) equals rerunning the whole prefix, in scores, greedy captions, beam
search with hypotheses ending at different steps, caption scores and attention."""

import numpy as np
import pytest
from captioning_helpers import make_vocab

from captionlab import nn
from captionlab.captioning import (
    CaptioningTransformer,
    beam_search,
    caption_logprob,
    greedy_decode,
    load_checkpoint,
    sample_temperature,
    save_checkpoint,
)
from captionlab.captioning.transformer_model import _MemoryRows
from captionlab.errors import CheckpointError
from captionlab.nn.functional import log_softmax

V, D, W = 12, 6, 8


def _model(seed=3, dtype=np.float64, end_bias=2.0, **kw):
    """A model with weights of unit scale (varied captions) and an <END> bias that makes
    captions and beam hypotheses end after different numbers of words."""
    kw = {"num_heads": 2, "num_layers": 2, "max_length": 12, "dim_feedforward": 16, **kw}
    model = CaptioningTransformer(make_vocab(V), D, W, dropout=0.1, dtype=dtype, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        if v.ndim == 2:
            value = rng.standard_normal(v.shape) / np.sqrt(v.shape[0])
        elif k.endswith("gamma"):
            value = v
        elif k.endswith(("c_cov", "u_cov")):  # coverage that changes the weights a lot
            value = 2.0 * rng.standard_normal(v.shape)
        else:
            value = 0.3 * rng.standard_normal(v.shape)
        model.params[k] = value.astype(dtype)
    model.params["b_vocab"] = rng.standard_normal(V).astype(dtype)
    model.params["b_vocab"][2] = end_bias
    return model


#: The cases the decoding tests run: a grid model, a pooled one, and a grid model with a
#: position per cell, a layer-normalised memory and two encoder layers (its seed chosen so
#: that captions and beams end after different numbers of words, as the tests need).
CASES = {"grid": {"grid": True}, "pooled": {}}
CASES["encoder"] = {"grid": True, "num_cells": 5, "memory_norm": True, "encoder_layers": 2}
CASES["encoder"].update(seed=10, end_bias=2.0)
#: ... and one that reads where its cross-attention looked, over a square grid of 3x3 cells.
CASES["locations"] = {"grid": True, "num_cells": 9, "locations": True}
#: ... and one that also reads a running mean of the places looked at (two running sums per
#: row and layer when decoding).
CASES["summary"] = {**CASES["locations"], "location_summary": True, "seed": 4, "end_bias": 2.0}
#: ... and two with coverage in their cross-attention (a running sum of each head's plain
#: weights per row and layer when decoding): over a grid, and with the places and summary
#: (seeds chosen, as above, for captions and beams that end after different numbers of words).
CASES["coverage"] = {"grid": True, "coverage": True, "seed": 1, "end_bias": 2.0}
CASES["coverage_summary"] = {**CASES["summary"], "coverage": True, "seed": 4}
#: The grid cells of each case's features.
CELLS = {"locations": 9, "summary": 9, "coverage_summary": 9}


def _features(grid=True, N=3, seed=3, L=5):
    rng = np.random.default_rng(seed + 100)
    return rng.standard_normal((N, L, D) if grid else (N, D))


def _cross_weights(model, features, words):
    """The last layer's cross-attention weights (N, h, T, L) of the teacher-forced pass."""
    _, cache = model._forward(model._check_features(features), words, p_drop=0.0)
    return nn.decoder_layer_attention(cache[-1][-1])[1]


@pytest.mark.parametrize("case", list(CASES))
def test_each_step_equals_the_teacher_forced_position(case):
    """Scores of step t = scores at position t of one pass over the whole caption."""
    model = _model(**CASES[case])
    grid = case != "pooled"
    features = _features(grid, L=CELLS.get(case, 5))
    words = np.array([[1, 5, 7, 4, 9, 9], [1, 11, 2, 6, 4, 8], [1, 3, 3, 10, 5, 2]])
    expected = model.eval()._teacher_forced_scores(features, np.c_[words, words[:, :1]])
    model.train()  # decoding never drops out, whatever the mode
    state = model.decode_start(features, max_length=6)
    assert set(state.shared) >= {"mem_k0", "mem_v1", "layer0"}
    for t in range(6):
        scores, state, attention = model.decode_step(words[:, t], state)
        np.testing.assert_allclose(scores, expected[:, t], rtol=1e-12, atol=1e-12)
        assert state.rows["k1"].shape == (3, 2, 4, t + 1)  # (M, h, d, t+1)
        assert state.rows["v0"].shape == (3, 2, t + 1, 4)
        if grid:
            ref = _cross_weights(model, features, words)[:, :, t].mean(axis=1)
            np.testing.assert_allclose(attention, ref, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-12)
        else:
            assert attention is None  # one pooled token: nothing to attend between


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_equals_recomputing_the_prefix(case):
    model = _model(**CASES[case])
    grid = case != "pooled"
    L = CELLS.get(case, 5)
    features = _features(grid, N=4, L=L)
    fast, att = greedy_decode(model, features, max_length=10, return_attention=True)
    slow, att_slow = greedy_decode(
        model, features, max_length=10, return_attention=True, cache=False
    )
    np.testing.assert_array_equal(fast, slow)
    ends = [np.flatnonzero(c == 2) for c in fast]
    assert len({e[0] if e.size else None for e in ends}) > 1, ends  # different end times
    if grid:
        np.testing.assert_allclose(att, att_slow, rtol=1e-10, atol=1e-13)
        assert att.shape == (4, 10, L)
    else:
        assert att is None and att_slow is None
    np.testing.assert_array_equal(model.sample(features, max_length=10), fast)


@pytest.mark.parametrize("case", [c for c in CASES if c != "pooled"])
def test_beam_search_with_different_end_times_equals_recomputing_the_prefix(case):
    model = _model(**CASES[case])
    features = _features(True, N=3, L=CELLS.get(case, 5))
    fast = beam_search(model, features, beam_size=3, max_length=10, return_attention=True)
    slow = beam_search(
        model, features, beam_size=3, max_length=10, return_attention=True, cache=False
    )
    lengths = fast.lengths
    assert len(np.unique(lengths)) >= 3 and (lengths < 10).any() and (lengths == 10).any()
    np.testing.assert_array_equal(fast.captions, slow.captions)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    np.testing.assert_allclose(fast.logprobs, slow.logprobs, rtol=1e-10)
    np.testing.assert_allclose(fast.attention, slow.attention, rtol=1e-9, atol=1e-12)
    # the beams' own scores are the captions' log-probabilities under teacher forcing
    best = fast.captions[:, 0]
    np.testing.assert_allclose(caption_logprob(model, features, best), fast.logprobs[:, 0])


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "pooled"])
def test_caption_logprob_equals_the_teacher_forced_loss(grid):
    model = _model().eval()
    features = _features(grid)
    captions = np.array([[5, 7, 2, 0, 0], [4, 4, 4, 4, 4], [9, 2, 6, 6, 0]])  # no <START>
    got = caption_logprob(model, features, captions)
    words = np.c_[np.ones(3, dtype=int), captions]  # (N, 6) with <START>
    logp = log_softmax(model._teacher_forced_scores(features, words))  # (N, 5, V)
    picked = np.take_along_axis(logp, captions[..., None], axis=-1)[..., 0]
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=bool)
    np.testing.assert_allclose(got, (picked * keep).sum(axis=1), rtol=1e-12)
    state_free = caption_logprob(model, features, captions)  # a second call: no leftovers
    np.testing.assert_array_equal(got, state_free)


def test_memory_rows_three_paths_agree():
    """In order, B rows per image, and gathered: the same attention."""
    rng = np.random.default_rng(0)
    N, h, d, L = 3, 2, 4, 5
    keys, values = rng.standard_normal((N, h, d, L)), rng.standard_normal((N, h, L, d))

    def reference(q, image):
        weights = np.exp(np.einsum("mhd,mhdl->mhl", q, keys[image]))
        weights /= weights.sum(axis=-1, keepdims=True)
        return np.einsum("mhl,mhld->mhd", weights, values[image]), weights

    def with_coverage(q, image, g, C):  # softmax(scores + g C) and the plain softmax
        scores = np.einsum("mhd,mhdl->mhl", q, keys[image])
        weights = np.exp(scores + g[..., None] * C)
        weights /= weights.sum(axis=-1, keepdims=True)
        plain = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
        return np.einsum("mhl,mhld->mhd", weights, values[image]), weights, plain

    for image in (np.arange(3), np.repeat(np.arange(3), 4), np.array([2, 0, 0, 1, 2])):
        q = rng.standard_normal((len(image), h, d))
        y, weights, plain = _MemoryRows(keys, values, image).attend(q)
        y_ref, w_ref = reference(q, image)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12)
        np.testing.assert_allclose(weights, w_ref, rtol=1e-12)
        np.testing.assert_array_equal(plain, weights)  # no coverage: the same weights
        g, C = 2 * rng.standard_normal((len(image), h)), rng.random((len(image), h, L))
        got = _MemoryRows(keys, values, image).attend(q, (g, C))
        for a, b in zip(got, with_coverage(q, image, g, C), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        assert not np.allclose(got[1], got[2])


def test_float32_decoding_keeps_its_dtype_and_agrees_with_float64():
    m64 = _model()
    m32 = _model(dtype=np.float32)
    features = _features(True)
    state = m32.decode_start(features.astype(np.float32), max_length=4)
    scores, state, attention = m32.decode_step(np.ones(3, dtype=np.int64), state)
    assert scores.dtype == attention.dtype == state.rows["k0"].dtype == np.float32
    ref, _, _ = m64.decode_step(np.ones(3, dtype=np.int64), m64.decode_start(features, 4))
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-4)


def test_sampling_and_errors():
    model = _model()
    features = _features(True)
    a = sample_temperature(model, features, temperature=0.7, max_length=8, seed=5)
    np.testing.assert_array_equal(a, sample_temperature(model, features, 0.7, 8, seed=5))
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 12\]"):
        greedy_decode(model, features, max_length=13)
    with pytest.raises(ValueError, match="features must be pooled"):
        model.decode_start(features[..., :4], max_length=8)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_round_trip(tmp_path, case):
    model = _model(**CASES[case])
    grid = case != "pooled"
    cells = {"encoder": 5, **CELLS}.get(case)
    assert model.feature_shape == ((cells, D) if grid else (D,))
    path = save_checkpoint(tmp_path / "t.npz", model, extra={"note": "x"})
    loaded, state = load_checkpoint(path)
    assert type(loaded) is CaptioningTransformer
    assert loaded.config == model.config and loaded.feature_shape == model.feature_shape
    assert state["model_config"]["grid"] is grid
    for field in ("locations", "location_summary", "coverage"):
        assert state["model_config"][field] is CASES[case].get(field, False), field
        assert getattr(loaded, field) is CASES[case].get(field, False), field
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)
    features = _features(grid, L=CELLS.get(case, 5))
    np.testing.assert_array_equal(
        greedy_decode(loaded, features, max_length=8), greedy_decode(model, features, 8)
    )


def test_checkpoint_with_a_malformed_config_names_the_field(tmp_path):
    import json

    model = _model()
    path = save_checkpoint(tmp_path / "t.npz", model)
    with np.load(path) as npz:
        arrays = dict(npz)
    header = json.loads(arrays["__header__"].tobytes())
    header["model"]["num_heads"] = 3  # does not divide W = 8
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="num_heads divide wordvec_dim"):
        load_checkpoint(tmp_path / "bad.npz")
    del header["model"]["grid"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"missing \['grid'\]"):
        load_checkpoint(tmp_path / "bad.npz")


def test_checkpoint_from_before_memory_norm_and_encoder_loads_as_before(tmp_path):
    """A file whose model header lacks memory_norm, encoder_layers and locations (written
    before they existed) is the model it was: no norm, no encoder, no locations, the same
    captions."""
    import json

    model = _model(grid=True, num_cells=5)
    path = save_checkpoint(tmp_path / "t.npz", model)
    with np.load(path) as npz:
        arrays = dict(npz)
    header = json.loads(arrays["__header__"].tobytes())
    assert header["model"]["memory_norm"] is False and header["model"]["encoder_layers"] == 0
    assert header["model"]["locations"] is False
    del header["model"]["memory_norm"], header["model"]["encoder_layers"]
    del header["model"]["locations"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    loaded, _ = load_checkpoint(tmp_path / "old.npz")
    assert loaded.config == model.config and sorted(loaded.params) == sorted(model.params)
    features = _features(True)
    np.testing.assert_array_equal(
        greedy_decode(loaded, features, max_length=8), greedy_decode(model, features, 8)
    )
    header["model"]["encoder_layers"] = 1.5
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="encoder_layers"):
        load_checkpoint(tmp_path / "bad.npz")


def test_checkpoint_with_locations_checks_the_field(tmp_path):
    """``locations`` must be a boolean, on a grid model, with its W_loc arrays; a header that
    claims it without them (or the arrays without it) is refused, naming what is wrong."""
    import json

    model = _model(**CASES["locations"])
    path = save_checkpoint(tmp_path / "t.npz", model)
    with np.load(path) as npz:
        arrays = dict(npz)
    header = json.loads(arrays["__header__"].tobytes())
    assert header["model"]["locations"] is True

    def write(model_fields, drop=()):
        changed = {**header, "model": {**header["model"], **model_fields}}
        out = {k: v for k, v in arrays.items() if k not in drop}
        out["__header__"] = np.frombuffer(json.dumps(changed).encode(), np.uint8)
        np.savez(tmp_path / "bad.npz", **out)
        return tmp_path / "bad.npz"

    with pytest.raises(CheckpointError, match="locations must be true or false"):
        load_checkpoint(write({"locations": "yes"}))
    with pytest.raises(CheckpointError, match="locations must be false for a model without grid"):
        load_checkpoint(write({"grid": False, "num_cells": None}))
    with pytest.raises(CheckpointError, match=r"square grid of s\*s cells, got L=8"):
        load_checkpoint(write({"num_cells": 8}))
    with pytest.raises(CheckpointError, match="W_loc"):
        load_checkpoint(write({"locations": False}))  # arrays the architecture has not
    loc_arrays = [k for k in arrays if "W_loc" in k]
    assert len(loc_arrays) == 2
    with pytest.raises(CheckpointError, match="W_loc"):
        load_checkpoint(write({}, drop=loc_arrays))  # the architecture's arrays missing


def _checkpoint_editor(tmp_path):
    """``(arrays_of, write)``: a model's checkpoint arrays and JSON header, and a file written
    back with header fields changed and arrays dropped (what an old or hand-edited file holds)."""
    import json

    def arrays_of(model):
        path = save_checkpoint(tmp_path / "t.npz", model)
        with np.load(path) as npz:
            arrays = dict(npz)
        return arrays, json.loads(arrays["__header__"].tobytes())

    def write(arrays, header, model_fields, drop=()):
        changed = {**header, "model": {**header["model"], **model_fields}}
        out = {k: v for k, v in arrays.items() if k not in drop}
        out["__header__"] = np.frombuffer(json.dumps(changed).encode(), np.uint8)
        np.savez(tmp_path / "f.npz", **out)
        return tmp_path / "f.npz"

    return arrays_of, write


def test_checkpoint_with_location_summary_checks_the_field(tmp_path):
    """A locations file from before the summary (no location_summary in its header) loads as
    the location-only model it was; ``location_summary`` must be a boolean, needs
    locations, and its w_gate, b_gate, W_sum arrays must match the header."""
    arrays_of, write = _checkpoint_editor(tmp_path)

    old = _model(**CASES["locations"])
    arrays, header = arrays_of(old)
    assert header["model"]["location_summary"] is False
    del header["model"]["location_summary"]
    loaded, _ = load_checkpoint(write(arrays, header, {}))
    assert loaded.config == old.config and not loaded.location_summary
    features = _features(True, L=9)
    np.testing.assert_array_equal(
        greedy_decode(loaded, features, max_length=8), greedy_decode(old, features, 8)
    )
    with pytest.raises(CheckpointError, match="w_gate"):  # claims arrays the file has not
        load_checkpoint(write(arrays, header, {"location_summary": True}))

    arrays, header = arrays_of(_model(**CASES["summary"]))
    assert header["model"]["location_summary"] is True
    with pytest.raises(CheckpointError, match="location_summary must be true or false"):
        load_checkpoint(write(arrays, header, {"location_summary": 1}))
    with pytest.raises(CheckpointError, match="location_summary must be false for a model "
                       "without locations"):  # fmt: skip
        load_checkpoint(write(arrays, header, {"locations": False}))
    with pytest.raises(CheckpointError, match="W_sum"):  # arrays the architecture has not
        load_checkpoint(write(arrays, header, {"location_summary": False}))
    summary_arrays = [k for k in arrays if k.endswith(("w_gate", "b_gate", "W_sum"))]
    assert len(summary_arrays) == 6
    with pytest.raises(CheckpointError, match="b_gate"):
        load_checkpoint(write(arrays, header, {}, drop=summary_arrays[1:2]))


def test_checkpoint_with_coverage_checks_the_field(tmp_path):
    """A file from before coverage (no coverage in its header) loads as the model it was;
    ``coverage`` must be a boolean, and its c_cov arrays must match the header."""
    arrays_of, write = _checkpoint_editor(tmp_path)

    old = _model(**CASES["summary"])
    arrays, header = arrays_of(old)
    assert header["model"]["coverage"] is False
    del header["model"]["coverage"]
    loaded, _ = load_checkpoint(write(arrays, header, {}))
    assert loaded.config == old.config and not loaded.coverage
    features = _features(True, L=9)
    np.testing.assert_array_equal(
        greedy_decode(loaded, features, max_length=8), greedy_decode(old, features, 8)
    )
    with pytest.raises(CheckpointError, match="c_cov"):  # claims arrays the file has not
        load_checkpoint(write(arrays, header, {"coverage": True}))

    arrays, header = arrays_of(_model(**CASES["coverage"]))
    assert header["model"]["coverage"] is True
    with pytest.raises(CheckpointError, match="coverage must be true or false, got 'yes'"):
        load_checkpoint(write(arrays, header, {"coverage": "yes"}))
    with pytest.raises(CheckpointError, match="coverage must be true or false, got 1"):
        load_checkpoint(write(arrays, header, {"coverage": 1}))
    with pytest.raises(CheckpointError, match="c_cov"):  # arrays the architecture has not
        load_checkpoint(write(arrays, header, {"coverage": False}))
    cov_arrays = [k for k in arrays if k.endswith(("c_cov", "u_cov"))]
    assert len(cov_arrays) == 4
    with pytest.raises(CheckpointError, match="c_cov"):
        load_checkpoint(write(arrays, header, {}, drop=cov_arrays))
