"""Generating captions with any captioner, through one small step interface.

Every captioner (:class:`~captionlab.captioning.CaptioningRNN` and the grid captioners)
exposes the same two methods, and everything in this module uses only them::

    state = model.decode_start(features, max_length=L)     # a DecodeState of N rows
    scores, state, attention = model.decode_step(words, state)

``words`` (M,) are the last word of each of the state's M rows (``<START>`` first);
``scores`` (M, V) are the next word's log-probabilities up to a per-row constant (the
logits: ``nn.log_softmax(scores)`` normalises them; the arg-max needs no normalising);
``attention`` is (M, L_cells), the weights the step gave each grid cell, or ``None`` for a
model without attention. Greedy decoding, batched beam search, temperature sampling and
caption scoring are written once, here; a new captioner gets all of them by implementing
the two methods.

Dimensions: ``N`` images, ``B`` beams, ``L`` maximum caption length, ``V`` vocabulary,
``C`` grid cells attended to.

All decoders return captions as int32 arrays without ``<START>``: each caption stops at
its first ``<END>`` (kept) and is ``<NULL>`` after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from captionlab import nn
from captionlab.tokens import END, NULL, START, ids_to_text

__all__ = [
    "BeamResult",
    "DecodeState",
    "beam_search",
    "caption_logprob",
    "captions_to_text",
    "greedy_decode",
    "sample_temperature",
]


@dataclass
class DecodeState:
    """What a captioner carries from one word to the next, for M rows (hypotheses).

    Attributes:
        rows: per-row arrays, each with M as its first axis (hidden states, cached keys
            and values, the image a row belongs to, ...); the decoders reorder and drop rows.
        shared: what does not depend on the row (per-call tables, per-image arrays that
            rows index); never reordered.
    """

    rows: dict[str, np.ndarray]
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def select(self, idx: np.ndarray) -> DecodeState:
        """The rows ``idx`` (K,) of this state, in that order (repeats allowed)."""
        return DecodeState({k: v[idx] for k, v in self.rows.items()}, self.shared)

    def scatter(self, idx: np.ndarray, sub: DecodeState) -> DecodeState:
        """This state with rows ``idx`` replaced by ``sub``'s rows, in place where shapes
        allow; a row array whose per-row shape changed (a key/value cache one step longer)
        is rebuilt, zero in the rows not in ``idx``."""
        rows = {}
        for k, v in sub.rows.items():
            old = self.rows.get(k)
            if old is None or old.shape[1:] != v.shape[1:] or old.dtype != v.dtype:
                old = np.zeros((len(self), *v.shape[1:]), v.dtype)
            old[idx] = v
            rows[k] = old
        return DecodeState(rows, sub.shared)


class BeamResult(NamedTuple):
    """The best ``k`` captions per image, best first.

    Attributes:
        captions: (N, k, L) int32 words, ``<END>`` kept, ``<NULL>`` after it.
        logprobs: (N, k) summed log-probabilities of the words up to and including
            ``<END>`` (the raw model score, whatever the length penalty).
        scores: (N, k) the ranking score, ``logprobs / length_penalty_factor``.
        lengths: (N, k) number of words up to and including ``<END>``.
        attention: (N, k, L, C) the attention of every word of every kept caption (zero
            after ``<END>``), for models with attention when asked for; else ``None``.
    """

    captions: np.ndarray
    logprobs: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray
    attention: np.ndarray | None = None


def special_ids(model) -> tuple[int, int, int]:
    """``(<START>, <END>, <NULL>)`` ids of the model's vocabulary (<END> -1 when absent)."""
    w2i = model.word_to_idx
    if START not in w2i:
        raise ValueError("decoding needs '<START>' in the vocabulary (word_to_idx)")
    return w2i[START], w2i.get(END, -1), w2i[NULL]


