"""Every case of issue 12, through ``captionlab.cli.main``: a mistake is one line on stderr
naming the flag, field or file, what was expected and what came, with exit status 2 and no
traceback; where success is right, it succeeds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from captionlab import cli
from captionlab.captioning import load_checkpoint
from captionlab.captioning.checkpoint import save_checkpoint
from captionlab.data.features import FeatureExtractorConfig
from captionlab.data.shapes import generate_shapes
from captionlab.extract import extract_features

sys.path.insert(0, str(Path(__file__).parent / "captioning"))
from malicious_checkpoints import write_all

TINY = ["--hidden-dim", "16", "--wordvec-dim", "8", "--batch-size", "25", "--val-images", "10"]


def error_line(argv, capsys, *expected) -> str:
    """Run ``argv``; assert exit 2 and one stderr line holding every ``expected`` text."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


def ok_json(argv, capsys) -> dict:
    assert cli.main([*map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 40/10/10-image shapes benchmark and its store (64 px, PCA 16)."""
    root = tmp_path_factory.mktemp("issue12")
    shapes = generate_shapes(root / "shapes", 40, 10, 10, image_size=64, seed=3, progress=False)
    store = root / "feats.h5"
    config = FeatureExtractorConfig(image_size=64, pool="avg", pca_dim=16)
    extract_features(shapes / "dataset.json", store, config, progress=False, workers=0)
    return root, shapes / "dataset.json", store


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished two-epoch run."""
    _, dataset, store = data
    out = tmp_path_factory.mktemp("runs") / "lstm"
    argv = ["train", "--data", dataset, "--features", store, "--out", out, "--epochs", "2"]
    assert cli.main([*map(str, argv), *TINY, "--quiet"]) == 0
    return out


def _train(dataset, store, out, *more):
    return ["train", "--data", dataset, "--features", store, "--out", out, *TINY, *more]


# -- 1. memory ---------------------------------------------------------------------------------
def test_model_sizes_are_refused_before_allocation(data, tmp_path, capsys):
    _, dataset, store = data
    error_line(
        _train(dataset, store, tmp_path / "r", "--hidden-dim", "100000"),
        capsys, "--hidden-dim must be an integer in 1..16384, got 100000",
    )  # fmt: skip
    error_line(
        _train(dataset, store, tmp_path / "r", "--hidden-dim", "16384"),
        capsys, "--hidden-dim 16384", "parameters", "past the limit of 100,000,000",
    )  # fmt: skip
    assert not (tmp_path / "r" / "config.json").exists()


def test_hostile_checkpoints_are_one_line_errors(data, tmp_path, capsys):
    _, dataset, _ = data
    files = write_all(tmp_path / "hostile", bomb_gb=1)
    image = Path(dataset).parent / "images" / "test_00000.png"
    for name, path in files.items():
        if name == "good":
            continue
        error_line(["caption", "--model", path, image], capsys, str(path))
        error_line(
            ["evaluate", "--model", path, "--data", dataset, "--no-meteor"], capsys, str(path)
        )


# -- 2. work lost ------------------------------------------------------------------------------
def test_a_finished_run_is_not_overwritten_without_the_flag(data, run, tmp_path, capsys):
    _, dataset, store = data
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "best.npz").read_bytes()
    error_line(_train(dataset, store, copy, "--epochs", "1"), capsys,
               f"{copy}: holds a run with 2 epoch(s) saved", "--resume", "--overwrite")  # fmt: skip
    assert (copy / "best.npz").read_bytes() == before
    summary = ok_json([*_train(dataset, store, copy, "--epochs", "1"), "--overwrite"], capsys)
    assert summary["epochs"] == 1
    afile = tmp_path / "afile"
    afile.write_text("x")
    error_line(_train(dataset, store, afile), capsys, f"{afile}: exists and is not a folder")


# -- 3. wrong results --------------------------------------------------------------------------
def test_resume_keeps_the_runs_data_epochs_and_settings(data, run, tmp_path, capsys):
    _, dataset, _ = data
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    # Without --epochs: the run's own 2 epochs (done), not the default 10.
    summary = ok_json(["train", "--resume", copy], capsys)
    assert summary["epochs"] == 2 and summary["stop_reason"].startswith("nothing to do")
    err = error_line(["train", "--resume", copy, "--hidden-dim", "32", "--cell", "gru",
                      "--epochs", "3"], capsys, "--hidden-dim 32 (the run has 16)",
                     "--cell gru (the run has lstm)")  # fmt: skip
    assert "--epochs" not in err
    other = Path(dataset).parent / "other.json"
    doc = json.loads(Path(dataset).read_text())
    doc["images"][0]["sentences"][0]["raw"] = "a different caption"
    other.write_text(json.dumps(doc))
    error_line(["train", "--resume", copy, "--data", other, "--epochs", "3"], capsys,
               f"--data {other}", "is not the data", str(Path(dataset).resolve()))  # fmt: skip
    summary = ok_json(["train", "--resume", copy, "--epochs", "3", "--quiet"], capsys)
    assert summary["epochs"] == 3


def test_a_store_of_another_dataset_is_refused(data, run, tmp_path, capsys):
    _, _, store = data
    other = generate_shapes(tmp_path / "other", 40, 10, 10, image_size=64, seed=8, progress=False)
    error_line(_train(other / "dataset.json", store, tmp_path / "r"), capsys,
               f"{store}: image id", "the store was made for another dataset")  # fmt: skip
    error_line(["evaluate", "--model", run, "--data", other / "dataset.json", "--features",
                store, "--no-meteor"], capsys, "made for another dataset")  # fmt: skip


# -- 4. tracebacks -----------------------------------------------------------------------------
def test_seeds_limits_and_config_values(data, run, tmp_path, capsys):
    _, dataset, store = data
    seed = "--seed must be an integer in 0..4294967295, got -1"
    error_line([*_train(dataset, store, tmp_path / "r"), "--seed", "-1"], capsys, seed)
    error_line(["gradcheck", "--seed", "-1"], capsys, seed)
    error_line(["data", "shapes", "--out", tmp_path / "s", "--seed", "-1"], capsys, seed)
    error_line(["evaluate", "--model", run, "--data", dataset, "--limit", "0"], capsys,
               "--limit must be an integer >= 1, got 0")  # fmt: skip
    for value, shown in (('"big"', "'big'"), ("8.5", "8.5")):
        cfg = tmp_path / "cfg.json"
        cfg.write_text(f'{{"hidden_dim": {value}}}')
        expected = f"{cfg}: field 'hidden_dim' must be an integer in 1..16384, got {shown}"
        error_line([*_train(dataset, store, tmp_path / "r"), "--config", cfg], capsys, expected)
    cfg.write_text('{"learning_rate": null}')
    error_line([*_train(dataset, store, tmp_path / "r"), "--config", cfg], capsys,
               "field 'learning_rate' must be a finite number > 0, got None")  # fmt: skip


def test_out_naming_a_folder_or_a_file(data, run, tmp_path, capsys):
    _, dataset, _ = data
    folder = tmp_path / "results"
    folder.mkdir()
    summary = ok_json(["evaluate", "--model", run, "--data", dataset, "--no-meteor",
                       "--beam", "1", "--limit", "3", "--out", folder], capsys)  # fmt: skip
    assert summary["captions_file"] == str(folder / "eval_test.json")
    assert (folder / "eval_test.json").is_file()
    summary = ok_json(["data", "vocab", dataset, "--out", folder], capsys)
    assert summary["out"] == str(folder / "vocab.json")


def test_a_sentence_that_is_a_number(data, tmp_path, capsys):
    _, dataset, store = data
    doc = json.loads(Path(dataset).read_text())
    doc["images"][2]["sentences"][1] = 123
    bad = Path(dataset).parent / "numbered.json"
    bad.write_text(json.dumps(doc))
    field = "field 'images[2].sentences[1]' must be an object, got int"
    error_line(["data", "info", bad], capsys, str(bad), field)
    error_line(["features", bad, "--out", tmp_path / "f.h5", "--size", "64"], capsys, field)
    error_line(_train(bad, store, tmp_path / "r"), capsys, field)


def test_val_images_zero_monitors_the_validation_loss(data, tmp_path, capsys):
    _, dataset, store = data
    argv = [*_train(dataset, store, tmp_path / "r", "--epochs", "1"), "--val-images", "0"]
    summary = ok_json(argv, capsys)
    assert summary["monitor"] == "val_loss" and summary["best_val_loss"] > 0
    assert (tmp_path / "r" / "best.npz").is_file()


# -- 5. divergence -----------------------------------------------------------------------------
def test_divergence_stops_training_with_one_line(data, tmp_path, capsys):
    _, dataset, store = data
    error_line([*_train(dataset, store, tmp_path / "r"), "--learning-rate", "inf"], capsys,
               "--learning-rate must be a finite number > 0, got inf")  # fmt: skip
    error_line([*_train(dataset, store, tmp_path / "r"), "--learning-rate", "1e6"], capsys,
               "training stopped: the loss grew from", "more than 100 times")  # fmt: skip
    assert not (tmp_path / "r" / "best.npz").exists()


# -- 6. silent garbage -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fool", "skimage:coffee", "--target", "goldfish", "--lr", "nan"], "--lr must be"),
        (["dream", "tarantula", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["dream", "tarantula", "--init-std", "nan"], "--init-std must be"),
        (["dream", "tarantula", "--l2", "inf"], "--l2 must be a finite number >= 0, got inf"),
        (["saliency", "skimage:chelsea", "--noise", "nan"], "--noise must be a number in"),
        (
            ["fool", "skimage:coffee", "--target", "1", "--epsilon", "2/255", "--step-size", "3"],
            "--step-size must be a number in (0, 1], got 3",
        ),
    ],
)
def test_nan_and_out_of_range_hyperparameters(argv, expected, capsys):
    error_line(argv, capsys, expected)


