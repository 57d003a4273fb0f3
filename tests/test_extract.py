"""Extraction: folder or dataset -> feature store; resume; skipped files; caption-time reuse."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from captionlab.data.features import FeatureStore, partial_path
from captionlab.errors import UserError
from captionlab.extract import (
    FeatureExtractor,
    FeatureExtractorConfig,
    collect_images,
    extract_features,
    pool_grid,
)

SMALL = FeatureExtractorConfig(image_size=64)  # 2x2 last feature map: fast on any CPU


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_images(folder, n, seed=0):
    """n random 48x40 RGB PNGs named img00.png ... in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return sorted(folder.glob("*.png"))


def test_pool_grid_layout():
    grid = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)  # (B, C, h, w)
    out = pool_grid(grid, "avg+max+2x2")
    assert out.shape == (2, 3 + 3 + 4 * 3)
    torch.testing.assert_close(out[:, :3], grid.mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, 3:6], grid.amax(dim=(2, 3)))
    top_left = grid[:, :, :2, :2].mean(dim=(2, 3))  # cell 0, channels contiguous
    bottom_right = grid[:, :, 2:, 2:].mean(dim=(2, 3))  # cell 3
    torch.testing.assert_close(out[:, 6:9], top_left)
    torch.testing.assert_close(out[:, 15:18], bottom_right)


def test_folder_extraction_skips_bad_files(tmp_path):
    folder = tmp_path / "imgs"
    make_images(folder, 5)
    (folder / "notes.png").write_text("not an image")
    good = folder / "img01.png"
    (folder / "cut.png").write_bytes(good.read_bytes()[:200])
    out = tmp_path / "f.h5"
    summary = extract_features(folder, out, SMALL, batch_size=3, progress=False)
    assert summary["images"] == 7 and summary["stored"] == 5 and summary["n_failed"] == 2
    assert sorted(f["image_id"] for f in summary["failed"]) == ["cut.png", "notes.png"]
    assert all(f["path"] in f["error"] for f in summary["failed"])
    assert not partial_path(out).exists()
    store = FeatureStore.open(out)
    assert store.image_ids == [f"img{i:02d}.png" for i in range(5)]
    assert store.dim == 1280 and store.splits == [""] * 5
    feats = store.features_for(store.image_ids)
    assert feats.dtype == np.float32 and np.all(feats >= 0) and np.all(feats <= 6)
    assert not np.allclose(feats[0], feats[1])  # different images, different features
    # caption time: the same numbers for the same files
    again = FeatureExtractor.from_store(out).transform([folder / "img03.png", folder / "img00.png"])
    np.testing.assert_allclose(again, feats[[3, 0]], atol=1e-5)
    with pytest.raises(UserError, match=r"notes\.png: not an image"):
        FeatureExtractor.from_store(out).transform([folder / "notes.png"])


def test_interrupted_run_resumes_and_matches_a_clean_run(tmp_path):
    folder = tmp_path / "imgs"
    make_images(folder, 7)
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", grid=True, grid_pca_dim=None)
    out = tmp_path / "f.h5"

    def stop_after_first_batch(k):
        if k == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(
            folder, out, config, batch_size=3, progress=False, on_batch=stop_after_first_batch
        )
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(Exception, match="interrupted: rerun it to resume"):
        FeatureStore.open(out)
    resumed = extract_features(folder, out, config, batch_size=3, progress=False)
    assert (resumed["resumed_from"], resumed["processed"], resumed["stored"]) == (3, 4, 7)
    clean = extract_features(folder, tmp_path / "clean.h5", config, batch_size=3, progress=False)
    assert clean["resumed_from"] == 0 and clean["processed"] == 7
    a, b = FeatureStore.open(out), FeatureStore.open(tmp_path / "clean.h5")
    assert a.image_ids == b.image_ids
    np.testing.assert_allclose(a.all_features(), b.all_features(), atol=1e-5)
    grid = a.grid_features_for(a.image_ids)  # (M, L, 112 + 1280) float16 in the file
    assert grid.shape == (7, 4, 1392)
    np.testing.assert_array_equal(grid, b.grid_features_for(a.image_ids))
    # the last map's 2x2 cells are the grid's last 1280 values, their mean the avg feature
    np.testing.assert_allclose(a.all_features()[:, :1280], grid[:, :, 112:].mean(1), atol=2e-2)


