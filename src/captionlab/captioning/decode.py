"""Decoding captions from a trained :class:`~captionlab.captioning.model.CaptioningRNN`.

Dimensions: ``N`` images, ``B`` beams, ``L`` maximum caption length, ``V`` vocabulary,
``H`` hidden size, ``G`` gates (1 rnn, 4 lstm, 3 gru).

Every decoder feeds back one word per step. The word's input pre-activation
``W_embed[word] @ Wx + b`` does not depend on time, so it is folded once per call into a
table ``(V, G*H)``; each step then looks up a row of the table and computes only
``h @ Wh`` and ``h @ W_vocab``. The table costs ``V`` rows of ``x @ Wx``; it is built
(``fold=None``, the default) when a call feeds back at least ``V`` words in all. The gate
arithmetic after that lookup is :func:`cell_step_from_input`; with ``fold=False`` each
decoder instead calls the ``captionlab.nn`` step functions themselves (the reference; the
tests check both agree).

All decoders return captions as int32 arrays without ``<START>``: each caption stops at
its first ``<END>`` (kept) and is ``<NULL>`` after it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from captionlab import nn


class BeamResult(NamedTuple):
    """The best ``k`` captions per image, best first.

    Attributes:
        captions: (N, k, L) int32 words, ``<END>`` kept, ``<NULL>`` after it.
        logprobs: (N, k) summed log-probabilities of the words up to and including
            ``<END>`` (the raw model score, whatever the length penalty).
        scores: (N, k) the ranking score, ``logprobs / length_penalty_factor``.
        lengths: (N, k) number of words up to and including ``<END>``.
    """

    captions: np.ndarray
    logprobs: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray


# ---------------------------------------------------------------------------- one step
class _Stepper:
    """Advances the recurrence by one fed-back word for a batch of rows.

    The state is ``(h, c)``: h (M, H), c (M, H) for the LSTM and ``None`` otherwise.
    """

    def __init__(self, model, fold: bool | None, lookups: int) -> None:
        p = model.params
        if fold is None:  # the table pays off once it replaces at least V input rows
            fold = lookups >= p["W_embed"].shape[0]
        self.cell = model.cell_type
        self.fold = fold
        self.p = p
        self.H = p["Wh"].shape[0]
        if fold:
            # Hoisted out of the time loop: the input pre-activation of every word.
            self.table = p["W_embed"] @ p["Wx"] + p["b"]  # (V, G*H)

    def __call__(self, words: np.ndarray, h: np.ndarray, c: np.ndarray | None):
        """words (M,) int, h (M, H), c (M, H) or None -> next (h, c)."""
        p = self.p
        if self.fold:
            return cell_step_from_input(self.cell, self.table[words], h, c, p["Wh"], p.get("bh"))
        x = p["W_embed"][words]  # (M, W)
        if self.cell == "rnn":
            return nn.rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])[0], None
        if self.cell == "lstm":
            next_h, next_c, _ = nn.lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
            return next_h, next_c
        return nn.gru_step_forward(x, h, p["Wx"], p["Wh"], p["b"], p["bh"])[0], None


def cell_step_from_input(
    cell_type: str,
    xa: np.ndarray,
    prev_h: np.ndarray,
    prev_c: np.ndarray | None,
    Wh: np.ndarray,
    bh: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One recurrent step given the input pre-activation ``xa = x @ Wx + b``.

    Dispatches to ``captionlab.nn``'s ``rnn_cell_forward`` / ``lstm_cell_forward`` /
    ``gru_cell_forward``, the very functions the step layers use after computing
    ``x @ Wx + b``, so decoding has no second copy of the recurrence.

    Args:
        cell_type: ``'rnn'``, ``'lstm'`` or ``'gru'``.
        xa: input pre-activation (M, G*H).
        prev_h: (M, H).
        prev_c: (M, H) for the LSTM, else ignored.
        Wh: (H, G*H).
        bh: (3H,), the GRU's recurrent bias.

    Returns:
        ``(next_h, next_c)``, each (M, H); ``next_c`` is ``None`` except for the LSTM.
    """
    if cell_type == "rnn":
        return nn.rnn_cell_forward(xa, prev_h, Wh), None
    if cell_type == "lstm":
        next_h, next_c, _ = nn.lstm_cell_forward(xa, prev_h, prev_c, Wh)
        return next_h, next_c
    return nn.gru_cell_forward(xa, prev_h, Wh, bh)[0], None


def _vocab_scores(model, h: np.ndarray) -> np.ndarray:
    """h (M, H) -> word scores (M, V)."""
    scores = h @ model.params["W_vocab"]
    scores += model.params["b_vocab"]
    return scores


def _start_state(model, features: np.ndarray):
    h0 = model.initial_state(features)  # (N, H)
    c0 = np.zeros_like(h0) if model.cell_type == "lstm" else None
    return h0, c0


