"""The HDF5 feature store: config, PCA, resumable atomic writing, reading (no torch here)."""

import h5py
import numpy as np
import pytest

from captionlab.data.features import (
    FORMAT_VERSION,
    FeatureExtractorConfig,
    FeatureStore,
    FeatureStoreWriter,
    fit_pca,
    parse_pool,
    partial_path,
)
from captionlab.errors import DataError, UserError

IDS = ["a", "b", "c", "d", "e"]
PATHS = [f"/img/{i}.png" for i in IDS]
SPLITS = ["train", "train", "train", "val", "test"]


def raw_rows(rows, dim):
    """Deterministic fake features: row i is filled with i + column / dim."""
    rows = np.asarray(rows)
    return (rows[:, None] + np.arange(dim)[None, :] / dim).astype(np.float32)


# -- config ----------------------------------------------------------------------------------


def test_config_dims_and_json_roundtrip():
    c = FeatureExtractorConfig()
    assert (c.image_size, c.pool, c.raw_dim, c.feature_dim, c.grid_side) == (
        160,
        "avg",
        1280,
        1280,
        5,
    )
    c2 = FeatureExtractorConfig(image_size=224, pool="avg+2x2", pca_dim=512)
    assert (c2.raw_dim, c2.feature_dim, c2.grid_side) == (6400, 512, 7)
    assert FeatureExtractorConfig.from_json(c2.to_json()) == c2
    assert FeatureExtractorConfig(pool="max+3x3").raw_dim == 1280 * 10


def test_parse_pool():
    assert parse_pool("avg+2x2") == [("avg", 1), ("grid", 2)]
    assert parse_pool("MAX") == [("max", 1)]
    for bad in ["", "mean", "2x3", "avg+avg", "9x9"]:
        with pytest.raises(UserError, match="pool"):
            parse_pool(bad)


def test_config_errors_name_the_field():
    with pytest.raises(DataError, match=r"unknown config key\(s\) \['colour'\]"):
        FeatureExtractorConfig.from_dict({"colour": 1}, "f.h5")
    with pytest.raises(UserError, match=r"pca_dim must be None or an int in 1\.\.1280"):
        FeatureExtractorConfig(pca_dim=2000)
    with pytest.raises(UserError, match="image_size"):
        FeatureExtractorConfig(image_size=8)
    with pytest.raises(DataError, match="not valid JSON"):
        FeatureExtractorConfig.from_json("{nope", "f.h5")


# -- PCA -------------------------------------------------------------------------------------


def test_pca_exact_matches_svd_and_projects():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 12)).astype(np.float32) * np.arange(1, 13, dtype=np.float32)
    pca = fit_pca(x, 4)
    assert pca.components.shape == (12, 4) and pca.mean.shape == (12,)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(4), atol=1e-5)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(pca.components), np.abs(vt[:4].T), atol=1e-4)
    np.testing.assert_allclose(pca.explained_variance, s[:4] ** 2 / 59, rtol=1e-4)
    z = pca.transform(x)
    assert z.shape == (60, 4) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    assert np.all(np.diff(z.var(0)) < 0)  # components come in decreasing variance
    big = pca.components[np.abs(pca.components).argmax(0), np.arange(4)]
    assert np.all(big > 0)  # sign convention: deterministic output
    with pytest.raises(ValueError, match=r"\(M, 12\)"):
        pca.transform(x[:, :5])


def test_pca_scale_divides_the_projection_and_unit_rms_sets_it():
    rng = np.random.default_rng(3)
    x = (5 * rng.standard_normal((200, 10))).astype(np.float32)
    pca = fit_pca(x, 4)
    unit = pca.with_unit_rms(x)
    assert pca.scale == 1.0 and unit.scale > 1
    np.testing.assert_allclose(unit.transform(x), pca.transform(x) / unit.scale, rtol=1e-5)
    assert np.sqrt(np.mean(unit.transform(x) ** 2)) == pytest.approx(1.0, rel=1e-5)