def test_the_library_refuses_them_too():
    from captionlab.errors import UserError
    from captionlab.vision.settings import DREAM, FOOL, check_settings

    with pytest.raises(UserError, match="learning_rate must be a finite number > 0, got nan"):
        check_settings(DREAM, {"learning_rate": float("nan")})
    with pytest.raises(UserError, match="step_size is a PGD setting"):
        check_settings(FOOL, {"epsilon": None, "step_size": 0.1})


def test_nan_weights_and_tiny_vocabularies_are_refused(data, run, tmp_path, capsys):
    _, dataset, store = data
    model, state = load_checkpoint(run / "best.npz")
    model.params["Wh"][0, 0] = np.nan
    bad = save_checkpoint(tmp_path / "nan.npz", model, extra=state["extra"])
    image = Path(dataset).parent / "images" / "test_00000.png"
    error_line(
        ["caption", "--model", bad, image], capsys, f"{bad}: array 'params/Wh' holds non-finite"
    )
    error_line(_train(dataset, store, tmp_path / "r", "--min-word-count", "100000"), capsys,
               "--min-word-count 100000 keeps 0 words", "100% of the training words")  # fmt: skip


def test_json_output_never_holds_nan():
    text = cli.to_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    assert "NaN" not in text and "Infinity" not in text