# ---------------------------------------------------------------------------- greedy
def greedy_decode(
    model,
    features: np.ndarray,
    max_length: int = 30,
    return_attention: bool = False,
    **start_options,
):
    """Greedy decoding: at each step feed back the most likely word.

    Args:
        model: a captioner (see the module docstring).
        features: image features, (N, D) or (N, C, D) as the model takes them.
        max_length: ``L``, the number of words generated at most.
        return_attention: also return the attention of every word.
        **start_options: passed to ``model.decode_start`` (e.g. ``fold=False`` asks
            :class:`CaptioningRNN` for its reference step functions).

    Returns:
        captions (N, L) int32; with ``return_attention``, ``(captions, attention)`` where
        attention is (N, L, C) (zero after ``<END>``) or ``None`` for a model without it.
    """
    start, end, null = special_ids(model)
    state = model.decode_start(features, max_length=max_length, **start_options)
    N = len(state)
    captions = np.full((N, max_length), null, dtype=np.int32)
    attention = None
    rows = np.arange(N)  # the captions still being written
    words = np.full(N, start, dtype=np.int64)
    for t in range(max_length):
        scores, state, alpha = model.decode_step(words, state)
        words = np.argmax(scores, axis=1)  # (M,)
        captions[rows, t] = words
        if return_attention and alpha is not None:
            if attention is None:
                attention = np.zeros((N, max_length, alpha.shape[1]), dtype=alpha.dtype)
            attention[rows, t] = alpha
        alive = words != end
        if not alive.all():  # drop finished captions from the batch
            keep = np.flatnonzero(alive)
            rows, words, state = rows[keep], words[keep], state.select(keep)
            if rows.size == 0:
                break
    return (captions, attention) if return_attention else captions


