"""`captionlab train --model transformer`, `evaluate` and `caption`, on pooled features and
on the store's grid (the solver and checkpoints: tests/captioning/test_transformer_*)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from captionlab import cli
from captionlab.captioning import CaptioningTransformer, load_checkpoint
from captionlab.data.features import FeatureExtractorConfig
from captionlab.data.shapes import generate_shapes
from captionlab.demo import DemoConfig
from captionlab.errors import UserError
from captionlab.extract import extract_features
from captionlab.runs.config import TrainConfig
from captionlab.runs.evaluate import evaluate_run
from captionlab.runs.inference import caption_images
from captionlab.runs.train import build_model, train_run

TINY = dict(
    model="transformer", hidden_dim=16, wordvec_dim=8, num_heads=2, num_layers=1,
    epochs=2, batch_size=25, val_images=10,
)  # fmt: skip


def test_build_model_from_the_train_config():
    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}
    store = SimpleNamespace(dim=12, grid_shape=(4, 6), require_grid=lambda: None)
    model = build_model(TrainConfig(**TINY), vocab, store)
    assert isinstance(model, CaptioningTransformer)
    c = model.config
    assert (c.input_dim, c.wordvec_dim, c.num_heads, c.num_layers) == (12, 8, 2, 1)
    assert (c.dim_feedforward, c.dropout, c.grid, c.max_length) == (16, 0.1, False, 50)
    grid = build_model(TrainConfig(**TINY, grid=True), vocab, store)
    assert grid.feature_shape == (4, 6) and grid.config.grid  # position embedding by default
    assert grid.locations and grid.location_summary  # and the places, read and summed
    no_pos = build_model(
        TrainConfig(**TINY, grid=True, position=False, locations=False), vocab, store
    )
    assert no_pos.feature_shape == (None, 6) and not no_pos.locations
    located = build_model(
        TrainConfig(**TINY, grid=True, locations=True, location_summary=False), vocab, store
    )
    assert located.locations and located.config.locations and located.feature_shape == (4, 6)
    with pytest.raises(UserError, match=r"--locations needs .*--model transformer without --grid"):
        TrainConfig(**TINY, locations=True)
    with pytest.raises(UserError, match=r"--locations needs .*got --model rnn"):
        TrainConfig(locations=True)
    summed = build_model(
        TrainConfig(**TINY, grid=True, locations=True, location_summary=True), vocab, store
    )
    assert summed.location_summary and summed.config.location_summary
    assert not located.location_summary
    with pytest.raises(UserError, match=r"--location-summary needs .*without --locations"):
        TrainConfig(**TINY, grid=True, locations=False, location_summary=True)
    with pytest.raises(UserError, match=r"--location-summary needs .*got --model attention"):
        TrainConfig(model="attention", locations=True, location_summary=True)
    assert build_model(TrainConfig(cell="gru"), vocab, store).cell_type == "gru"
    with pytest.raises(UserError, match="--num-heads 3 must divide --wordvec-dim 8"):
        TrainConfig(**{**TINY, "num_heads": 3})
    with pytest.raises(UserError, match="model must be one of rnn, attention, transformer"):
        TrainConfig(model="cnn")
    with pytest.raises(UserError, match="dropout"):
        TrainConfig(dropout=1.0)


def test_demo_config_sets_the_transformers_locations():
    """The demo's (and bench_quality's ``--set``) transformer_locations and
    transformer_location_summary reach the run's TrainConfig: both on by default, each
    captioner's setting apart from the other's."""
    tconfig = DemoConfig().train_config("transformer")
    assert tconfig.locations and tconfig.location_summary and tconfig.grid
    assert tconfig.uses_locations and tconfig.uses_location_summary
    assert DemoConfig().train_config("attention").uses_locations
    off = DemoConfig(transformer_locations=False, transformer_location_summary=False)
    assert not off.train_config("transformer").uses_locations
    assert not off.train_config("transformer").uses_location_summary
    assert off.train_config("attention").uses_locations  # the attention captioner's own
    assert not DemoConfig(attention_locations=False).train_config("attention").uses_locations
    assert DemoConfig(attention_locations=False).train_config("transformer").uses_locations
    read_only = DemoConfig(transformer_location_summary=False).train_config("transformer")
    assert read_only.uses_locations and not read_only.uses_location_summary
    with pytest.raises(UserError, match="--location-summary needs"):
        DemoConfig(transformer_locations=False).train_config("transformer")


def test_demo_config_sets_the_transformers_monitor():
    """The demo picks the transformer's epoch by validation loss (its own field, apart from
    the attention captioner's); the train command's default stays ``auto``."""
    assert DemoConfig().train_config("transformer").monitor == "val_loss"
    assert DemoConfig(transformer_monitor="auto").train_config("transformer").monitor == "auto"
    assert DemoConfig(transformer_monitor="auto").train_config("attention").monitor == "val_loss"
    assert DemoConfig(attention_monitor="auto").train_config("transformer").monitor == "val_loss"
    assert TrainConfig(**TINY).monitor == "auto"
    with pytest.raises(UserError, match="monitor must be one of"):
        DemoConfig(transformer_monitor="bleu").train_config("transformer")


def test_train_config_location_defaults_follow_the_model():
    """Unset, locations are on for every grid reader and the running summary for the grid
    Transformer; pooled models get neither."""
    assert TrainConfig(model="attention").uses_locations
    assert not TrainConfig(model="attention").uses_location_summary
    grid = TrainConfig(model="transformer", grid=True)
    assert grid.uses_locations and grid.uses_location_summary
    pooled = TrainConfig(model="transformer")
    assert not pooled.uses_locations and not pooled.uses_location_summary
    assert not TrainConfig(model="rnn").uses_locations
    assert not TrainConfig(model="transformer", grid=True, locations=False).uses_location_summary


def test_coverage_flag_reaches_the_model():
    """--coverage (and the demo's transformer_coverage) builds a grid Transformer whose
    cross-attention has coverage (c_cov and u_cov per layer, zero: the plain model at the
    start); unset it is on for --model transformer --grid, off for every other model; it
    needs --model transformer --grid."""
    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}
    store = SimpleNamespace(dim=12, grid_shape=(4, 6), require_grid=lambda: None)
    covered = build_model(TrainConfig(**TINY, grid=True, coverage=True), vocab, store)
    assert covered.coverage and covered.config.coverage and covered.location_summary
    assert not covered.params["layers.0.cross_attn.c_cov"].any()
    assert not covered.params["layers.0.cross_attn.u_cov"].any()
    assert TrainConfig(**TINY, grid=True).uses_coverage
    assert build_model(TrainConfig(**TINY, grid=True), vocab, store).coverage
    assert not build_model(TrainConfig(**TINY, grid=True, coverage=False), vocab, store).coverage
    assert not TrainConfig(**TINY).uses_coverage  # pooled: one token, nothing to cover
    assert not TrainConfig(model="attention").uses_coverage
    with pytest.raises(UserError, match=r"--coverage needs .*--model transformer without --grid"):
        TrainConfig(**TINY, coverage=True)
    with pytest.raises(UserError, match=r"--coverage needs .*got --model attention"):
        TrainConfig(model="attention", coverage=True)
    assert DemoConfig().train_config("transformer").coverage is True
    off = DemoConfig(transformer_coverage=False)
    assert off.train_config("transformer").coverage is False
    assert not off.train_config("transformer").uses_coverage
    assert not DemoConfig().train_config("attention").uses_coverage


@pytest.fixture(scope="module")
def shapes_with_grid(tmp_path_factory):
    """A 40/10/10-image benchmark, 64-px features: pooled 1280-d and the 2x2 grid (block10
    and the last map per cell, PCA to 16)."""
    root = tmp_path_factory.mktemp("shapes_grid")
    data = generate_shapes(root / "shapes", 40, 10, 10, image_size=64, seed=4, progress=False)
    config = FeatureExtractorConfig(image_size=64, pool="avg", grid=True, grid_pca_dim=16)
    store = root / "feats.h5"
    extract_features(data / "dataset.json", store, config, progress=False, workers=0)
    return data / "dataset.json", store


@pytest.mark.parametrize("grid", [False, True], ids=["pooled", "grid"])
def test_train_evaluate_caption_a_transformer(shapes_with_grid, tmp_path, grid):
    dataset, store = shapes_with_grid
    out = tmp_path / "run"
    config = TrainConfig(**{**TINY, "grid": grid})
    summary = train_run(dataset, store, out, config, progress=False, verbose=False)
    assert summary["cell"] == summary["model"] == "transformer" and summary["epochs"] == 2
    model, _ = load_checkpoint(out / "best.npz")
    assert isinstance(model, CaptioningTransformer) and model.config.grid is grid
    assert model.feature_shape == ((4, 16) if grid else (1280,))  # 64 px: a 2x2 grid
    assert ("W_pos" in model.params) is grid
    assert json.loads((out / "log.json").read_text())["cell"] == "transformer"

    result = evaluate_run(out, dataset, store, split="test", beams=(1, 2), meteor=False)
    assert result["cell"] == "transformer" and set(result["results"]) == {"greedy", "beam2"}
    assert len(result["results"]["beam2"]["captions"]) == 10
    assert 0 <= result["results"]["greedy"]["metrics"]["object_f1"] <= 1

    images = sorted((dataset.parent / "images").glob("*.png"))[:2]
    captions = caption_images(out, images, beam=2)
    assert [c["image"] for c in captions] == [str(p) for p in images]
    assert all(isinstance(c["caption"], str) for c in captions)


def test_cli_train_transformer(shapes_with_grid, tmp_path, capsys):
    dataset, store = shapes_with_grid
    out = tmp_path / "cli"
    argv = ["train", "--data", str(dataset), "--features", str(store), "--out", str(out)]
    argv += ["--model", "transformer", "--num-heads", "2", "--num-layers", "1"]
    argv += ["--dropout", "0", "--grid", "--locations", "--hidden-dim", "8", "--wordvec-dim", "8"]
    assert cli.main([*argv, "--epochs", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cell"] == "transformer"
    config = json.loads((out / "config.json").read_text())["train"]
    assert (config["model"], config["num_heads"], config["grid"], config["dropout"]) == (
        "transformer", 2, True, 0.0,
    )  # fmt: skip
    assert config["locations"] is True
    model = load_checkpoint(out / "best.npz")[0]
    assert model.locations and model.feature_shape == (4, 16)  # a 2x2 grid: square
    assert cli.main(["evaluate", "--model", str(out), "--data", str(dataset), "--beam", "2",
                     "--no-meteor", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 10
    assert cli.main([*argv[:7], "--model", "transformer", "--num-heads", "3"]) == 2
    assert "--num-heads 3 must divide --wordvec-dim" in capsys.readouterr().err
    assert cli.main([*argv[:7], "--model", "transformer", "--locations"]) == 2
    assert "--locations needs a model that reads the grid" in capsys.readouterr().err
