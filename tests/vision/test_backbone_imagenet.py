"""ImageNet class names and their lookup."""

import numpy as np
import pytest

from captionlab.errors import UserError
from captionlab.vision.imagenet import (
    CLASS_NAMES,
    SYNONYMS,
    WNIDS,
    decode_predictions,
    resolve_class,
)


def test_names_are_the_standard_list():
    assert len(CLASS_NAMES) == len(WNIDS) == len(SYNONYMS) == 1000
    assert CLASS_NAMES[0] == "tench" and CLASS_NAMES[999] == "toilet tissue"
    assert CLASS_NAMES[285] == "Egyptian cat" and CLASS_NAMES[967] == "espresso"
    assert WNIDS == sorted(WNIDS) and len(set(WNIDS)) == 1000
    assert len(set(CLASS_NAMES)) == 998  # "crane" and "maillot" occur twice


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (285, 285),
        ("285", 285),
        ("Egyptian cat", 285),
        ("egyptian_CAT", 285),
        ("puma", 286),
        ("tiger", 292),
        ("n07920052", 967),
        (np.int64(3), 3),
        ("  espresso ", 967),
    ],
)
def test_resolve_class(query, index):
    assert resolve_class(query) == index


def test_resolve_class_errors():
    with pytest.raises(UserError, match="did you mean 'egyptian cat'"):
        resolve_class("egyptain cat")
    with pytest.raises(UserError, match=r"ambiguous: 134 .*517"):
        resolve_class("crane")
    with pytest.raises(UserError, match=r"0\.\.999, got 1000"):
        resolve_class(1000)
    with pytest.raises(UserError, match=r"0\.\.999"):
        resolve_class("-1")
    with pytest.raises(UserError, match="unknown ImageNet class 'qqqq'"):
        resolve_class("qqqq")


def test_decode_predictions():
    logits = np.zeros((2, 1000))
    logits[0, 7], logits[1, 9] = 10.0, 5.0
    preds = decode_predictions(logits, k=2)
    assert [p[0][0] for p in preds] == [7, 9]
    assert preds[0][0][1] == "cock"
    assert preds[0][0][2] == pytest.approx(np.exp(10) / (np.exp(10) + 999))
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        decode_predictions(np.zeros((2, 10)))


def test_vision_package_exports_lazily():
    import captionlab.vision as vision
    from captionlab.vision import backbone, imagenet

    assert vision.CLASS_NAMES is imagenet.CLASS_NAMES
    assert vision.load_backbone is backbone.load_backbone
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vision.nope