def test_pca_gram_equals_the_exact_svd():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((300, 8)) @ rng.standard_normal((8, 20))).astype(np.float32)
    x += 0.05 * rng.standard_normal((300, 20)).astype(np.float32)
    exact, gram = fit_pca(x, 6, method="exact"), fit_pca(x, 6, method="gram")
    np.testing.assert_allclose(gram.components, exact.components, atol=1e-5)
    np.testing.assert_allclose(gram.explained_variance, exact.explained_variance, rtol=1e-5)
    auto = fit_pca(x, 6)  # many rows of few features: the Gram matrix
    np.testing.assert_array_equal(auto.components, gram.components)


def test_pca_randomized_finds_the_planted_subspace():
    rng = np.random.default_rng(1)
    N, R, k = 400, 300, 6
    basis, _ = np.linalg.qr(rng.standard_normal((R, k)))  # (R, k) orthonormal
    scores = rng.standard_normal((N, k)) * np.array([50, 40, 30, 20, 15, 10])
    x = (scores @ basis.T + 0.01 * rng.standard_normal((N, R))).astype(np.float32)
    pca = fit_pca(x, k, method="randomized")
    # the found components span the planted subspace: all principal cosines ~ 1
    cosines = np.linalg.svd(pca.components.T @ basis, compute_uv=False)
    assert cosines.min() > 0.999
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(k), atol=1e-4)
    assert np.all(np.diff(pca.explained_variance) < 0)
    again = fit_pca(x, k, method="randomized")
    np.testing.assert_array_equal(again.components, pca.components)


def test_pca_needs_enough_rows():
    with pytest.raises(UserError, match="PCA to 8 dimensions needs at least 8 images"):
        fit_pca(np.zeros((5, 20), np.float32), 8)


# -- writing and reading ---------------------------------------------------------------------


def write_all(out, config, fail=()):
    w = FeatureStoreWriter.open(out, config, IDS, PATHS, SPLITS)
    rows = [i for i in range(len(IDS)) if i not in fail]
    for i in fail:
        w.mark_failed(i, f"{PATHS[i]}: corrupt")
    grid = None
    if config.grid:
        grid = grid_rows(rows, config.grid_len, config.grid_raw_dim)
    w.write(np.array(rows), raw_rows(rows, config.raw_dim), grid)
    return w


def grid_rows(rows, L, Rg):
    """Deterministic fake raw grid cells (B, L, Rg): row i, cell l holds i + l / L + small."""
    rows = np.asarray(rows)
    base = rows[:, None, None] + np.arange(L)[None, :, None] / L
    return (base + np.sin(np.arange(Rg))[None, None, :] / 8).astype(np.float16)


def test_write_finalize_and_read(tmp_path):
    out = tmp_path / "feats.h5"
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_taps="grid", grid_pca_dim=None)
    w = write_all(out, config, fail=[2])
    assert not out.exists() and partial_path(out).exists()  # nothing final before finalize
    assert len(w.pending()) == 0
    w.finalize()
    assert out.exists() and not partial_path(out).exists()
    store = FeatureStore.open(out)
    assert store.image_ids == ["a", "b", "d", "e"] and store.splits == [
        "train",
        "train",
        "val",
        "test",
    ]
    assert store.config == config and store.dim == 1280 and store.pca is None
    assert store.failed == [{"image_id": "c", "path": "/img/c.png", "error": "/img/c.png: corrupt"}]
    got = store.features_for(["e", "a", "e"])
    assert got.shape == (3, 1280) and got.dtype == np.float32
    np.testing.assert_array_equal(got, raw_rows([4, 0, 4], 1280))
    np.testing.assert_array_equal(store.raw_features_for(["d"]), raw_rows([3], 1280))
    grid = store.grid_features_for(["b", "a"])
    assert grid.shape == (2, 4, 1280) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid, grid_rows([1, 0], 4, 1280))
    assert store.has_grid and store.grid_shape == (4, 1280) and store.grid_pca is None
    lazy = store.grid_rows(["e", "a", "b"])
    assert lazy.shape == (3, 4, 1280) and lazy.ndim == 3 and len(lazy) == 3
    np.testing.assert_array_equal(lazy[np.array([2, 0, 2])], grid_rows([1, 4, 1], 4, 1280))
    np.testing.assert_array_equal(lazy[1], grid_rows([0], 4, 1280)[0])
    np.testing.assert_array_equal(np.asarray(lazy), grid_rows([4, 0, 1], 4, 1280))
    assert store.split_ids("train") == ["a", "b"] and "d" in store and "c" not in store
    with pytest.raises(DataError, match=r"no features for image id\(s\) 'c', 'zz'.*1 skipped"):
        store.features_for(["a", "c", "zz"])


