"""Readers for Karpathy dataset.json, COCO captions_*.json and cs231n coco_captioning h5."""

import json

import h5py
import numpy as np
import pytest

from captionlab.data import (
    Vocabulary,
    load_coco_data,
    load_dataset,
    sample_coco_minibatch,
    to_caption_data,
)
from captionlab.errors import DataError


def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"img")


def _karpathy(tmp_path):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        images.append(
            {
                "filename": f"im{i}.jpg",
                "filepath": "pics",
                "imgid": i,
                "split": split,
                "sentences": [
                    {"raw": f"A dog number {i}.", "tokens": ["a", "dog", "number", str(i)],
                     "imgid": i, "sentid": 2 * i},
                    {"tokens": ["two", "dogs"], "imgid": i, "sentid": 2 * i + 1},
                ],
                "sentids": [2 * i, 2 * i + 1],
            }
        )  # fmt: skip
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    _touch_images(tmp_path / "pics", [f"im{i}.jpg" for i in range(4)])
    return path


def test_karpathy_reads_splits_captions_paths(tmp_path):
    path = _karpathy(tmp_path)
    ds = load_dataset(tmp_path)  # a folder holding dataset.json works too
    assert ds.name == "karpathy" and ds.source == path
    assert [r.split for r in ds.images] == ["train", "train", "val", "test"]  # restval->train
    assert ds.images[0].captions == ("A dog number 0.", "two dogs")
    assert ds.images[2].path == tmp_path / "pics" / "im2.jpg"
    assert [r.image_id for r in ds.split("train")] == ["0", "1"]
    assert ds.counts() == {
        "train": {"images": 2, "captions": 4},
        "val": {"images": 1, "captions": 2},
        "test": {"images": 1, "captions": 2},
    }


def test_karpathy_missing_image_and_field_errors(tmp_path):
    path = _karpathy(tmp_path)
    (tmp_path / "pics" / "im2.jpg").unlink()
    with pytest.raises(DataError, match=r"dataset\.json: image '2' is listed.*im2\.jpg.*1 of 4"):
        load_dataset(path)
    assert len(load_dataset(path, check_images=False).images) == 4
    data = json.loads(path.read_text())
    del data["images"][1]["filename"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"dataset\.json: missing field 'images\[1\]\.filename'"):
        load_dataset(path, check_images=False)
    data["images"][1]["filename"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"'images\[1\]\.filename' must be str, got int"):
        load_dataset(path, check_images=False)


def _coco(tmp_path):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    data = {
        "info": {}, "licenses": [],
        "images": [{"id": 42, "file_name": "COCO_val2014_42.jpg", "width": 640, "height": 480},
                   {"id": 7, "file_name": "COCO_val2014_7.jpg", "width": 640, "height": 480}],
        "annotations": [{"id": 1, "image_id": 42, "caption": "A cat on a mat. "},
                        {"id": 2, "image_id": 7, "caption": "A bus."},
                        {"id": 3, "image_id": 42, "caption": "a sleeping cat"}],
    }  # fmt: skip
    path = ann_dir / "captions_val2014.json"
    path.write_text(json.dumps(data))
    _touch_images(tmp_path / "val2014", ["COCO_val2014_42.jpg", "COCO_val2014_7.jpg"])
    return path, data


def test_coco_reads_and_finds_sibling_image_folder(tmp_path):
    path, _ = _coco(tmp_path)
    ds = load_dataset(path)
    assert ds.name == "coco"
    assert [r.image_id for r in ds.images] == ["42", "7"]
    assert ds.images[0].captions == ("A cat on a mat.", "a sleeping cat")
    assert ds.images[0].split == "val"
    assert ds.images[1].path == tmp_path / "val2014" / "COCO_val2014_7.jpg"


def test_coco_annotation_for_unknown_image_is_an_error(tmp_path):
    path, data = _coco(tmp_path)
    data["annotations"].append({"id": 9, "image_id": 5, "caption": "x"})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[3\]\.image_id' is 5"):
        load_dataset(path)


def test_unknown_format_and_missing_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"images": [{"foo": 1}]}))
    with pytest.raises(DataError, match="unknown caption format"):
        load_dataset(p)
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "nope.json")