# -- 7. paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("filename", ["/etc/passwd", "../../x.jpg"])
def test_paths_outside_the_image_root(data, tmp_path, capsys, filename):
    _, dataset, store = data
    doc = json.loads(Path(dataset).read_text())
    doc["images"][1]["filename"] = filename
    bad = tmp_path / "escape.json"
    bad.write_text(json.dumps(doc))
    expected = "field 'images[1].filename' must be a path inside the image folder"
    error_line(["data", "info", bad], capsys, str(bad), expected, repr(filename))
    error_line(["features", bad, "--out", tmp_path / "f.h5"], capsys, expected)
    error_line(_train(bad, store, tmp_path / "r"), capsys, expected)


# -- 8. unclear messages -----------------------------------------------------------------------
def test_a_checkpoint_without_its_pca_basis_names_the_file(data, run, tmp_path, capsys):
    _, dataset, _ = data
    model, state = load_checkpoint(run / "best.npz")
    extra = {k: v for k, v in state["extra"].items() if k != "pca"}
    bad = save_checkpoint(tmp_path / "nopca.npz", model, extra=extra)
    image = Path(dataset).parent / "images" / "test_00000.png"
    error_line(["caption", "--model", bad, image], capsys,
               f"{bad}: extra.features asks for PCA to 16 dimensions", "no PCA basis")  # fmt: skip


def test_data_json_info_prints_json(data, capsys):
    _, dataset, _ = data
    for argv in (["data", "--json", "info", dataset], ["data", "info", dataset, "--json"]):
        assert cli.main([str(a) for a in argv]) == 0
        assert json.loads(capsys.readouterr().out)["format"] == "karpathy"


# -- 9. evaluate anywhere, on new data ---------------------------------------------------------
def test_evaluate_from_another_folder_and_on_a_new_dataset(
    data, run, tmp_path, capsys, monkeypatch
):
    _, dataset, _ = data
    monkeypatch.chdir(tmp_path)
    base = ["evaluate", "--model", run, "--no-meteor", "--beam", "1"]
    summary = ok_json([*base, "--data", dataset, "--limit", "4"], capsys)
    assert summary["features"] == {"store": str(Path(data[2]).resolve()), "extracted": False}
    new = generate_shapes(tmp_path / "new", 4, 2, 3, image_size=64, seed=11, progress=False)
    first = ok_json([*base, "--data", new / "dataset.json"], capsys)
    assert first["features"]["extracted"] and first["images"] == 3
    assert Path(first["features"]["store"]).parent == run / "eval_features"
    again = ok_json([*base, "--data", new / "dataset.json"], capsys)
    assert again["features"] == {**first["features"], "extracted": False}
    assert again["metrics"] == first["metrics"]


# -- 10. out of its world ----------------------------------------------------------------------
def test_a_shapes_model_says_what_it_describes(data, run, capsys):
    _, dataset, _ = data
    image = Path(dataset).parent / "images" / "test_00000.png"
    assert cli.main(["caption", "--model", str(run), str(image)]) == 0
    out = capsys.readouterr().out
    assert "note: this model was trained on the generated shapes benchmark" in out
    assert "captionlab train --data dataset.json" in out
    summary = ok_json(["caption", "--model", run, image], capsys)
    assert summary["trained_on"]["dataset_title"] == "shapes" and summary["note"]


def test_the_training_store_is_found_after_run_and_data_moved_together(tmp_path):
    from captionlab.runs.evaluate import _training_stores

    (tmp_path / "moved" / "runs" / "a").mkdir(parents=True)
    (tmp_path / "moved" / "feats.h5").write_bytes(b"")
    ckpt = tmp_path / "moved" / "runs" / "a" / "best.npz"
    extra = {"feature_store": "/gone/feats.h5", "feature_store_relative": "../../feats.h5"}
    assert _training_stores(extra, ckpt) == [ckpt.parent / "../../feats.h5"]