def test_dataset_input_pca_on_train_split_and_reuse(tmp_path):
    root = tmp_path / "data"
    paths = make_images(root / "images", 8)
    (root / "images" / "img07.png").unlink()  # listed in the dataset, absent on disk
    splits = ["train"] * 5 + ["val", "test", "test"]
    images = [
        {
            "filename": p.name,
            "filepath": "images",
            "imgid": i,
            "split": s,
            "sentences": [{"raw": "a thing", "tokens": ["a", "thing"]}],
        }
        for i, (p, s) in enumerate(zip(paths, splits, strict=True))
    ]
    (root / "dataset.json").write_text(json.dumps({"images": images}))
    config = FeatureExtractorConfig(image_size=64, pca_dim=4, grid=True, grid_pca_dim=3)
    summary = extract_features(root / "dataset.json", tmp_path / "f.h5", config, progress=False)
    assert summary["grid"] == [4, 3] and summary["grid_pca_fit_cells"] == 5 * 4
    assert summary["stored"] == 7 and [f["image_id"] for f in summary["failed"]] == ["7"]
    assert "not found" in summary["failed"][0]["error"]
    assert (summary["pca_fit_split"], summary["pca_fit_rows"], summary["feature_dim"]) == (
        "train",
        5,
        4,
    )
    store = FeatureStore.open(tmp_path / "f.h5")
    assert store.split_ids("train") == ["0", "1", "2", "3", "4"] and store.dim == 4
    train = store.features_for(store.split_ids("train"))
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-3)  # PCA centred on train
    fx = FeatureExtractor.from_store(store)
    assert fx.dim == 4 and fx.pca is not None
    np.testing.assert_allclose(fx.transform([paths[5]]), store.features_for(["5"]), atol=1e-4)
    with pytest.raises(UserError, match="no PCA basis was given"):
        FeatureExtractor(config).transform([paths[5]])
    # the grid: PCA centred on the train split's cells; new images get the stored numbers
    train_grid = store.grid_features_for(store.split_ids("train"))  # (5, 4, 3)
    np.testing.assert_allclose(train_grid.reshape(-1, 3).mean(axis=0), 0, atol=2e-3)
    # scaled to unit RMS on the cells it was fitted on (all 20 of them here)
    assert np.sqrt(np.mean(train_grid**2)) == pytest.approx(1.0, abs=2e-3)
    assert store.grid_pca.scale > 1  # raw cells are far larger than unit RMS
    feats, grid = fx.transform_with_grid([paths[6], paths[5]])
    np.testing.assert_allclose(feats, store.features_for(["6", "5"]), atol=1e-4)
    np.testing.assert_allclose(grid, store.grid_features_for(["6", "5"]), atol=2e-3)
    assert grid.dtype == np.float32 and grid.shape == (2, 4, 3)
    with pytest.raises(UserError, match="no grid PCA basis"):
        FeatureExtractor(config, pca=store.pca).transform_with_grid([paths[5]])


def test_up_to_date_overwrite_and_mismatch(tmp_path):
    folder = tmp_path / "imgs"
    make_images(folder, 3)
    out = tmp_path / "f.h5"
    extract_features(folder, out, SMALL, progress=False)
    assert extract_features(folder, out, SMALL, progress=False)["up_to_date"] is True
    other = FeatureExtractorConfig(image_size=64, pool="max")
    with pytest.raises(UserError, match=r"other settings or images.*--overwrite"):
        extract_features(folder, out, other, progress=False)
    summary = extract_features(folder, out, other, progress=False, overwrite=True)
    assert summary["up_to_date"] is False and FeatureStore.open(out).config == other


def test_input_errors(tmp_path):
    with pytest.raises(UserError, match="expected a dataset file or a folder"):
        collect_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        collect_images(tmp_path / "empty")
    make_images(tmp_path / "bad", 0)
    (tmp_path / "bad" / "x.png").write_text("no")
    with pytest.raises(UserError, match="no image could be read"):
        extract_features(tmp_path / "bad", tmp_path / "f.h5", SMALL, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            extract_features(tmp_path / "bad", tmp_path / "g.h5", SMALL, device="cuda")
        assert not partial_path(tmp_path / "g.h5").exists()


def test_limit_and_ids_are_relative_paths(tmp_path):
    make_images(tmp_path / "imgs" / "sub", 2)
    make_images(tmp_path / "imgs", 2, seed=1)
    items, kind = collect_images(tmp_path / "imgs")
    assert kind == "folder"
    assert [it.image_id for it in items] == [
        "img00.png",
        "img01.png",
        "sub/img00.png",
        "sub/img01.png",
    ]
    assert len(collect_images(tmp_path / "imgs", limit=3)[0]) == 3
