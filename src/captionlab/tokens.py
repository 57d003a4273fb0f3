"""The special tokens and word ids -> text, written once for every package.

Special tokens (as in cs231n's ``coco2014_vocab.json``)::

    <NULL> = 0   padding; masked out of the loss
    <START> = 1  first input token of every caption
    <END> = 2    last output token of every caption
    <UNK> = 3    any word outside the vocabulary

This module has no dependencies beyond NumPy, so that both :mod:`captionlab.data` (the
vocabulary, cs231n's ``decode_captions``) and :mod:`captionlab.captioning` (decoders,
solver) use the same code without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
SPECIAL_TOKENS = (NULL, START, END, UNK)

__all__ = ["END", "NULL", "SPECIAL_TOKENS", "START", "UNK", "ids_to_text"]


def ids_to_text(
    captions: np.ndarray,
    idx_to_word: Sequence[str] | Mapping[int, str],
    keep_boundaries: bool = False,
) -> list[str]:
    """Word ids -> sentences: ``<NULL>`` is skipped and each caption stops at ``<END>``.

    Args:
        captions: (N, T) integer ids, or (T,) for one caption.
        idx_to_word: a list or dict, id -> word.
        keep_boundaries: keep ``<START>`` and ``<END>`` in the text (cs231n's
            ``decode_captions`` does); otherwise they are dropped.

    Returns:
        N strings of space-separated words.
    """
    captions = np.atleast_2d(np.asarray(captions))
    dropped = (NULL,) if keep_boundaries else (NULL, START, END)
    out = []
    for row in captions:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word not in dropped:
                words.append(word)
            if word == END:
                break
        out.append(" ".join(words))
    return out
