"""benchmarks/bench_explain.py: which object a word names, and a tiny run with an attention
captioner (every map kind in the table, the attention's peak at its top cell, the cost per
model). Not a measurement: the captioner has random weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from captionlab.captioning import AttentionCaptioner, save_checkpoint
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.pca import fit_pca
from captionlab.data.shapes import COLOURS, SHAPES, SIZES, load_scenes
from captionlab.explain import Explainer
from captionlab.vision.images import load_image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explain.py"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_explain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene(*objects):
    return {"objects": [{"colour": c, "shape": s, "size": z, "bbox": [0, 0, 1, 1]}
                        for c, s, z in objects]}  # fmt: skip


def test_word_objects_names_each_words_object(bench):
    scene = _scene(("red", "circle", "large"), ("blue", "square", "small"))
    words = "a large red circle left of a small blue square".split()
    assert bench.word_objects(words, scene) == {
        2: {"kind": "colour", "object": 0, "why": ""},
        3: {"kind": "shape", "object": 0, "why": ""},
        8: {"kind": "colour", "object": 1, "why": ""},
        9: {"kind": "shape", "object": 1, "why": ""},
    }
    got = bench.word_objects("a green circle and a red star".split(), scene)
    assert got[1] == {"kind": "colour", "object": None, "why": "wrong colour"}
    assert got[6] == {"kind": "shape", "object": None, "why": "hallucinated"}
    assert got[5] == {"kind": "colour", "object": None, "why": "hallucinated"}  # its shape's
    two = _scene(("red", "circle", "large"), ("red", "circle", "small"))
    got = bench.word_objects("two red circles".split(), two)
    assert got == {1: {"kind": "colour", "object": None, "why": "no object"},
                   2: {"kind": "shape", "object": None, "why": "plural"}}  # fmt: skip
    got = bench.word_objects("a small red circle and a red circle".split(), two)
    assert got[3]["object"] == 1 and got[7]["object"] == 0  # the one no earlier word named


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    """Show-Attend-Tell with random weights over 64-px 2x2 cells, its vocabulary the shapes'."""
    root = tmp_path_factory.mktemp("bench_explain")
    config = FeatureExtractorConfig(image_size=64, pool="avg", grid=True, grid_pca_dim=8)
    cells = np.random.default_rng(1).random((40, config.grid_raw_dim), np.float32)
    grid_pca = fit_pca(cells, 8).with_unit_rms(cells)
    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", *SIZES, *COLOURS, *SHAPES]
    model = AttentionCaptioner({w: i for i, w in enumerate(words)}, input_dim=8, wordvec_dim=6,
                               hidden_dim=10, attention_dim=5, seed=0)  # fmt: skip
    extra = {
        "features": dataclasses.asdict(config),
        "grid_pca": {"mean": grid_pca.mean, "components": grid_pca.components,
                     "explained_variance": grid_pca.explained_variance,
                     "scale": float(grid_pca.scale)},
    }  # fmt: skip
    save_checkpoint(root / "run" / "best.npz", model, extra=extra)
    return root / "run"


def test_bench_runs_an_attention_captioner(bench, attention_run, tmp_path, monkeypatch, capsys):
    """Three unseen scenes, each captioned (a stand-in for decoding) "a COLOUR SHAPE" after its
    first object: both words are scored by every map, the attention's among them."""
    scenes_dir = tmp_path / "scenes"
    argv = ["--model", f"att={attention_run}", "--scenes", str(scenes_dir), "--generate", "3",
            "--samples", "2", "--steps", "2", "--deletion-scenes", "1", "--cost-reps", "1",
            "--json", str(tmp_path / "out.json")]  # fmt: skip
    from captionlab.data.shapes import generate_shapes

    generate_shapes(scenes_dir, n_train=0, n_val=0, n_test=3, seed=1515, progress=False)
    scenes = load_scenes(scenes_dir / "scenes.json")
    said = {}
    for scene in scenes.values():
        first = scene["objects"][0]
        pixels = load_image(scenes_dir / scene["filename"], 64)
        said[pixels.tobytes()] = f"a {first['colour']} {first['shape']}"
    monkeypatch.setattr(Explainer, "decode", lambda self, pixels, beam=1: self.encode(
        said[pixels.tobytes()]))  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "out.json").read_text())
    (model,) = result["results"]
    assert model["scenes"] == 3 and model["words"] == 9  # "a", the colour, the shape
    assert list(model["methods"]) == ["vanilla", "smoothgrad", "ig", "layercam", "gradcam",
                                      "guided-gradcam", "attention", "random"]  # fmt: skip
    for row in model["methods"].values():
        assert row["n_shape"] == row["n_colour"] == 3
        assert 0 <= row["pointing_shape"] <= row["pointing_shape_any"] <= 1
        assert row["n_deletion"] == 2 and 0 <= row["deletion_auc"] <= 1
    assert set(result["cost"]) == {"att"} and result["cost"]["att"]["image_size"] == 64
    assert set(result["load_average"]) == {"start", "end"}
    assert "att       attention" in printed and "cost of one word's map" in printed
    # --hold-attention: the same words, the maps with the attention held; recorded as such
    held = [*argv[: argv.index("--json")], "--methods", "vanilla,gradcam", "--cost-reps", "0",
            "--hold-attention", "--json", str(tmp_path / "held.json")]  # fmt: skip
    assert bench.main(held) == 0
    (model,) = json.loads((tmp_path / "held.json").read_text())["results"]
    assert model["hold_attention"] is True and model["words"] == 9
    assert list(model["methods"]) == ["vanilla", "gradcam", "attention", "random"]
    assert result["results"][0]["hold_attention"] is False
