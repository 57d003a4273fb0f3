"""``captionlab explain``: a figure per image, the JSON summary, errors as one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from captionlab import cli
from captionlab.captioning import (
    AttentionCaptioner,
    CaptioningRNN,
    CaptioningTransformer,
    save_checkpoint,
)
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.pca import fit_pca
from captionlab.explain import word_logprobs
from captionlab.vision.images import read_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "circle", "square"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with best.npz: a small LSTM over 64-px avg+2x2 features, PCA to 8."""
    root = tmp_path_factory.mktemp("explain_run")
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=8)
    pca = fit_pca(np.random.default_rng(0).random((30, config.raw_dim), np.float32), 8)
    model = CaptioningRNN({w: i for i, w in enumerate(WORDS)}, input_dim=8, wordvec_dim=6,
                          hidden_dim=10, cell_type="lstm", seed=0)  # fmt: skip
    extra = {
        "features": dataclasses.asdict(config),
        "pca": {"mean": pca.mean, "components": pca.components,
                "explained_variance": pca.explained_variance},
    }  # fmt: skip
    save_checkpoint(root / "run" / "best.npz", model, extra=extra)
    return root / "run"


@pytest.fixture(scope="module", params=["attention", "transformer"])
def grid_run(request, tmp_path_factory):
    """A run folder of a grid captioner over 64-px 2x2 cells (block10 + the last map, the
    per-cell PCA to 8 with its scale): Show-Attend-Tell, or a grid Transformer in training
    mode as built (the command must explain it as it decodes, without dropout)."""
    root = tmp_path_factory.mktemp(f"explain_{request.param}")
    config = FeatureExtractorConfig(image_size=64, pool="avg", grid=True, grid_pca_dim=8)
    cells = np.random.default_rng(1).random((40, config.grid_raw_dim), np.float32)
    grid_pca = fit_pca(cells, 8).with_unit_rms(cells)
    vocab = {w: i for i, w in enumerate(WORDS)}
    if request.param == "attention":
        model = AttentionCaptioner(vocab, input_dim=8, wordvec_dim=6, hidden_dim=10,
                                   attention_dim=5, seed=0, attention_penalty=0.0)  # fmt: skip
    else:
        model = CaptioningTransformer(vocab, 8, 8, num_heads=2, num_layers=1, max_length=12,
                                      dropout=0.3, seed=0, dim_feedforward=16, grid=True,
                                      num_cells=4)  # fmt: skip
    for k, v in model.params.items():  # far from the near-uniform initial attention
        model.params[k] = (v + np.random.default_rng(2).normal(0, 0.5, v.shape)).astype(v.dtype)
    extra = {
        "features": dataclasses.asdict(config),
        "grid_pca": {"mean": grid_pca.mean, "components": grid_pca.components,
                     "explained_variance": grid_pca.explained_variance,
                     "scale": float(grid_pca.scale)},
    }  # fmt: skip
    save_checkpoint(root / "run" / "best.npz", model, extra=extra)
    return root / "run"


