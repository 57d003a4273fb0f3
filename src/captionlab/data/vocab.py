"""Tokenization, the vocabulary, and caption <-> index arrays.

Special tokens (:mod:`captionlab.tokens`, as in cs231n's ``coco2014_vocab.json``): ``<NULL>``
= 0 (padding, masked out of the loss), ``<START>`` = 1, ``<END>`` = 2, ``<UNK>`` = 3.

An encoded caption is a row of ``max_length + 1`` int32 ids
``<START> w1 ... wk <END> <NULL> ... <NULL>`` (cs231n uses 17 columns: ``max_length=16``).
The model reads ``captions[:, :-1]`` and predicts ``captions[:, 1:]``, so ``max_length`` is the
number of predicted tokens: at most ``max_length - 1`` words plus ``<END>``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from captionlab._atomic import write_json
from captionlab.data._io import read_json
from captionlab.errors import DataError
from captionlab.tokens import END, NULL, SPECIAL_TOKENS, START, UNK, ids_to_text

__all__ = [
    "END",
    "NULL",
    "SPECIAL_TOKENS",
    "START",
    "UNK",
    "Vocabulary",
    "decode_captions",
    "strip_special",
    "tokenize",
]
VOCAB_FORMAT = "captionlab-vocab"
VOCAB_VERSION = 1

# A word is letters/digits, optionally with an inner apostrophe or hyphen ("don't", "t-shirt").
_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words; punctuation is split off and dropped.

    >>> tokenize("A Red circle, left of a BLUE square.")
    ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']

    Dropping punctuation follows Karpathy's ``tokens`` and the PTB tokenizer used by the COCO
    metrics, so the vocabulary holds words only.
    """
    return _WORD.findall(text.lower())


class Vocabulary:
    """Words <-> ids, with the four special tokens first.

    Attributes:
        word_to_idx: dict word -> id.
        idx_to_word: list id -> word (``idx_to_word[0] == "<NULL>"``).
    """

    def __init__(self, idx_to_word: Sequence[str]):
        idx_to_word = list(idx_to_word)
        bad = next((w for w in idx_to_word if not isinstance(w, str)), None)
        if bad is not None:
            raise DataError(f"vocabulary words must be strings, got {bad!r:.40}")
        if tuple(idx_to_word[:4]) != SPECIAL_TOKENS:
            raise DataError(
                f"vocabulary must start with {list(SPECIAL_TOKENS)}, got {idx_to_word[:4]}"
            )
        if len(set(idx_to_word)) != len(idx_to_word):
            dup = [w for w, c in Counter(idx_to_word).items() if c > 1][:5]
            raise DataError(f"vocabulary has duplicate words: {dup}")
        self.idx_to_word: list[str] = idx_to_word
        self.word_to_idx: dict[str, int] = {w: i for i, w in enumerate(idx_to_word)}

    def __len__(self) -> int:
        return len(self.idx_to_word)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx_to_word == other.idx_to_word

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Vocabulary of the words that occur at least ``min_count`` times in ``captions``.

        Words are ordered by decreasing count, ties alphabetically, so the same captions
        always give the same ids. Rarer words become ``<UNK>`` when encoding.
        """
        if min_count < 1:
            raise DataError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted(
            (w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        return cls([*SPECIAL_TOKENS, *words])

    def unknown_fraction(self, captions: Iterable[str]) -> float:
        """The fraction of the words of ``captions`` that are not in the vocabulary."""
        total = unknown = 0
        for caption in captions:
            for word in tokenize(caption):
                total += 1
                unknown += word not in self.word_to_idx
        return unknown / total if total else 0.0

    def to_dict(self) -> dict:
        """The JSON form: cs231n's two keys plus a format tag."""
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "idx_to_word": self.idx_to_word,
            "word_to_idx": self.word_to_idx,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> Vocabulary:
        """Read cs231n's ``{"idx_to_word": [...], "word_to_idx": {...}}`` (or ours)."""
        if not isinstance(d, dict) or not isinstance(d.get("idx_to_word"), list):
            raise DataError(f"{source}: missing field 'idx_to_word' (a list of words)")
        vocab = cls(d["idx_to_word"])
        w2i = d.get("word_to_idx")
        if w2i is not None and w2i != vocab.word_to_idx:
            raise DataError(
                f"{source}: fields 'word_to_idx' and 'idx_to_word' disagree "
                f"({len(w2i)} vs {len(vocab)} words)"
            )
        return vocab

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON, atomically."""
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Load a vocabulary saved by :meth:`save` or cs231n's ``coco2014_vocab.json``."""
        return cls.from_dict(read_json(path), source=str(path))

    def encode(self, captions: Sequence[str], max_length: int = 16) -> tuple[np.ndarray, int]:
        """Encode captions as ``<START> w1 .. wk <END> <NULL> ..`` rows.

        Args:
            captions: N caption strings.
            max_length: predicted tokens per caption (words + ``<END>``); a caption longer
                than ``max_length - 1`` words keeps its first ``max_length - 1`` words.

        Returns:
            ids: (N, max_length + 1) int32.
            n_truncated: how many captions were cut.
        """
        if max_length < 2:
            raise DataError(f"max_length must be >= 2 (a word and <END>), got {max_length}")
        N = len(captions)
        ids = np.zeros((N, max_length + 1), dtype=np.int32)  # (N, max_length+1), <NULL> = 0
        unk = self.word_to_idx[UNK]
        n_truncated = 0
        for i, caption in enumerate(captions):
            words = tokenize(caption)
            if len(words) > max_length - 1:
                words = words[: max_length - 1]
                n_truncated += 1
            row = [1, *(self.word_to_idx.get(w, unk) for w in words), 2]
            ids[i, : len(row)] = row
        return ids, n_truncated

    def to_text(self, ids: np.ndarray) -> list[str]:
        """(N, T) or (T,) ids -> N plain captions: words up to ``<END>``, special tokens removed."""
        return ids_to_text(ids, self.idx_to_word)


def decode_captions(captions: np.ndarray, idx_to_word: Sequence[str]) -> list[str] | str:
    """Turn id rows back into strings, as cs231n's ``coco_utils.decode_captions``.

    ``<NULL>`` is skipped and decoding stops after ``<END>``; ``<START>`` and ``<END>`` are
    kept in the text, as in cs231n.

    Args:
        captions: (N, T) or (T,) integer ids.
        idx_to_word: list id -> word.

    Returns:
        N strings, or one string when ``captions`` is 1-d.
    """
    decoded = ids_to_text(captions, idx_to_word, keep_boundaries=True)
    return decoded[0] if np.ndim(captions) == 1 else decoded


def strip_special(text: str) -> str:
    """Remove ``<START>``, ``<END>``, ``<NULL>`` from a decoded caption (for metrics)."""
    return " ".join(w for w in text.split() if w not in (NULL, START, END))
