"""The attention captioner through train / evaluate / caption, end to end on a tiny
shapes benchmark whose store holds a grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from captionlab import cli
from captionlab.captioning import AttentionCaptioner, load_checkpoint
from captionlab.data.features import FeatureExtractorConfig, FeatureStore
from captionlab.data.shapes import generate_shapes
from captionlab.errors import DataError, UserError
from captionlab.extract import extract_features
from captionlab.runs.config import TrainConfig
from captionlab.runs.evaluate import evaluate_run
from captionlab.runs.inference import caption_images, extractor_for_checkpoint
from captionlab.runs.train import train_run

TINY = dict(model="attention", hidden_dim=16, wordvec_dim=8, attention_dim=8, epochs=2,
            batch_size=25, val_images=10, position=True, attention_penalty=0.5,
            monitor="val_loss")  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 40/10/10-image benchmark at 64 px: pooled features (PCA 16) and a grid of 2x2 cells
    (block10 + the last map, PCA 8) from one extraction; and a store without a grid."""
    root = tmp_path_factory.mktemp("shapes")
    data = generate_shapes(root / "shapes", 40, 10, 10, image_size=64, seed=4, progress=False)
    config = FeatureExtractorConfig(
        image_size=64, pool="avg+2x2", pca_dim=16, grid=True, grid_pca_dim=8
    )
    store = root / "grid.h5"
    extract_features(data / "dataset.json", store, config, progress=False, workers=0)
    pooled = root / "pooled.h5"
    config = FeatureExtractorConfig(image_size=64, pool="avg", pca_dim=16)
    extract_features(data / "dataset.json", pooled, config, progress=False, workers=0)
    return data / "dataset.json", store, pooled


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    dataset, store, _ = shapes
    out = tmp_path_factory.mktemp("run") / "attention"
    summary = train_run(dataset, store, out, TrainConfig(**TINY), progress=False, verbose=False)
    return out, summary


def test_train_attention_run(trained, shapes):
    out, summary = trained
    store = shapes[1]
    assert summary["model"] == "attention" and summary["cell"] == "attention"
    assert summary["train_loss_history"][1] < summary["train_loss_history"][0]
    model, state = load_checkpoint(out / "best.npz")
    assert isinstance(model, AttentionCaptioner)
    assert model.feature_shape == (4, 8) and model.num_cells == 4  # position embedding
    # what `caption` needs: both PCA bases and the grid config
    assert state["extra"]["features"]["grid"] is True
    assert state["extra"]["grid_pca"]["components"].shape == (112 + 1280, 8)
    assert state["extra"]["grid_pca"]["scale"] == FeatureStore.open(store).grid_pca.scale
    assert json.loads((out / "config.json").read_text())["train"]["model"] == "attention"
    assert model.attention_penalty == 0.5
    # best.npz is the epoch of the lowest validation loss (monitor="val_loss")
    log = json.loads((out / "log.json").read_text())["epochs"]
    best = min(log, key=lambda r: r["val_loss"])["epoch"]
    assert summary["best_epoch"] == best


def test_caption_reproduces_the_stored_grid_and_draws_attention(trained, shapes, tmp_path):
    out, _ = trained
    _, store_path, _ = shapes
    store = FeatureStore.open(store_path)
    ids = store.split_ids("test")[:3]
    paths = [store.paths[store.image_ids.index(i)] for i in ids]
    _, state = load_checkpoint(out / "best.npz")
    _, grid = extractor_for_checkpoint(state).transform_with_grid(paths)
    np.testing.assert_allclose(grid, store.grid_features_for(ids), atol=2e-2, rtol=1e-2)
    results = caption_images(out, paths, beam=2, attention_dir=tmp_path / "att")
    for p, r in zip(paths, results, strict=True):
        assert r["image"] == str(p) and isinstance(r["caption"], str)
        panels = min(1 + len(r["caption"].split()), 6)  # the image, one panel per word
        with Image.open(r["figure"]) as im:  # 1.9 inches a panel at 100 dpi, cut tight
            assert 150 * panels < im.width <= 190 * panels and im.height > 150
    assert len(list((tmp_path / "att").glob("*_attention.png"))) == 3


def test_evaluate_attention_run(trained, shapes):
    out, _ = trained
    dataset, store, _ = shapes
    result = evaluate_run(out, dataset, store, split="test", beams=(1, 2), meteor=False)
    assert result["cell"] == "attention" and set(result["results"]) == {"greedy", "beam2"}
    assert len(result["results"]["beam2"]["captions"]) == 10
    assert 0 <= result["results"]["beam2"]["metrics"]["BLEU-1"] <= 1


def test_a_store_without_grid_is_one_line_naming_the_store_and_flag(shapes, tmp_path, capsys):
    dataset, _, pooled = shapes
    argv = ["train", "--data", str(dataset), "--features", str(pooled), "--model", "attention",
            "--out", str(tmp_path / "r"), "--epochs", "1"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(pooled) in err and "--grid" in err
    assert not (tmp_path / "r").exists()  # nothing written before the check


def test_evaluate_attention_model_on_a_store_without_grid(trained, shapes):
    out, _ = trained
    dataset, _, pooled = shapes
    with pytest.raises(DataError, match=r"pooled\.h5: holds no attention grid.*--grid"):
        evaluate_run(out, dataset, pooled, split="test", meteor=False, coco=False)


def test_cli_train_evaluate_caption_attention(shapes, tmp_path, capsys):
    dataset, store, _ = shapes
    run = tmp_path / "run"
    argv = ["train", "--data", str(dataset), "--features", str(store), "--model", "attention",
            "--no-position", "--locations", "--hidden-dim", "16", "--wordvec-dim", "8",
            "--attention-dim", "8", "--epochs", "1", "--batch-size", "50", "--val-images", "5",
            "--out", str(run), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "attention"
    model = load_checkpoint(run / "best.npz")[0]
    assert model.num_cells is None and model.locations  # --no-position --locations
    argv = ["evaluate", "--model", str(run), "--data", str(dataset), "--beam", "2",
            "--no-meteor", "--limit", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "attention on 4 test images" in capsys.readouterr().out
    image = FeatureStore.open(store).paths[0]
    argv = ["caption", "--model", str(run), image, "--attention", str(tmp_path / "figs")]
    assert cli.main(argv) == 0
    assert "attention: " in capsys.readouterr().out
    assert len(list((tmp_path / "figs").glob("*.png"))) == 1


def test_attention_figures_need_an_attention_model(shapes, tmp_path):
    dataset, _, pooled = shapes
    out = tmp_path / "lstm"
    config = TrainConfig(hidden_dim=8, wordvec_dim=8, epochs=1, batch_size=50, val_images=2)
    train_run(dataset, pooled, out, config, progress=False, verbose=False)
    image = FeatureStore.open(pooled).paths[0]
    with pytest.raises(UserError, match=r"--attention needs an attention model.*\(lstm\)"):
        caption_images(out, [image], attention_dir=tmp_path / "figs")
