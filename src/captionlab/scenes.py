"""The relations of a shapes scene, shared by its generator and its scorer.

:mod:`captionlab.data.shapes` draws scenes and lists the relations that hold between their
objects; :mod:`captionlab.captioning.scene_accuracy` checks the relations a caption names.
Neither package imports the other, so the words they share live here, once.
"""

from __future__ import annotations

RELATIONS = ("left of", "right of", "above", "below")
#: ``A left of B`` holds exactly when ``B right of A`` does.
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

__all__ = ["INVERSE", "RELATIONS"]