def _cs231n(base, n_train=6, n_val=4, m_train=3, m_val=2, D=512):
    base.mkdir()
    rng = np.random.default_rng(0)
    vocab = Vocabulary.build(["a cat on a mat", "a bus"])
    V = len(vocab)
    with h5py.File(base / "coco2014_captions.h5", "w") as f:
        for split, n, m in (("train", n_train, m_train), ("val", n_val, m_val)):
            caps = rng.integers(0, V, size=(n, 17)).astype(np.int32)
            caps[:, 0] = 1
            f.create_dataset(f"{split}_captions", data=caps)
            f.create_dataset(f"{split}_image_idxs", data=np.arange(n, dtype=np.int32) % m)
    for split, m in (("train", m_train), ("val", m_val)):
        for suffix, d in (("_pca", D), ("", 4096)):
            with h5py.File(base / f"{split}2014_vgg16_fc7{suffix}.h5", "w") as f:
                f.create_dataset("features", data=rng.standard_normal((m, d)).astype(np.float32))
        lines = "".join(f"http://images.cocodataset.org/{split}2014/{i}.jpg\n" for i in range(m))
        (base / f"{split}2014_urls.txt").write_text(lines)
    (base / "coco2014_vocab.json").write_text(
        json.dumps({"idx_to_word": vocab.idx_to_word, "word_to_idx": vocab.word_to_idx})
    )
    return vocab


def test_load_coco_data_keys_shapes_and_minibatch(tmp_path):
    base = tmp_path / "coco_captioning"
    vocab = _cs231n(base)
    data = load_coco_data(base)
    assert set(data) == {
        "train_captions", "train_image_idxs", "val_captions", "val_image_idxs",
        "train_features", "val_features", "idx_to_word", "word_to_idx", "train_urls", "val_urls",
    }  # fmt: skip
    assert data["train_captions"].shape == (6, 17) and data["train_captions"].dtype == np.int32
    assert data["train_features"].shape == (3, 512) and data["val_features"].shape == (2, 512)
    assert data["idx_to_word"] == vocab.idx_to_word
    assert load_coco_data(base, pca_features=False)["train_features"].shape == (3, 4096)
    small = load_coco_data(base, max_train=4, rng=np.random.default_rng(1))
    assert small["train_captions"].shape == (4, 17)
    caps, feats, urls = sample_coco_minibatch(data, 5, "val", rng=np.random.default_rng(2))
    assert caps.shape == (5, 17) and feats.shape == (5, 512) and urls.shape == (5,)
    # each feature row belongs to the caption's image
    rows = [int(u.rsplit("/", 1)[1][:-4]) for u in urls]
    np.testing.assert_array_equal(feats, data["val_features"][rows])


def test_load_coco_data_errors_name_file_and_field(tmp_path):
    base = tmp_path / "cc"
    _cs231n(base)
    (base / "val2014_urls.txt").write_text("only-one\n")
    with pytest.raises(DataError, match=r"val2014_urls\.txt: expected 2 lines.*got 1"):
        load_coco_data(base)
    _cs231n(tmp_path / "cc2", m_train=3)
    with h5py.File(tmp_path / "cc2" / "coco2014_captions.h5", "a") as f:
        del f["train_image_idxs"]
        f.create_dataset("train_image_idxs", data=np.array([0, 1, 2, 3, 0, 0], np.int32))
    with pytest.raises(DataError, match=r"'train_image_idxs' must lie in \[0, 3\).*got \[0, 3\]"):
        load_coco_data(tmp_path / "cc2")
    _cs231n(tmp_path / "cc3")
    (tmp_path / "cc3" / "train2014_vgg16_fc7_pca.h5").unlink()
    with pytest.raises(DataError, match=r"train2014_vgg16_fc7_pca\.h5: file not found"):
        load_coco_data(tmp_path / "cc3")
    with h5py.File(tmp_path / "cc3" / "coco2014_captions.h5", "a") as f:
        del f["val_captions"]
    with pytest.raises(DataError, match=r"coco2014_captions\.h5: missing dataset 'val_captions'"):
        load_coco_data(tmp_path / "cc3")


def test_to_caption_data_rows_per_caption(tmp_path):
    ds = load_dataset(_karpathy(tmp_path))
    vocab = Vocabulary.build(ds.all_captions("train"))
    table = {r.image_id: np.full(3, float(r.image_id)) for r in ds.images}

    def features_for(ids):
        return np.stack([table[i] for i in ids])

    data = to_caption_data(ds, vocab, features_for, max_length=16)
    assert data["train_captions"].shape == (4, 17) and data["train_captions"].dtype == np.int32
    assert data["train_image_idxs"].tolist() == [0, 0, 1, 1]
    assert data["train_features"].dtype == np.float32
    assert data["train_features"][:, 0].tolist() == [0.0, 1.0]
    assert data["val_image_ids"].tolist() == ["2"]
    assert data["test_captions"].shape == (2, 17)
    assert data["n_truncated"] == {"train": 0, "val": 0, "test": 0}
    assert data["train_urls"][1].endswith("im1.jpg")
    with pytest.raises(DataError, match=r"features for split 'train' must be \(2, D\)"):
        to_caption_data(ds, vocab, lambda ids: np.zeros((1, 3)))


def test_karpathy_sentids_count_must_match_sentences(tmp_path):
    path = _karpathy(tmp_path)
    data = json.loads(path.read_text())
    data["images"][2]["sentids"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"'images\[2\]\.sentids' lists 3 ids but.*holds 2"):
        load_dataset(path)