# ---------------------------------------------------------------------------- sampling
def sample_temperature(
    model,
    features: np.ndarray,
    temperature: float = 1.0,
    max_length: int = 30,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Sample each word from ``softmax(scores / temperature)``.

    Args:
        model: a captioner (see the module docstring).
        features: image features, as the model takes them (N first).
        temperature: > 0; lower is more conservative, 0 means greedy.
        max_length: ``L``.
        seed: an int or ``np.random.Generator``; the same seed gives the same captions.

    Returns:
        captions (N, L) int32.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return greedy_decode(model, features, max_length=max_length)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    start, end, null = special_ids(model)
    state = model.decode_start(features, max_length=max_length)
    N = len(state)
    captions = np.full((N, max_length), null, dtype=np.int32)
    done = np.zeros(N, dtype=bool)
    words = np.full(N, start, dtype=np.int64)
    for t in range(max_length):
        scores, state, _ = model.decode_step(words, state)
        logp = nn.log_softmax(scores / temperature)  # (N, V)
        cdf = np.cumsum(np.exp(logp), axis=1)  # (N, V)
        u = rng.random((N, 1)) * cdf[:, -1:]
        words = np.minimum((cdf < u).sum(axis=1), cdf.shape[1] - 1)  # (N,)
        words[done] = null
        captions[:, t] = words
        done |= words == end
        if done.all():
            break
    return captions


# ---------------------------------------------------------------------------- beam search
def _length_factor(lengths: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT length penalty ``((5 + len) / 6) ** alpha``; 1 when ``alpha == 0``."""
    if alpha == 0:
        return np.ones(lengths.shape)
    return ((5.0 + lengths) / 6.0) ** alpha


def _topk_rows(total: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row of total (R, C), best first;
    ties go to the lower index (so k=1 is ``argmax``)."""
    if k == 1:
        return np.argmax(total, axis=1)[:, None]
    out = np.empty((total.shape[0], min(k, total.shape[1])), dtype=np.intp)
    nn.kernels.active().topk_rows(np.ascontiguousarray(total), out)
    return out


class _Beams:
    """The hypotheses of a beam search: N images x Bc beams, image n's in rows n*Bc.. ."""

    def __init__(self, N: int, max_length: int, start: int, end: int, null: int) -> None:
        self.N, self.Bc = N, 1  # all beams start equal: one row per image
        self.end, self.null = end, null
        self.image = np.arange(N)[:, None]  # (N, 1)
        self.words = np.full(N, start, dtype=np.int64)  # (N*Bc,) the last words
        self.seqs = np.full((N, 1, max_length), null, dtype=np.int32)  # (N, Bc, L)
        self.logp = np.zeros((N, 1), dtype=np.float64)  # (N, Bc)
        self.finished = np.zeros((N, 1), dtype=bool)
        self.lengths = np.zeros((N, 1), dtype=np.int64)
        self.greedy_slot = np.zeros(N, dtype=np.int64)  # the beam holding greedy's caption
        self.attention: np.ndarray | None = None  # (N, Bc, L, C)

    def step_logprobs(self, model, state: DecodeState):
        """Advance the open hypotheses one word.

        Finished hypotheses skip the step: their one continuation is ``<NULL>``, at no cost.

        Returns:
            ``(step_logp (N*Bc, V), greedy_word (N,), state, alpha (N*Bc, C) or None)``.
        """
        fin = self.finished.reshape(-1)  # (N*Bc,)
        greedy_rows = self.image[:, 0] * self.Bc + self.greedy_slot  # (N,)
        if not fin.any():
            scores, state, alpha = model.decode_step(self.words, state)  # (N*Bc, V)
            # The greedy caption's next word, chosen exactly as greedy_decode chooses it.
            greedy_word = np.argmax(scores[greedy_rows], axis=1)  # (N,)
            return nn.log_softmax(scores), greedy_word, state, alpha
        live = np.flatnonzero(~fin)  # (A,)
        scores, sub, alpha_live = model.decode_step(self.words[live], state.select(live))
        state = state.scatter(live, sub)
        greedy_word = np.full(self.N, self.null, dtype=np.int64)
        g_live = ~fin[greedy_rows]
        pos = np.cumsum(~fin) - 1  # row -> its index in live
        greedy_word[g_live] = np.argmax(scores[pos[greedy_rows[g_live]]], axis=1)
        step_logp = np.full((fin.size, scores.shape[1]), -np.inf, dtype=scores.dtype)
        step_logp[live] = nn.log_softmax(scores)
        step_logp[fin, self.null] = 0.0
        alpha = None
        if alpha_live is not None:
            alpha = np.zeros((fin.size, alpha_live.shape[1]), dtype=alpha_live.dtype)
            alpha[live] = alpha_live
        return step_logp, greedy_word, state, alpha

    def choose(self, total: np.ndarray, greedy_word: np.ndarray, width: int) -> np.ndarray:
        """The ``width`` best candidates (N, width) of total (N, Bc*V), greedy's kept."""
        V = total.shape[1] // self.Bc
        top = _topk_rows(total, width)  # (N, width)
        # Keep the greedy caption in the beam (in the last place if it fell out), so the
        # best caption returned is never less likely than greedy's.
        greedy_cand = self.greedy_slot * V + greedy_word  # (N,)
        hit = top == greedy_cand[:, None]  # (N, width)
        lost = ~hit.any(axis=1)
        top[lost, width - 1] = greedy_cand[lost]
        hit[lost, width - 1] = True
        self.greedy_slot = np.argmax(hit, axis=1)
        return top

    def extend(self, t: int, total: np.ndarray, top: np.ndarray, alpha) -> np.ndarray:
        """Make the chosen candidates top (N, width) the beams; return the state rows."""
        V = total.shape[1] // self.Bc
        self.logp = np.take_along_axis(total, top, axis=1)
        beam, words2d = np.divmod(top, V)  # (N, width) each
        rows = (self.image * self.Bc + beam).reshape(-1)  # (N*width,)
        image = self.image
        self.seqs = self.seqs[image, beam]  # (N, width, L)
        was_finished = self.finished[image, beam]
        self.lengths = self.lengths[image, beam] + ~was_finished
        self.seqs[:, :, t] = np.where(was_finished, self.null, words2d)
        if alpha is not None:
            if self.attention is None:
                L = self.seqs.shape[2]
                self.attention = np.zeros((self.N, self.Bc, L, alpha.shape[1]), alpha.dtype)
            self.attention = self.attention[image, beam]
            step = alpha[rows].reshape(self.N, top.shape[1], -1)
            self.attention[:, :, t] = np.where(was_finished[..., None], 0.0, step)
        self.finished = was_finished | (words2d == self.end)
        self.words = words2d.reshape(-1)
        self.Bc = top.shape[1]
        return rows


def beam_search(
    model,
    features: np.ndarray,
    beam_size: int = 5,
    max_length: int = 30,
    length_penalty: float = 0.0,
    top_k: int | None = None,
    return_attention: bool = False,
    **start_options,
) -> BeamResult:
    """Beam search, vectorised over images and beams together.

    All ``N * B`` hypotheses advance as one batch (one ``decode_step``); the ``B`` best
    extensions of each image are chosen among its ``B * V`` candidates at once. A finished
    hypothesis (it emitted ``<END>``) keeps its log-probability and competes with the open
    ones. The greedy caption is never pruned (it takes the last place if it would fall
    out), so the best caption's log-probability is never below greedy's, and beam size 1
    is exactly greedy decoding.

    Args:
        model: a captioner (see the module docstring).
        features: image features, as the model takes them (N first).
        beam_size: ``B`` >= 1.
        max_length: ``L``.
        length_penalty: ``alpha`` of the GNMT penalty: the final ranking divides the
            log-probability by ``((5 + length) / 6) ** alpha``; 0 ranks by log-probability.
        top_k: how many captions to return per image (default ``B``, at most ``B``).
        return_attention: keep the attention of every word of every hypothesis.
        **start_options: passed to ``model.decode_start``.

    Returns:
        a :class:`BeamResult` with (N, k, L) captions and (N, k) log-probabilities.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size if top_k is None else top_k
    if not 1 <= k <= beam_size:
        raise ValueError(f"top_k must be in [1, beam_size={beam_size}], got {top_k}")
    start, end, null = special_ids(model)
    state = model.decode_start(features, max_length=max_length, **start_options)
    beams = _Beams(len(state), max_length, start, end, null)
    N = beams.N
    for t in range(max_length):
        step_logp, greedy_word, state, alpha = beams.step_logprobs(model, state)
        total = (beams.logp.reshape(-1, 1) + step_logp).reshape(N, -1)  # (N, Bc*V)
        top = beams.choose(total, greedy_word, width=min(beam_size, total.shape[1]))
        rows = beams.extend(t, total, top, alpha if return_attention else None)
        state = state.select(rows)
        if beams.finished.all():
            break

    scores = beams.logp / _length_factor(beams.lengths, length_penalty)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k); k > Bc: Bc of them
    image = beams.image
    return BeamResult(
        captions=beams.seqs[image, order],
        logprobs=beams.logp[image, order],
        scores=scores[image, order],
        lengths=beams.lengths[image, order],
        attention=None if beams.attention is None else beams.attention[image, order],
    )


# ---------------------------------------------------------------------------- scoring
def caption_logprob(model, features: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """Log-probability the model gives to each caption (teacher forcing).

    Args:
        model: a captioner (see the module docstring).
        features: image features, as the model takes them (N first).
        captions: (N, L) words without ``<START>``, as the decoders return them; words
            after the first ``<END>`` are ignored.

    Returns:
        (N,) float64 summed log-probabilities of the words up to and including ``<END>``.
    """
    start, end, _ = special_ids(model)
    captions = np.asarray(captions)
    N, L = captions.shape
    state = model.decode_start(features, max_length=L)
    total = np.zeros(N)
    done = np.zeros(N, dtype=bool)
    words = np.full(N, start, dtype=np.int64)
    for t in range(L):
        scores, state, _ = model.decode_step(words, state)
        step_logp = nn.log_softmax(scores)  # (N, V)
        words = captions[:, t].astype(np.int64)
        total += np.where(done, 0.0, step_logp[np.arange(N), words])
        done |= words == end
    return total


def captions_to_text(captions: np.ndarray, idx_to_word) -> list[str]:
    """Turn word indices into sentences, stopping at ``<END>``.

    Args:
        captions: (N, L) integers (or (L,) for one caption).
        idx_to_word: a list or dict, index -> word.

    Returns:
        N strings of space-separated words without ``<START>``, ``<END>``, ``<NULL>``.
    """
    return ids_to_text(captions, idx_to_word)
