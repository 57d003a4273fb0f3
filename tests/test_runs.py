"""The train / evaluate / caption wiring, end to end on a tiny shapes benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captionlab import cli
from captionlab.captioning import load_checkpoint
from captionlab.data.features import FeatureExtractorConfig, FeatureStore
from captionlab.data.shapes import generate_shapes
from captionlab.errors import CheckpointError, UserError
from captionlab.extract import extract_features
from captionlab.runs.config import TrainConfig
from captionlab.runs.evaluate import evaluate_run
from captionlab.runs.inference import caption_images, extractor_for_checkpoint, resolve_model_path
from captionlab.runs.train import train_run

TINY = dict(hidden_dim=16, wordvec_dim=8, epochs=2, batch_size=25, val_images=10)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 40/10/10-image benchmark with 64-px, PCA-16 features (PCA exercises the basis
    travelling inside the checkpoint)."""
    root = tmp_path_factory.mktemp("shapes")
    data = generate_shapes(root / "shapes", 40, 10, 10, image_size=64, seed=3, progress=False)
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=16)
    store = root / "feats.h5"
    extract_features(data / "dataset.json", store, config, progress=False, workers=0)
    return data / "dataset.json", store


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    dataset, store = shapes
    out = tmp_path_factory.mktemp("run") / "lstm"
    summary = train_run(dataset, store, out, TrainConfig(**TINY), progress=False, verbose=False)
    return out, summary


def test_train_writes_a_complete_run_folder(trained):
    out, summary = trained
    for name in ("best.npz", "last.npz", "loss.png", "log.json", "config.json", "vocab.json"):
        assert (out / name).is_file(), name
    assert summary["epochs"] == 2
    assert len(summary["train_loss_history"]) == 2
    assert summary["train_loss_history"][1] < summary["train_loss_history"][0]
    log = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2]
    # The checkpoint carries what `caption` needs to rebuild the features.
    _, state = load_checkpoint(out / "best.npz")
    assert state["extra"]["features"]["pool"] == "avg+2x2"
    assert state["extra"]["pca"]["components"].shape == (5 * 1280, 16)


def test_caption_reproduces_the_stored_features(trained, shapes):
    """New-image features = store features: the PCA basis and config travel in the model."""
    out, _ = trained
    _, store_path = shapes
    store = FeatureStore.open(store_path)
    _, state = load_checkpoint(out / "best.npz")
    ids = store.split_ids("test")[:3]
    paths = [store.paths[store.image_ids.index(i)] for i in ids]
    fresh = extractor_for_checkpoint(state).transform(paths)
    np.testing.assert_allclose(fresh, store.features_for(ids), atol=1e-3, rtol=1e-3)
    results = caption_images(out, paths, beam=2)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    assert all(isinstance(r["caption"], str) for r in results)


def test_evaluate_scores_coco_and_scene_metrics(trained, shapes):
    out, _ = trained
    dataset, store = shapes
    result = evaluate_run(out, dataset, store, split="test", beams=(1, 2), meteor=False)
    assert set(result["results"]) == {"greedy", "beam2"}
    greedy = result["results"]["greedy"]
    assert len(greedy["captions"]) == 10
    metrics = greedy["metrics"]
    for key in ("BLEU-4", "CIDEr", "ROUGE-L", "object_f1", "count_accuracy"):
        assert key in metrics
    assert metrics["METEOR"] is None and "METEOR" in metrics["unavailable"]
    assert 0.0 <= metrics["BLEU-1"] <= 1.0
    assert greedy["captions"][0]["references"]


def test_resume_continues_to_more_epochs(shapes, tmp_path):
    dataset, store = shapes
    out = tmp_path / "run"
    config = TrainConfig(**{**TINY, "epochs": 1})
    train_run(dataset, store, out, config, progress=False, verbose=False)
    resumed = train_run(
        dataset, store, out, TrainConfig(**{**TINY, "epochs": 2}), resume=True,
        progress=False, verbose=False,
    )  # fmt: skip
    assert resumed["epochs"] == 2
    log = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2]
    # The uninterrupted two-epoch run gives the same losses (float32 tolerance).
    straight = train_run(
        dataset, store, tmp_path / "straight", TrainConfig(**TINY), progress=False, verbose=False
    )
    np.testing.assert_allclose(resumed["train_loss_history"], straight["train_loss_history"])
    np.testing.assert_allclose(resumed["loss_history"], straight["loss_history"])


def test_model_path_forms(trained):
    out, _ = trained
    assert resolve_model_path(out) == out / "best.npz"
    assert resolve_model_path(out / "best") == out / "best.npz"
    assert resolve_model_path(out / "last.npz") == out / "last.npz"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_model_path(out / "nothing")


def test_train_config_rejects_bad_values():
    with pytest.raises(UserError, match="hidden_dim"):
        TrainConfig(hidden_dim=0)
    with pytest.raises(UserError, match="cell"):
        TrainConfig(cell="transformer")


def test_cli_train_json_and_one_line_errors(shapes, tmp_path, capsys):
    dataset, store = shapes
    out = tmp_path / "cli_run"
    argv = ["train", "--data", str(dataset), "--features", str(store), "--out", str(out)]
    argv += ["--hidden-dim", "8", "--wordvec-dim", "8", "--epochs", "1", "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and summary["cell"] == "lstm"

    # --resume RUN continues that run to more epochs (the flags of the first run are kept).
    resume = ["train", "--data", str(dataset), "--features", str(store), "--resume", str(out)]
    assert cli.main([*resume, "--epochs", "2", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["epochs"] == 2 and len(resumed["train_loss_history"]) == 2
    argv_no_out = ["train", "--data", str(dataset), "--features", str(store)]
    assert cli.main(argv_no_out) == 2
    assert "--out RUN" in capsys.readouterr().err

    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"hidden_dimm": 3}))
    argv = ["train", "--data", str(dataset), "--features", str(store), "--out", str(out)]
    assert cli.main([*argv, "--config", str(bad_config)]) == 2
    err = capsys.readouterr().err
    assert "hidden_dimm" in err and err.count("\n") == 1

    assert cli.main(["caption", "--model", str(tmp_path / "missing"), str(dataset)]) == 2
    assert "no checkpoint" in capsys.readouterr().err

    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    assert cli.main(["caption", "--model", str(out), str(not_image)]) == 2
    err = capsys.readouterr().err
    assert "notes.png" in err and "Traceback" not in err


def test_cli_rejects_unknown_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--data", "x", "--features", "y", "--out", "z", "--hiden-dim", "3"])
    assert exc.value.code == 2
    assert "--hiden-dim" in capsys.readouterr().err
