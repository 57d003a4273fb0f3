"""The shapes benchmark: files, determinism, caching, geometry, captions true of scenes."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from captionlab.captioning.scene_accuracy import scene_accuracy
from captionlab.data import load_dataset, shapes, tokenize
from captionlab.data.shapes import generate_shapes, load_scenes, parse_caption
from captionlab.errors import DataError

SIZE = 64


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return generate_shapes(out, n_train=12, n_val=3, n_test=3, image_size=SIZE, progress=False)


def test_writes_karpathy_dataset_scenes_and_pngs(bench):
    ds = load_dataset(bench)
    assert ds.counts() == {
        "train": {"images": 12, "captions": 60},
        "val": {"images": 3, "captions": 15},
        "test": {"images": 3, "captions": 15},
    }
    scenes = load_scenes(bench)
    assert set(scenes) == {r.image_id for r in ds.images}
    with Image.open(ds.images[0].path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
    raw = json.loads((bench / "dataset.json").read_text())
    sent = raw["images"][0]["sentences"][0]
    assert sent["tokens"] == tokenize(sent["raw"])


def test_same_seed_gives_byte_identical_files(bench, tmp_path):
    again = generate_shapes(
        tmp_path / "b", n_train=12, n_val=3, n_test=3, image_size=SIZE, progress=False
    )
    files = sorted(p.relative_to(bench) for p in bench.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (bench / f).read_bytes() == (again / f).read_bytes(), f
    other = generate_shapes(
        tmp_path / "c", n_train=12, n_val=3, n_test=3, image_size=SIZE, seed=1, progress=False
    )
    assert (other / "scenes.json").read_bytes() != (bench / "scenes.json").read_bytes()


def test_cached_reuse_prefix_stability_and_stale_cleanup(tmp_path, monkeypatch):
    out = tmp_path / "s"
    generate_shapes(out, n_train=6, n_val=1, n_test=1, image_size=SIZE, progress=False)
    first = (out / "images" / "train_00003.png").read_bytes()

    def boom(*a, **k):
        raise AssertionError("rendered although cached")

    with monkeypatch.context() as m:
        m.setattr(shapes, "render_scene", boom)
        generate_shapes(out, n_train=6, n_val=1, n_test=1, image_size=SIZE, progress=False)
    generate_shapes(out, n_train=4, n_val=1, n_test=1, image_size=SIZE, progress=False)
    assert (out / "images" / "train_00003.png").read_bytes() == first  # same image k
    assert not (out / "images" / "train_00005.png").exists()
    assert len(load_dataset(out).split("train")) == 4


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="n_val must be a non-negative integer, got -1"):
        generate_shapes(tmp_path, n_val=-1, progress=False)
    with pytest.raises(DataError, match=r"image_size must be an integer in \[32, 1024\]"):
        generate_shapes(tmp_path, image_size=8, progress=False)


def _scenes_and_captions(n=300, size=128):
    out = []
    for k in range(n):
        rng = np.random.default_rng([7, k])
        scene = shapes.sample_scene(rng, size)
        out.append((scene, shapes.make_captions(scene, rng)))
    return out


def test_geometry_relations_hold_and_objects_fit():
    S = 128
    for scene, _ in _scenes_and_captions(size=S):
        objs = scene["objects"]
        assert 1 <= len(objs) <= 3
        assert len({(o["size"], o["colour"], o["shape"]) for o in objs}) == len(objs)
        for o in objs:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S
        for r in scene["relations"]:
            a, b = objs[r["subject"]]["bbox"], objs[r["object"]]["bbox"]
            gap = shapes._GAP * S
            assert {
                "left of": a[2] + gap <= b[0],
                "right of": b[2] + gap <= a[0],
                "above": a[3] + gap <= b[1],
                "below": b[3] + gap <= a[1],
            }[r["relation"]]
        pairs = {(r["subject"], r["object"]) for r in scene["relations"]}
        n = len(objs)
        assert len(pairs) == n * (n - 1)  # every pair is related, both directions
        if n == 2:
            assert len(scene["relations"]) == 2  # one relation and its inverse


def test_every_reference_caption_is_true_of_its_scene_and_parsed_back():
    templates_seen = Counter()
    for scene, captions in _scenes_and_captions():
        assert len(captions) == 5 and len(set(captions)) == 5
        for c in captions:
            assert len(tokenize(c)) <= 15, c
            p = parse_caption(c)
            acc = scene_accuracy([p], [scene])
            assert acc["object_precision"] == 1.0, (c, p, scene["objects"])
            assert acc["object_recall"] == 1.0, c
            assert acc["attribute_accuracy"] == 1.0, c
            assert acc["count_accuracy"] == 1.0, c
            assert acc["relation_accuracy"] in (None, 1.0), (c, p, scene["relations"])
            templates_seen[(len(scene["objects"]), acc["n_relations_named"] > 0)] += 1
    # relation captions exist for two and three objects, plain ones for every count
    assert {(1, False), (2, True), (2, False), (3, True), (3, False)} <= set(templates_seen)


def test_generated_files_captions_parse_against_scenes_json(bench):
    ds, scenes = load_dataset(bench), load_scenes(bench)
    parsed, truth = [], []
    for r in ds.images:
        for c in r.captions:
            parsed.append(parse_caption(c))
            truth.append(scenes[r.image_id])
    acc = scene_accuracy(parsed, truth)
    assert acc["object_f1"] == 1.0 and acc["count_accuracy"] == 1.0
    assert acc["relation_accuracy"] in (None, 1.0)


def test_at_least_five_templates_per_count():
    for n in (1, 2, 3):
        assert len(shapes._templates(n)) >= 5


@pytest.mark.parametrize(
    ("text", "objects", "relations", "count"),
    [
        ("a big red disk", [("large", "red", "circle")], [], 1),
        ("<START> a tiny blue square under a large green star <END>",
         [("small", "blue", "square"), ("large", "green", "star")], [(0, "below", 1)], 2),
        ("two shapes: a small black triangle and a big yellow circle",
         [("small", "black", "triangle"), ("large", "yellow", "circle")], [], 2),
        ("a red square on top of a circle",
         [(None, "red", "square"), (None, None, "circle")], [(0, "above", 1)], 2),
        ("three objects: two red circles", [(None, "red", "circle")] * 2, [], 3),
        ("a little purple star to the left of a small red square and a large blue circle",
         [("small", "purple", "star"), ("small", "red", "square"), ("large", "blue", "circle")],
         [(0, "left of", 1)], 3),
        ("nothing here", [], [], 0),
    ],
)  # fmt: skip
def test_parse_caption_examples(text, objects, relations, count):
    p = parse_caption(text)
    assert [(o["size"], o["colour"], o["shape"]) for o in p["objects"]] == objects
    assert [(r["subject"], r["relation"], r["object"]) for r in p["relations"]] == relations
    assert p["count"] == count


def test_load_scenes_errors(tmp_path):
    (tmp_path / "scenes.json").write_text(json.dumps({"images": [{"image_id": "0"}]}))
    with pytest.raises(DataError, match=r"scenes\.json: missing field 'images\[0\]\.objects'"):
        load_scenes(tmp_path)