@pytest.fixture
def photo(tmp_path):
    """A 96x60 PNG (not square, so the peak has to be mapped back through the crop)."""
    pixels = np.full((60, 96, 3), 230, np.uint8)
    pixels[10:40, 30:60] = (215, 35, 35)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_explain_writes_a_figure_and_prints_json(run_dir, photo, tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["explain", "--model", str(run_dir), str(photo), "--out", str(out),
            "--max-length", "4", "--samples", "3", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "smoothgrad" and summary["beam"] == 1
    (item,) = summary["images"]
    assert item["image"] == str(photo) and item["image_size"] == [96, 60]
    words = item["caption"].split()
    assert 1 <= len(words) <= 4
    assert [w["word"] for w in item["words"]] == words
    assert [w["position"] for w in item["words"]] == list(range(len(words)))
    for w in item["words"]:
        x, y = w["peak"]
        assert 18 <= x < 78 and 0 <= y < 60  # inside the centred 60x60 square of the photo
        assert 0 < w["prob"] <= 1
        assert "attention_peak" not in w  # an LSTM has no attention
    figure = out / "photo_explain_smoothgrad.png"
    assert item["figure"] == str(figure)
    with Image.open(figure) as img:
        assert img.format == "PNG" and img.width > img.height * len(words) * 0.8


def test_explain_each_method_and_repeated_names(run_dir, photo, tmp_path, capsys):
    other = tmp_path / "again"
    other.mkdir()
    copy = other / "photo.png"
    copy.write_bytes(photo.read_bytes())
    for method in ("vanilla", "ig"):
        argv = ["explain", "--model", str(run_dir / "best"), str(photo), str(copy),
                "--method", method, "--samples", "2", "--steps", "2", "--max-length", "3",
                "--beam", "2", "--out", str(tmp_path)]  # fmt: skip
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out.splitlines()
        assert len(printed) == 2 and printed[0].startswith(f"{photo}: ")
        assert (tmp_path / f"photo_explain_{method}.png").is_file()
        assert (tmp_path / f"photo-2_explain_{method}.png").is_file()


def test_explain_a_grid_captioner_gives_its_attention(grid_run, photo, tmp_path, capsys):
    """An attention run or a grid Transformer: per word the peak of its map and of its
    attention (the centre of its top cell, in the photo's pixels); the figure has the
    attention row."""
    from captionlab.explain import Explainer

    out = tmp_path / "figs"
    argv = ["explain", "--model", str(grid_run), str(photo), "--out", str(out), "--method",
            "vanilla", "--max-length", "5", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    (item,) = json.loads(capsys.readouterr().out)["images"]
    words = item["caption"].split()
    assert 1 <= len(words) <= 5 and [w["word"] for w in item["words"]] == words
    explainer = Explainer.from_checkpoint(grid_run)
    pixels = read_image(str(photo), size=64)
    ids = explainer.decode(pixels)
    _, alpha = word_logprobs(explainer.captioner, explainer.features(pixels), ids)
    for w in item["words"]:
        top = int(np.argmax(alpha[0, w["position"]]))  # the top cell (row, column) of 2x2
        row, col = divmod(top, 2)
        x, y = w["attention_peak"]  # the photo is 96x60: its centred 60x60 square, 30 px a cell
        assert 18 + 30 * col <= x < 18 + 30 * (col + 1) and 30 * row <= y < 30 * (row + 1)
        assert 18 <= w["peak"][0] < 78 and 0 <= w["peak"][1] < 60
    with Image.open(item["figure"]) as img:  # two rows of panels: about half as tall as wide
        columns = len(words) + 1
        assert 0.5 * columns < img.width / img.height * 2 < 1.5 * columns


def test_explain_a_grid_captioner_by_gradcam_and_guided_gradcam(grid_run, photo, tmp_path,
                                                                 capsys):  # fmt: skip
    """The grid methods run from the command: gradcam's peak is the centre of the word's top
    cell by Grad-CAM relevance, in the photo's pixels; guided-gradcam writes its figure."""
    from captionlab.explain import Explainer

    argv = ["explain", "--model", str(grid_run), str(photo), "--out", str(tmp_path),
            "--method", "gradcam", "--max-length", "4", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    (item,) = json.loads(capsys.readouterr().out)["images"]
    explainer = Explainer.from_checkpoint(grid_run)
    pixels = read_image(str(photo), size=64)
    ids = explainer.decode(pixels)
    relevance = explainer.cell_relevance(pixels, ids, [w["position"] for w in item["words"]])
    for w, cells in zip(item["words"], relevance, strict=True):
        row, col = divmod(int(np.argmax(cells)), 2)
        x, y = w["peak"]  # the centred 60x60 square of the 96x60 photo, 30 px a cell
        assert (x, y) == (18 + 30 * col + 15, 30 * row + 15)
    assert (tmp_path / "photo_explain_gradcam.png").is_file()
    argv[argv.index("gradcam")] = "guided-gradcam"
    assert cli.main([*argv[:-1], "--samples", "2"]) == 0
    assert (tmp_path / "photo_explain_guided-gradcam.png").is_file()


def test_explain_with_the_attention_held(grid_run, photo, tmp_path, capsys):
    """``--hold-attention``: the peaks of the attention captioner and of the grid
    Transformer are those of the maps with their attention held (and the figure is named for
    it), which differ from the free maps."""
    from captionlab.explain import CropGeometry, Explainer, map_peak

    argv = ["explain", "--model", str(grid_run), str(photo), "--out", str(tmp_path),
            "--method", "vanilla", "--max-length", "4", "--hold-attention", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hold_attention"] is True
    (item,) = result["images"]
    assert item["figure"].endswith("photo_explain_vanilla-held.png")
    pixels = read_image(str(photo), size=64)
    geo = CropGeometry.of_image(str(photo), 64)
    maps = {}
    for hold in (False, True):
        explainer = Explainer.from_checkpoint(grid_run, max_length=4, hold_attention=hold)
        ids = explainer.decode(pixels)
        positions = [w["position"] for w in item["words"]]
        maps[hold] = explainer.word_maps(pixels, ids, positions, "vanilla")
    assert [w["peak"] for w in item["words"]] == [
        list(geo.to_original(*map_peak(m))) for m in maps[True]
    ]
    assert not np.allclose(maps[True], maps[False], rtol=1e-3)  # the flag matters


def test_explain_layercam_of_a_pooled_model_at_the_layer_asked_for(run_dir, photo, tmp_path,
                                                                    capsys):  # fmt: skip
    """``--method layercam --layer block7``: each word's peak is the peak of the explainer's
    LayerCAM map at block7 (with the same noisy copies), in the photo's own pixels."""
    from captionlab.explain import CropGeometry, Explainer, map_peak

    argv = ["explain", "--model", str(run_dir), str(photo), "--out", str(tmp_path),
            "--method", "layercam", "--layer", "block7", "--samples", "3", "--max-length", "4",
            "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    (item,) = json.loads(capsys.readouterr().out)["images"]
    assert (tmp_path / "photo_explain_layercam.png").is_file()
    explainer = Explainer.from_checkpoint(run_dir, max_length=4)
    pixels = read_image(str(photo), size=64)
    ids = explainer.decode(pixels)
    positions = [w["position"] for w in item["words"]]
    geo = CropGeometry.of_image(str(photo), 64)
    maps = {layer: explainer.word_maps(pixels, ids, positions, "layercam", samples=3,
                                       layer=layer) for layer in ("block7", "block10")}  # fmt: skip
    assert not np.allclose(maps["block7"], maps["block10"])  # the flag matters
    for w, m in zip(item["words"], maps["block7"], strict=True):
        assert w["peak"] == list(geo.to_original(*map_peak(m)))


@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam"])
def test_explain_grid_methods_on_a_pooled_model_fail_in_one_line(run_dir, photo, capsys,
                                                                 method):  # fmt: skip
    assert cli.main(["explain", "--model", str(run_dir), str(photo), "--method", method]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"method {method} needs a captioner over a grid of cells; this CaptioningRNN" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{run}", "{tmp}/missing.png"], "missing.png: image file not found"),
        (["--model", "{tmp}/norun", "{photo}"], "norun: no checkpoint there"),
        (["--model", "{run}", "{photo}", "--beam", "0"], "--beam must be >= 1, got 0"),
        (["--model", "{run}", "skimage:nothing"], "unknown bundled photo"),
        (
            ["--model", "{run}", "{photo}", "--method", "layercam", "--layer", "block99"],
            "layer (--layer) must be one of block0 .. block15, or several joined by commas, "
            "got 'block99'",
        ),
        (
            ["--model", "{run}", "{photo}", "--hold-attention"],
            "--hold-attention needs a captioner with attention (--model attention or "
            "transformer), whose "
            "attention weights it holds constant; this model is a CaptioningRNN",
        ),
    ],
)
def test_explain_errors_are_one_line(run_dir, photo, tmp_path, capsys, args, message):
    argv = ["explain"] + [
        a.format(run=run_dir, tmp=tmp_path, photo=photo) for a in args
    ]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captionlab explain: error: ") and message in err
