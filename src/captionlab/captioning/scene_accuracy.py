"""Scene accuracy: is what a caption says true of the scene, and does it say what is there?

Inputs are plain dicts, so this module needs no file or parser:

* a **parsed caption** (``captionlab.data.shapes.parse_caption``)::

      {"objects": [{"size": "small"|None, "colour": "red"|None, "shape": "circle"}, ...],
       "relations": [{"subject": 0, "relation": "left of", "object": 1}, ...],   # mention ids
       "count": 2}

* a **scene** (an entry of ``scenes.json``)::

      {"objects": [{"size", "colour", "shape", ...}, ...],
       "relations": [{"subject": i, "relation": "left of", "object": j}, ...]}   # object ids

Definitions (micro-averaged: counts are pooled over all images, then divided):

* **Object precision / recall / F1.** A named object (a *mention*) matches a true object when
  size, colour and shape are all equal; each true object matches at most one mention. A
  mention without a size or colour matches nothing. precision = matched mentions / mentions
  (naming something absent costs precision), recall = matched true objects / true objects
  (omitting something present costs recall), F1 their harmonic mean.
* **Attribute accuracy.** Each mention is paired with a true object of the same shape (one
  to one, exact matches first, then the object agreeing on most attributes). Over paired
  mentions, the fraction of size and colour values that are right; a missing value is wrong.
  ``size_accuracy`` and ``colour_accuracy`` give the two parts. Mentions of a shape that is
  not in the scene are not paired (they already cost object precision).
* **Count accuracy.** The fraction of captions whose count (the number stated, as in "two
  shapes", else the number of objects named) equals the number of objects in the scene.
* **Relation accuracy.** Each relation named links two mentions; it is right when both are
  paired (as for attributes) with true objects and the scene holds that relation between
  them (``A left of B`` also holds when the scene lists ``B right of A``). A relation whose
  mentions cannot be paired is wrong.

A ratio whose denominator is zero (no relation named anywhere, say) is ``None``, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from captionlab.scenes import INVERSE


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _triple(o: dict) -> tuple:
    return (o.get("size"), o.get("colour"), o.get("shape"))


def match_objects(mentions: Sequence[dict], truth: Sequence[dict]) -> tuple[list, list]:
    """Match mentions to true objects.

    Returns:
        exact: per mention, the index of the true object with equal size, colour and shape
            (one to one), or None.
        paired: per mention, the index of a true object of the same shape (one to one; exact
            matches first, then the most agreeing attributes, then the first), or None.
    """
    exact: list[int | None] = [None] * len(mentions)
    used: set[int] = set()
    for m, mention in enumerate(mentions):
        if mention.get("size") is None or mention.get("colour") is None:
            continue
        for t, obj in enumerate(truth):
            if t not in used and _triple(obj) == _triple(mention):
                exact[m] = t
                used.add(t)
                break
    paired: list[int | None] = list(exact)
    for m, mention in enumerate(mentions):
        if paired[m] is not None:
            continue
        best, best_score = None, -1
        for t, obj in enumerate(truth):
            if t in used or obj.get("shape") != mention.get("shape"):
                continue
            score = (obj.get("size") == mention.get("size")) + (
                obj.get("colour") == mention.get("colour")
            )
            if score > best_score:
                best, best_score = t, score
        if best is not None:
            paired[m] = best
            used.add(best)
    return exact, paired


def score_caption(parsed: dict, scene: dict) -> dict:
    """The counts behind :func:`scene_accuracy` for one caption and its scene."""
    mentions, truth = parsed.get("objects", []), scene["objects"]
    exact, paired = match_objects(mentions, truth)
    size_ok = colour_ok = n_paired = 0
    for m, t in enumerate(paired):
        if t is None:
            continue
        n_paired += 1
        size_ok += mentions[m].get("size") == truth[t]["size"]
        colour_ok += mentions[m].get("colour") == truth[t]["colour"]
    holds = {(r["subject"], r["relation"], r["object"]) for r in scene.get("relations", [])}
    rel_ok = 0
    named = parsed.get("relations", [])
    for r in named:
        a, b = r["subject"], r["object"]
        if not (0 <= a < len(paired) and 0 <= b < len(paired)):
            continue
        ta, tb = paired[a], paired[b]
        if ta is None or tb is None:
            continue
        rel = r["relation"]
        rel_ok += (ta, rel, tb) in holds or (tb, INVERSE.get(rel), ta) in holds
    return {
        "mentions": len(mentions),
        "objects": len(truth),
        "matched": sum(t is not None for t in exact),
        "paired": n_paired,
        "size_correct": size_ok,
        "colour_correct": colour_ok,
        "count_correct": int(parsed.get("count", len(mentions)) == len(truth)),
        "relations_named": len(named),
        "relations_correct": rel_ok,
    }


def scene_accuracy(parsed: list[dict], scenes: list[dict], per_image: bool = False) -> dict:
    """Scene accuracy of N parsed captions against their N scenes (see the module docstring).

    Args:
        parsed: N parsed captions, ``parsed[i]`` describing ``scenes[i]``.
        scenes: N scenes.
        per_image: also return ``"per_image"``, the N count dicts of :func:`score_caption`.

    Returns:
        ``object_precision``, ``object_recall``, ``object_f1``, ``attribute_accuracy``,
        ``size_accuracy``, ``colour_accuracy``, ``count_accuracy``, ``relation_accuracy``
        (floats in [0, 1] or None), and the counts ``n_captions``, ``n_mentions``,
        ``n_objects``, ``n_paired``, ``n_relations_named``.
    """
    if len(parsed) != len(scenes):
        raise ValueError(
            f"parsed and scenes must have equal length, got {len(parsed)} and {len(scenes)}"
        )
    rows = [score_caption(p, s) for p, s in zip(parsed, scenes, strict=True)]
    tot = {k: sum(r[k] for r in rows) for k in rows[0]} if rows else {}
    g = tot.get
    precision = _ratio(g("matched", 0), g("mentions", 0))
    recall = _ratio(g("matched", 0), g("objects", 0))
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "object_precision": precision,
        "object_recall": recall,
        "object_f1": f1,
        "attribute_accuracy": _ratio(
            g("size_correct", 0) + g("colour_correct", 0), 2 * g("paired", 0)
        ),
        "size_accuracy": _ratio(g("size_correct", 0), g("paired", 0)),
        "colour_accuracy": _ratio(g("colour_correct", 0), g("paired", 0)),
        "count_accuracy": _ratio(g("count_correct", 0), len(rows)),
        "relation_accuracy": _ratio(g("relations_correct", 0), g("relations_named", 0)),
        "n_captions": len(rows),
        "n_mentions": g("mentions", 0),
        "n_objects": g("objects", 0),
        "n_paired": g("paired", 0),
        "n_relations_named": g("relations_named", 0),
    }
    if per_image:
        out["per_image"] = rows
    return out
