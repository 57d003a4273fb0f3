"""The 1000 ImageNet-1k class names, in the index order of the backbone's weights.

``CLASS_NAMES[i]`` is the usual short name of class ``i`` (the first WordNet lemma, as Keras
and most tools print it: ``CLASS_NAMES[285] == "Egyptian cat"``). ``SYNONYMS[i]`` holds all the
synset's lemmas and ``WNIDS[i]`` its WordNet id. Two names occur twice in ImageNet ("crane",
the bird 134 and the machine 517; "maillot" 638 and 639): :func:`resolve_class` reports them
as ambiguous and asks for the index.

The list is read from ``imagenet_classes.txt`` beside this module at first import (a
package-data read, no network, no writes).
"""

from __future__ import annotations

import difflib
from importlib import resources

import numpy as np

from captionlab.errors import UserError

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "SYNONYMS",
    "WNIDS",
    "decode_predictions",
    "resolve_class",
    "top_classes",
]

NUM_CLASSES = 1000


def _read_classes() -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    text = resources.files("captionlab.vision").joinpath("imagenet_classes.txt").read_text("utf-8")
    wnids, synonyms = [], []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        wnid, _, lemmas = line.partition(" ")
        wnids.append(wnid)
        synonyms.append(tuple(s.strip() for s in lemmas.split(",") if s.strip()))
    if len(wnids) != NUM_CLASSES:  # pragma: no cover - guards the shipped file
        raise RuntimeError(
            f"imagenet_classes.txt: expected {NUM_CLASSES} classes, got {len(wnids)}"
        )
    return [s[0] for s in synonyms], synonyms, wnids


CLASS_NAMES, SYNONYMS, WNIDS = _read_classes()


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


def _build_lookup() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    names: dict[str, list[int]] = {}
    lemmas: dict[str, list[int]] = {}
    for i, syns in enumerate(SYNONYMS):
        names.setdefault(_norm(syns[0]), []).append(i)
        for s in syns:
            lemmas.setdefault(_norm(s), [])
            if i not in lemmas[_norm(s)]:
                lemmas[_norm(s)].append(i)
    for i, wnid in enumerate(WNIDS):
        names[wnid.casefold()] = [i]
    return names, lemmas


_BY_NAME, _BY_LEMMA = _build_lookup()


def _describe(i: int) -> str:
    return f"{i} {CLASS_NAMES[i]!r} ({', '.join(SYNONYMS[i][1:3]) or WNIDS[i]})"


def resolve_class(name_or_index: str | int) -> int:
    """A class index (0..999), a class name, a synonym or a WordNet id -> the class index.

    Names match case-insensitively, with ``_`` as a space. A class's own name wins over
    another class's synonym ("tiger" is 292, not a synonym of 282 "tiger cat"). Unknown or
    ambiguous names raise :class:`UserError` with close matches or the candidate indices.
    """
    if isinstance(name_or_index, bool):
        raise UserError(f"class must be an index 0..999 or a name, got {name_or_index!r}")
    if isinstance(name_or_index, int | np.integer):
        index = int(name_or_index)
        if not 0 <= index < NUM_CLASSES:
            raise UserError(f"class index must be in 0..{NUM_CLASSES - 1}, got {index}")
        return index
    if not isinstance(name_or_index, str):
        raise UserError(f"class must be an index 0..999 or a name, got {name_or_index!r}")
    text = name_or_index.strip()
    if text.lstrip("-").isdigit():
        return resolve_class(int(text))
    key = _norm(text)
    for table in (_BY_NAME, _BY_LEMMA):
        hits = table.get(key)
        if hits and len(hits) == 1:
            return hits[0]
        if hits:
            options = "; ".join(_describe(i) for i in hits)
            raise UserError(f"class name {text!r} is ambiguous: {options}; give the index")
    close = difflib.get_close_matches(key, list(_BY_LEMMA), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"unknown ImageNet class {text!r}: expected an index 0..999, a class name "
        f"or a synonym{hint}"
    )


def _top(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of the k most probable classes of probs (N, 1000), best first."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def decode_predictions(logits: np.ndarray, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """logits (N, 1000) -> for each image the top ``k`` ``(index, name, probability)``.

    Probabilities are the softmax of the logits (computed stably, in float64).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != NUM_CLASSES:
        raise ValueError(f"logits must be (N, {NUM_CLASSES}), got {z.shape}")
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)  # (N, 1000)
    return [
        [(int(i), CLASS_NAMES[i], float(row[i])) for i in idx]
        for idx, row in zip(_top(p, k), p, strict=True)
    ]


def top_classes(probs: np.ndarray, k: int) -> list[dict]:
    """probs (1000,) of one image -> its top ``k`` as ``{"index", "name", "prob"}``."""
    p = np.asarray(probs, dtype=np.float64).reshape(1, -1)
    return [
        {"index": int(i), "name": CLASS_NAMES[i], "prob": float(p[0, i])} for i in _top(p, k)[0]
    ]