def test_pca_store_keeps_raw_and_basis(tmp_path):
    out = tmp_path / "pca.h5"
    config = FeatureExtractorConfig(image_size=64, pca_dim=2)
    w = write_all(out, config)
    rows, split = w.fit_rows()
    assert split == "train" and list(rows) == [0, 1, 2]
    pca = fit_pca(w.raw_rows(rows), 2)
    w.finalize(pca, (len(rows), split))
    store = FeatureStore.open(out)
    assert store.dim == 2 and store.attrs["pca_fit_rows"] == 3
    raw = store.raw_features_for(IDS)
    np.testing.assert_allclose(store.features_for(IDS), pca.transform(raw), atol=1e-5)
    np.testing.assert_array_equal(store.pca.components, pca.components)
    with pytest.raises(DataError, match=r"pca\.h5: holds no attention grid.*--grid"):
        store.grid_features_for(["a"])


def test_grid_pca_fitted_on_train_cells_projects_every_cell(tmp_path):
    out = tmp_path / "g.h5"
    config = FeatureExtractorConfig(
        image_size=64, grid=True, grid_taps="block10", grid_cells=2, grid_pca_dim=3
    )
    assert (config.grid_len, config.grid_raw_dim, config.grid_dim) == (4, 112, 3)
    w = write_all(out, config)
    rows, _ = w.fit_rows()
    cells = w.grid_cell_sample(rows)  # 3 train images x 4 cells, all of them
    np.testing.assert_array_equal(cells, grid_rows([0, 1, 2], 4, 112).reshape(12, 112))
    assert w.grid_cell_sample(rows, limit=6).shape == (6, 112)  # 2 random cells per image
    pca = fit_pca(cells, 3).with_unit_rms(cells)
    with pytest.raises(ValueError, match="grid_pca must be given"):
        w.finalize()
    w.finalize(grid_pca=pca, grid_pca_cells=len(cells))
    store = FeatureStore.open(out)
    assert store.attrs["grid_pca_fit_cells"] == 12 and store.grid_shape == (4, 3)
    np.testing.assert_array_equal(store.grid_pca.components, pca.components)
    assert store.grid_pca.scale == pca.scale != 1.0
    raw = grid_rows(np.arange(5), 4, 112).reshape(20, 112)
    want = pca.transform(raw).reshape(5, 4, 3).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(store.grid_features_for(IDS), want)


def test_version_1_store_reads_but_refuses_its_raw_grid(tmp_path):
    out = tmp_path / "old.h5"
    write_all(out, FeatureExtractorConfig(image_size=64)).finalize()
    with h5py.File(out, "r+") as f:  # what captionlab wrote before the attention grid
        f.attrs["format_version"] = 1
        f.attrs["config"] = f.attrs["config"].replace('"grid": false', '"grid": true')
        f.create_dataset("grid", data=np.zeros((5, 2, 2, 1280), np.float16))
    store = FeatureStore.open(out)
    assert store.features_for(["a"]).shape == (1, 1280) and not store.has_grid
    with pytest.raises(DataError, match=r"old\.h5: its grid is the raw last feature map.*--grid"):
        store.grid_features_for(["a"])