def _require_tokens(model) -> tuple[int, int, int]:
    if model._start is None:
        raise ValueError("decoding needs '<START>' in the vocabulary (word_to_idx)")
    end = -1 if model._end is None else model._end
    return model._start, end, model._null


# ---------------------------------------------------------------------------- decoders
def greedy_decode(
    model, features: np.ndarray, max_length: int = 30, fold: bool | None = None
) -> np.ndarray:
    """Greedy decoding: at each step feed back the most likely word.

    Args:
        model: a :class:`CaptioningRNN`.
        features: image features (N, D).
        max_length: ``L``, the number of words generated at most.
        fold: fold the input projection into a table (fast for many words); ``False``
            calls the ``captionlab.nn`` step functions (the reference); ``None`` decides
            by size.

    Returns:
        captions (N, L) int32.
    """
    start, end, null = _require_tokens(model)
    h, c = _start_state(model, features)
    N = h.shape[0]
    step = _Stepper(model, fold, lookups=N * max_length)
    captions = np.full((N, max_length), null, dtype=np.int32)
    rows = np.arange(N)  # the captions still being written
    words = np.full(N, start, dtype=np.int64)
    for t in range(max_length):
        h, c = step(words, h, c)
        words = np.argmax(_vocab_scores(model, h), axis=1)  # (M,)
        captions[rows, t] = words
        alive = words != end
        if not alive.all():  # drop finished captions from the batch
            rows, words, h = rows[alive], words[alive], h[alive]
            c = None if c is None else c[alive]
            if rows.size == 0:
                break
    return captions


