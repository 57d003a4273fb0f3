"""``captionlab explain``: a figure per image, the JSON summary, errors as one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from captionlab import cli
from captionlab.captioning import CaptioningRNN, save_checkpoint
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.pca import fit_pca

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{run}", "{tmp}/missing.png"], "missing.png: image file not found"),
        (["--model", "{tmp}/norun", "{photo}"], "norun: no checkpoint there"),
        (["--model", "{run}", "{photo}", "--beam", "0"], "--beam must be >= 1, got 0"),
        (["--model", "{run}", "skimage:nothing"], "unknown bundled photo"),
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