def test_resume_after_interruption_and_mismatch(tmp_path):
    out = tmp_path / "f.h5"
    config = FeatureExtractorConfig(image_size=64)
    w = FeatureStoreWriter.open(out, config, IDS, PATHS, SPLITS)
    w.write(np.array([0, 1]), raw_rows([0, 1], 1280))
    w.mark_failed(2, "bad")
    w.close()  # the process dies here
    w = FeatureStoreWriter.open(out, config, IDS, PATHS, SPLITS)
    assert w.resumed == 3 and list(w.pending()) == [3, 4]
    w.close()
    other = FeatureExtractorConfig(image_size=96)
    with pytest.raises(
        UserError, match=r"holds 3 of 5 images .* image_size 64 \(now 96\); rerun .*--restart"
    ):
        FeatureStoreWriter.open(out, other, IDS, PATHS, SPLITS)
    with pytest.raises(UserError, match="another list of images"):
        FeatureStoreWriter.open(out, config, IDS[::-1], PATHS[::-1], SPLITS[::-1])
    # Only the PCA (applied after extraction) differs: the rows are kept.
    with_pca = FeatureExtractorConfig(image_size=64, pca_dim=2)
    w = FeatureStoreWriter.open(out, with_pca, IDS, PATHS, SPLITS)
    assert w.resumed == 3 and w.config == with_pca
    w.close()
    w = FeatureStoreWriter.open(out, other, IDS, PATHS, SPLITS, restart=True)
    assert w.resumed == 0 and len(w.pending()) == 5
    w.close()


def test_a_failed_start_leaves_nothing_in_the_way(tmp_path):
    """A partial file with no image done (a start that failed) is replaced silently."""
    out = tmp_path / "f.h5"
    FeatureStoreWriter.open(out, FeatureExtractorConfig(image_size=64), IDS, PATHS, SPLITS).close()
    w = FeatureStoreWriter.open(out, FeatureExtractorConfig(image_size=96), IDS, PATHS, SPLITS)
    assert w.resumed == 0 and w.config.image_size == 96
    w.close()


def test_unreadable_partial_file_starts_over(tmp_path):
    out = tmp_path / "f.h5"
    partial_path(out).write_bytes(b"garbage from a killed process")
    w = FeatureStoreWriter.open(out, FeatureExtractorConfig(image_size=64), IDS, PATHS, SPLITS)
    assert w.resumed == 0
    w.close()


def test_writer_rejects_bad_input(tmp_path):
    config = FeatureExtractorConfig(image_size=64)
    with pytest.raises(DataError, match="'a' occurs more than once"):
        FeatureStoreWriter.open(tmp_path / "x.h5", config, ["a", "a"], ["p", "q"], ["", ""])
    w = FeatureStoreWriter.open(tmp_path / "x.h5", config, IDS, PATHS, SPLITS)
    with pytest.raises(ValueError, match=r"raw must be \(2, 1280\)"):
        w.write(np.array([0, 1]), np.zeros((2, 10), np.float32))
    with pytest.raises(RuntimeError, match="5 images still pending"):
        w.finalize()
    w.close()


def test_reader_refuses_bad_files(tmp_path):
    missing = tmp_path / "none.h5"
    with pytest.raises(DataError, match=r"feature store not found$"):
        FeatureStore.open(missing)
    partial_path(missing).write_bytes(b"")
    with pytest.raises(DataError, match="interrupted: rerun it to resume"):
        FeatureStore.open(missing)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match="not an HDF5 feature store"):
        FeatureStore.open(tmp_path / "text.h5")
    out = tmp_path / "ok.h5"
    write_all(out, FeatureExtractorConfig(image_size=64)).finalize()
    with h5py.File(out, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(DataError, match="incomplete feature store"):
        FeatureStore.open(out)
    with h5py.File(out, "r+") as f:
        f.attrs["complete"] = True
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(DataError, match="newer than this captionlab reads"):
        FeatureStore.open(out)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["format"] = "something else"
    with pytest.raises(DataError, match=r"attribute 'format' must be 'captionlab\.features'"):
        FeatureStore.open(out)
    with h5py.File(out, "r+") as f:
        f.attrs["format"] = "captionlab.features"
        del f["features"]
        f.create_dataset("features", data=np.zeros((4, 7), np.float32))
    with pytest.raises(DataError, match=r"'features' must be \(5, 1280\).*got \(4, 7\)"):
        FeatureStore.open(out)