def sample_temperature(
    model,
    features: np.ndarray,
    temperature: float = 1.0,
    max_length: int = 30,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Sample each word from ``softmax(scores / temperature)``.

    Args:
        model: a :class:`CaptioningRNN`.
        features: image features (N, D).
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
    start, end, null = _require_tokens(model)
    h, c = _start_state(model, features)
    N = h.shape[0]
    step = _Stepper(model, None, lookups=N * max_length)
    captions = np.full((N, max_length), null, dtype=np.int32)
    done = np.zeros(N, dtype=bool)
    words = np.full(N, start, dtype=np.int64)
    for t in range(max_length):
        h, c = step(words, h, c)
        logp = nn.log_softmax(_vocab_scores(model, h) / temperature)  # (N, V)
        cdf = np.cumsum(np.exp(logp), axis=1)  # (N, V)
        u = rng.random((N, 1)) * cdf[:, -1:]
        words = np.minimum((cdf < u).sum(axis=1), cdf.shape[1] - 1)  # (N,)
        words[done] = null
        captions[:, t] = words
        done |= words == end
        if done.all():
            break
    return captions


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
    if k < total.shape[1]:
        idx = np.sort(np.argpartition(-total, k - 1, axis=1)[:, :k], axis=1)
    else:
        idx = np.broadcast_to(np.arange(total.shape[1]), total.shape).copy()
    vals = np.take_along_axis(total, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def beam_search(
    model,
    features: np.ndarray,
    beam_size: int = 5,
    max_length: int = 30,
    length_penalty: float = 0.0,
    top_k: int | None = None,
    fold: bool | None = None,
) -> BeamResult:
    """Beam search, vectorised over images and beams together.

    All ``N * B`` hypotheses advance as one batch (one ``h @ Wh`` and one
    ``h @ W_vocab`` matmul per step); the ``B`` best extensions of each image are chosen
    among its ``B * V`` candidates at once. A finished hypothesis (it emitted ``<END>``)
    keeps its log-probability and competes with the open ones. The greedy caption is
    never pruned (it takes the last place if it would fall out), so the best caption's
    log-probability is never below greedy's, and beam size 1 is exactly greedy decoding.

    Args:
        model: a :class:`CaptioningRNN`.
        features: image features (N, D).
        beam_size: ``B`` >= 1.
        max_length: ``L``.
        length_penalty: ``alpha`` of the GNMT penalty: the final ranking divides the
            log-probability by ``((5 + length) / 6) ** alpha``; 0 ranks by log-probability.
        top_k: how many captions to return per image (default ``B``, at most ``B``).
        fold: see :func:`greedy_decode`.

    Returns:
        a :class:`BeamResult` with (N, k, L) captions and (N, k) log-probabilities.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size if top_k is None else top_k
    if not 1 <= k <= beam_size:
        raise ValueError(f"top_k must be in [1, beam_size={beam_size}], got {top_k}")
    start, end, null = _require_tokens(model)
    h, c = _start_state(model, features)  # (N, H)
    N, B = h.shape[0], beam_size
    V = model.params["W_vocab"].shape[1]
    step = _Stepper(model, fold, lookups=N * B * max_length)

    # All beams of an image start equal, so the first step runs one row per image; from
    # then on the batch holds Bc = min(B, candidates) beams per image, image n's beams in
    # rows n*Bc .. n*Bc+Bc-1.
    Bc = 1
    words = np.full(N, start, dtype=np.int64)  # (N*Bc,)
    seqs = np.full((N, 1, max_length), null, dtype=np.int32)  # (N, Bc, L)
    logp = np.zeros((N, 1), dtype=np.float64)  # (N, Bc)
    finished = np.zeros((N, 1), dtype=bool)
    lengths = np.zeros((N, 1), dtype=np.int64)
    image = np.arange(N)[:, None]  # (N, 1)
    greedy_slot = np.zeros(N, dtype=np.int64)  # the beam that holds the greedy caption

    for t in range(max_length):
        fin = finished.reshape(-1)  # (N*Bc,)
        greedy_rows = image[:, 0] * Bc + greedy_slot  # (N,)
        if not fin.any():
            h, c = step(words, h, c)  # (N*Bc, H)
            scores = _vocab_scores(model, h)  # (N*Bc, V)
            # The greedy caption's next word, chosen exactly as greedy_decode chooses it.
            greedy_word = np.argmax(scores[greedy_rows], axis=1)  # (N,)
            step_logp = nn.log_softmax(scores)  # (N*Bc, V)
        else:
            # Finished hypotheses need no step: their one continuation is <NULL>, at no cost.
            live = np.flatnonzero(~fin)  # (A,)
            h_live, c_live = step(words[live], h[live], None if c is None else c[live])
            h[live] = h_live
            if c is not None:
                c[live] = c_live
            scores = _vocab_scores(model, h_live)  # (A, V)
            greedy_word = np.full(N, null, dtype=np.int64)
            g_live = ~fin[greedy_rows]
            pos = np.cumsum(~fin) - 1  # row -> its index in live
            greedy_word[g_live] = np.argmax(scores[pos[greedy_rows[g_live]]], axis=1)
            step_logp = np.full((N * Bc, V), -np.inf, dtype=scores.dtype)
            step_logp[live] = nn.log_softmax(scores)
            step_logp[fin, null] = 0.0
        total = (logp.reshape(-1, 1) + step_logp).reshape(N, Bc * V)  # (N, Bc*V)
        width = min(B, Bc * V)
        top = _topk_rows(total, width)  # (N, width)
        # Keep the greedy caption in the beam (in the last place if it fell out), so the
        # best caption returned is never less likely than greedy's.
        greedy_cand = greedy_slot * V + greedy_word  # (N,)
        hit = top == greedy_cand[:, None]  # (N, width)
        lost = ~hit.any(axis=1)
        top[lost, width - 1] = greedy_cand[lost]
        hit[lost, width - 1] = True
        greedy_slot = np.argmax(hit, axis=1)
        logp = np.take_along_axis(total, top, axis=1)
        beam, words2d = np.divmod(top, V)  # (N, width) each
        rows = (image * Bc + beam).reshape(-1)  # (N*width,)
        h = h[rows]
        c = None if c is None else c[rows]
        seqs = seqs[image, beam]  # (N, width, L)
        was_finished = finished[image, beam]
        lengths = lengths[image, beam] + ~was_finished
        seqs[:, :, t] = np.where(was_finished, null, words2d)
        finished = was_finished | (words2d == end)
        words = words2d.reshape(-1)
        Bc = width
        if finished.all():
            break

    scores = logp / _length_factor(lengths, length_penalty)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k); k > Bc: Bc of them
    return BeamResult(
        captions=seqs[image, order],
        logprobs=logp[image, order],
        scores=scores[image, order],
        lengths=lengths[image, order],
    )


def caption_logprob(model, features: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """Log-probability the model gives to each caption (teacher forcing).

    Args:
        model: a :class:`CaptioningRNN`.
        features: image features (N, D).
        captions: (N, L) words without ``<START>``, as the decoders return them; words
            after the first ``<END>`` are ignored.

    Returns:
        (N,) float64 summed log-probabilities of the words up to and including ``<END>``.
    """
    start, end, _ = _require_tokens(model)
    captions = np.asarray(captions)
    h, c = _start_state(model, features)
    N, L = captions.shape
    step = _Stepper(model, None, lookups=N * L)
    total = np.zeros(N)
    done = np.zeros(N, dtype=bool)
    words = np.full(N, start, dtype=np.int64)
    for t in range(L):
        h, c = step(words, h, c)
        step_logp = nn.log_softmax(_vocab_scores(model, h))  # (N, V)
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
    captions = np.atleast_2d(np.asarray(captions))
    out = []
    for row in captions:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word == "<END>":
                break
            if word not in ("<NULL>", "<START>"):
                words.append(word)
        out.append(" ".join(words))
    return out
