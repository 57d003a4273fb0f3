"""Scene accuracy on hand-made scenes and parsed captions with known answers."""

import pytest

from captionlab.captioning.scene_accuracy import match_objects, scene_accuracy


def obj(size, colour, shape):
    return {"size": size, "colour": colour, "shape": shape}


def rel(a, r, b):
    return {"subject": a, "relation": r, "object": b}


# small red circle (0) left of large blue square (1); both directions listed
SCENE = {
    "objects": [obj("small", "red", "circle"), obj("large", "blue", "square")],
    "relations": [rel(0, "left of", 1), rel(1, "right of", 0)],
}


def caption(objects, relations=(), count=None):
    return {
        "objects": list(objects),
        "relations": list(relations),
        "count": len(objects) if count is None else count,
    }


def test_perfect_caption_scores_one_everywhere():
    p = caption([obj("small", "red", "circle"), obj("large", "blue", "square")],
                [rel(0, "left of", 1)])  # fmt: skip
    acc = scene_accuracy([p], [SCENE])
    for k in ("object_precision", "object_recall", "object_f1", "attribute_accuracy",
              "count_accuracy", "relation_accuracy"):  # fmt: skip
        assert acc[k] == 1.0, k
    assert acc["n_mentions"] == 2 and acc["n_objects"] == 2 and acc["n_relations_named"] == 1


def test_naming_something_absent_costs_precision_omitting_costs_recall():
    extra = caption([obj("small", "red", "circle"), obj("large", "blue", "square"),
                     obj("small", "green", "star")])  # fmt: skip
    acc = scene_accuracy([extra], [SCENE])
    assert acc["object_precision"] == pytest.approx(2 / 3) and acc["object_recall"] == 1.0
    assert acc["object_f1"] == pytest.approx(0.8)
    assert acc["count_accuracy"] == 0.0
    assert acc["attribute_accuracy"] == 1.0  # the star has no same-shape object: unpaired
    short = caption([obj("small", "red", "circle")])
    acc = scene_accuracy([short], [SCENE])
    assert acc["object_precision"] == 1.0 and acc["object_recall"] == 0.5
    assert acc["relation_accuracy"] is None  # nothing named: undefined, not 0


def test_wrong_attribute_is_an_object_miss_and_half_attribute_accuracy():
    p = caption([obj("small", "green", "circle"), obj("large", "blue", "square")])
    acc = scene_accuracy([p], [SCENE])
    assert acc["object_precision"] == 0.5 and acc["object_recall"] == 0.5
    assert acc["colour_accuracy"] == 0.5 and acc["size_accuracy"] == 1.0
    assert acc["attribute_accuracy"] == 0.75
    missing = caption([obj(None, "red", "circle")])  # size not said: no exact match
    acc = scene_accuracy([missing], [SCENE])
    assert acc["object_precision"] == 0.0 and acc["size_accuracy"] == 0.0
    assert acc["colour_accuracy"] == 1.0


def test_relations_right_inverse_and_wrong():
    objs = [obj("large", "blue", "square"), obj("small", "red", "circle")]
    inverse = caption(objs, [rel(0, "right of", 1)])  # stated via the other object
    wrong = caption(objs, [rel(0, "left of", 1)])
    vertical = caption(objs, [rel(0, "above", 1)])
    acc = scene_accuracy([inverse, wrong, vertical], [SCENE] * 3)
    assert acc["relation_accuracy"] == pytest.approx(1 / 3)
    # a wrong colour still pairs by shape, so the relation is judged on the paired objects
    recoloured = caption([obj("small", "green", "circle"), obj("large", "blue", "square")],
                         [rel(0, "left of", 1)])  # fmt: skip
    assert scene_accuracy([recoloured], [SCENE])["relation_accuracy"] == 1.0
    unpaired = caption([obj("small", "red", "star"), obj("large", "blue", "square")],
                       [rel(0, "left of", 1)])  # fmt: skip
    assert scene_accuracy([unpaired], [SCENE])["relation_accuracy"] == 0.0


def test_counts_pool_over_captions_and_explicit_count_is_used():
    good = caption([obj("small", "red", "circle"), obj("large", "blue", "square")])
    says_three = caption(good["objects"], count=3)
    acc = scene_accuracy([good, says_three], [SCENE, SCENE], per_image=True)
    assert acc["count_accuracy"] == 0.5
    assert [r["count_correct"] for r in acc["per_image"]] == [1, 0]
    assert acc["n_captions"] == 2 and acc["n_objects"] == 4


def test_matching_is_one_to_one_and_prefers_exact():
    truth = [obj("large", "red", "circle"), obj("small", "red", "circle")]
    mentions = [obj("large", "blue", "circle"), obj("small", "red", "circle"),
                obj("small", "red", "circle")]  # fmt: skip
    exact, paired = match_objects(mentions, truth)
    assert exact == [None, 1, None]
    assert paired == [0, 1, None]


def test_length_mismatch_and_empty_input():
    with pytest.raises(ValueError, match="equal length, got 1 and 2"):
        scene_accuracy([caption([])], [SCENE, SCENE])
    acc = scene_accuracy([], [])
    assert acc["object_f1"] is None and acc["n_captions"] == 0
