"""Tokenization, vocabulary building, encoding, decoding, JSON round trip."""

import json

import numpy as np
import pytest

from captionlab.data import NULL, Vocabulary, decode_captions, strip_special, tokenize
from captionlab.errors import DataError


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Red circle, left of a BLUE square.") == [
        "a", "red", "circle", "left", "of", "a", "blue", "square",
    ]  # fmt: skip
    assert tokenize("two shapes: a dog's t-shirt!") == ["two", "shapes", "a", "dog's", "t-shirt"]
    assert tokenize("  ") == []


def test_build_orders_specials_then_by_count_then_alpha():
    v = Vocabulary.build(["b a a", "c b a", "d"], min_count=1)
    assert v.idx_to_word[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert v.idx_to_word[4:] == ["a", "b", "c", "d"]
    assert all(v.word_to_idx[w] == i for i, w in enumerate(v.idx_to_word))
    v2 = Vocabulary.build(["b a a", "c b a", "d"], min_count=2)
    assert v2.idx_to_word[4:] == ["a", "b"]


def test_encode_layout_unk_and_truncation():
    v = Vocabulary.build(["a red circle", "a blue square"])
    ids, n_cut = v.encode(["A red circle.", "a green square", "a a a a a a"], max_length=5)
    assert ids.dtype == np.int32 and ids.shape == (3, 6)
    w = v.word_to_idx
    assert ids[0].tolist() == [1, w["a"], w["red"], w["circle"], 2, 0]
    assert ids[1].tolist() == [1, w["a"], 3, w["square"], 2, 0]  # green -> <UNK>
    assert ids[2].tolist() == [1, w["a"], w["a"], w["a"], w["a"], 2]  # 4 words + <END>
    assert n_cut == 1


def test_decode_matches_cs231n_and_stops_at_end():
    v = Vocabulary.build(["a red circle"])
    ids, _ = v.encode(["a red circle", "circle"], max_length=6)
    ids[1, 3:] = v.word_to_idx["red"]  # junk after <END> must be ignored
    ids[1, 2] = 2
    out = decode_captions(ids, v.idx_to_word)
    assert out == ["<START> a red circle <END>", "<START> circle <END>"]
    assert decode_captions(ids[0], v.idx_to_word) == "<START> a red circle <END>"
    assert strip_special(out[0]) == "a red circle"
    assert NULL not in out[0]


def test_save_load_round_trip_and_cs231n_form(tmp_path):
    v = Vocabulary.build(["a red circle", "a blue square"])
    path = tmp_path / "vocab.json"
    v.save(path)
    assert Vocabulary.load(path) == v
    # cs231n's coco2014_vocab.json has just the two keys
    cs = tmp_path / "coco2014_vocab.json"
    cs.write_text(json.dumps({"idx_to_word": v.idx_to_word, "word_to_idx": v.word_to_idx}))
    assert Vocabulary.load(cs) == v


def test_load_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps({"word_to_idx": {}}))
    with pytest.raises(DataError, match=r"v\.json.*idx_to_word"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"idx_to_word": ["a", "b", "c", "d"]}))
    with pytest.raises(DataError, match="must start with"):
        Vocabulary.load(bad)
    with pytest.raises(DataError, match="file not found"):
        Vocabulary.load(tmp_path / "missing.json")


def test_decode_method_strips_special_tokens():
    v = Vocabulary.build(["a red circle"])
    ids, _ = v.encode(["a red circle", "red"], max_length=6)
    assert v.to_text(ids) == ["a red circle", "red"]
    assert v.to_text(ids[1]) == ["red"]


def test_data_package_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, captionlab.data, captionlab.data.shapes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
