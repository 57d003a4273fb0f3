"""The HDF5 feature store: image ids -> CNN features, written resumably and atomically.

Shapes: ``M`` images in the store, ``D`` the stored feature size (after PCA when the config
asks for it), ``R`` the raw pooled size (``1280 x`` the number of pooled cells); the
attention grid: ``L`` cells per image, ``Rg`` values per cell from the grid taps, ``Dg``
stored per cell (after the per-cell PCA).

File layout (format ``captionlab.features``, version 2)::

    attrs:  format, format_version, complete (bool), config (JSON of FeatureExtractorConfig),
            captionlab_version, n_failed, pca_fit_rows, pca_fit_split, grid_pca_fit_cells, and
            for a dataset file: source (its resolved path), source_sha256 (its content)
    image_ids (M,) str      the dataset's image ids, in extraction order
    paths     (M,) str      the image files they came from
    splits    (M,) str      train / val / test ("" for a plain folder of images)
    features  (M, D) float32    what the captioner consumes (PCA-projected when pca_dim is set)
    features_raw (M, R) float32 the pooled features before PCA (only when PCA is on)
    grid      (M, L, Dg) float16  the attention grid, one row per image in chunks of one
                                  (only when config.grid is on)
    pca/mean (R,), pca/components (R, D), pca/explained_variance (D,)   (only with PCA)
    grid_pca/mean (Rg,), grid_pca/components (Rg, Dg), grid_pca/explained_variance (Dg,),
    grid_pca/scale ()             (only with a grid and grid_pca_dim; cells are stored as
                                  (cell - mean) @ components / scale, unit RMS on train cells)
    failed/image_ids, failed/paths, failed/errors (F,) str   images skipped, and why

Version 1 stores (captionlab before the attention grid) read as before, except their
``grid`` (the raw last feature map, (M, h, w, 1280)), which attention models cannot use:
:meth:`FeatureStore.grid_features_for` refuses it, naming the flag that makes a new grid.

A run writes ``<out>.partial`` (with per-row ``done``/``failed`` masks, flushed after every
batch, so an interrupted run resumes where it stopped; the grid's raw cells ``grid_raw``
(M, L, Rg) float16 wait there for the per-cell PCA) and, once every image is done, writes
the final file beside it and renames it over ``<out>`` (atomic). Readers also check the
``complete`` attribute.

This module imports numpy and h5py only; :mod:`captionlab.extract` runs the network.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from captionlab import __version__
from captionlab._atomic import atomic_path
from captionlab.data._io import h5_dataset, h5_strings
from captionlab.data.feature_config import CHANNELS, FeatureExtractorConfig, parse_pool
from captionlab.data.pca import PCA, fit_pca
from captionlab.errors import DataError, UserError

FORMAT = "captionlab.features"
FORMAT_VERSION = 2
#: Cells the per-cell PCA is fitted on at most (a seeded sample of the fit split's cells).
GRID_PCA_FIT_CELLS = 20_000
#: The config fields that decide the rows of an unfinished extraction (PCAs are applied after).
_EXTRACTION_FIELDS = ("backbone", "image_size", "pool", "grid", "fold_bn", "channels_last",
                      "grid_taps", "grid_cells")  # fmt: skip
_STR = h5py.string_dtype("utf-8")

# The config (feature_config) and PCA (pca) live in their own modules; re-exported here.
__all__ = [
    "CHANNELS",
    "FORMAT",
    "FORMAT_VERSION",
    "PCA",
    "FeatureExtractorConfig",
    "FeatureStore",
    "FeatureStoreWriter",
    "StoredRows",
    "fit_pca",
    "parse_pool",
    "partial_path",
]

# -- writing ----------------------------------------------------------------------------------


def partial_path(out: str | Path) -> Path:
    """Where an unfinished extraction into ``out`` keeps its work."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _strings(values: Iterable) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _read_strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[()]]


#: The most images a store may list (ids, paths and splits are read whole at open).
MAX_STORE_IMAGES = 20_000_000


def _strings_of(f: h5py.File, key: str, path: Path, length: int | None = None) -> list[str]:
    """A 1-D string dataset of the store, checked (kind, length, bytes held) before reading."""
    ds = h5_dataset(f, key, path, kinds="S", ndim=1)
    if ds.shape[0] > MAX_STORE_IMAGES or (length is not None and ds.shape[0] != length):
        want = f"{length} entries (one per image)" if length is not None else "a list"
        raise DataError(f"{path}: dataset '{key}' must hold {want}, got {ds.shape[0]}")
    return h5_strings(ds)


class FeatureStoreWriter:
    """An extraction in progress, in ``<out>.partial``; see the module docstring.

    ``open(out, config, image_ids, paths, splits)`` creates the partial file or resumes one
    made by the same config for the same images (anything else raises UserError, or is
    discarded with ``restart=True``). Then :meth:`write` rows, :meth:`mark_failed` the
    images that could not be read, and :meth:`finalize` once :meth:`pending` is empty.
    """

    def __init__(self, out: Path, file: h5py.File, config: FeatureExtractorConfig, resumed: int):
        self.out = out
        self.path = partial_path(out)
        self._f = file
        self.config = config
        self.resumed = resumed  # rows already done or failed when this run started

    @classmethod
    def open(
        cls,
        out: str | Path,
        config: FeatureExtractorConfig,
        image_ids: Sequence[str],
        paths: Sequence[str | Path],
        splits: Sequence[str],
        restart: bool = False,
    ) -> FeatureStoreWriter:
        out = Path(out)
        part = partial_path(out)
        M = len(image_ids)
        if not (len(paths) == len(splits) == M):
            raise ValueError(
                f"image_ids, paths, splits must have one length, got {M}, {len(paths)}, "
                f"{len(splits)}"
            )
        if len(set(image_ids)) != M:
            dup = next(i for i, n in Counter(image_ids).items() if n > 1)
            raise DataError(f"image ids must be unique; {dup!r} occurs more than once")
        if part.exists() and not restart:
            writer = cls._resume(out, part, config, image_ids, paths)
            if writer is not None:
                return writer
        part.parent.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)
        f = h5py.File(part, "w")
        try:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["complete"] = False
            f.attrs["config"] = config.to_json()
            f.attrs["captionlab_version"] = __version__
            f.create_dataset("image_ids", data=_strings(image_ids), dtype=_STR)
            f.create_dataset("paths", data=_strings(paths), dtype=_STR)
            f.create_dataset("splits", data=_strings(splits), dtype=_STR)
            f.create_dataset("done", data=np.zeros(M, bool))
            f.create_dataset("failed", data=np.zeros(M, bool))
            f.create_dataset("errors", data=_strings([""] * M), dtype=_STR)
            rows = max(1, min(M, 64))
            f.create_dataset(
                "features_raw", (M, config.raw_dim), np.float32, chunks=(rows, config.raw_dim)
            )
            if config.grid:
                L, Rg = config.grid_len, config.grid_raw_dim
                f.create_dataset("grid_raw", (M, L, Rg), np.float16, chunks=(1, L, Rg))
            f.flush()
        except BaseException:
            f.close()
            raise
        return cls(out, f, config, 0)

    @classmethod
    def _resume(cls, out, part, config, image_ids, paths) -> FeatureStoreWriter | None:
        try:
            f = h5py.File(part, "r+")
        except OSError:
            return None  # an unreadable partial file (killed mid-write): start over
        try:
            if f.attrs.get("format") != FORMAT or "done" not in f:
                f.close()
                return None
            old = FeatureExtractorConfig.from_json(f.attrs.get("config"), str(part))
            old_ids = _read_strings(f["image_ids"])
            old_paths = _read_strings(f["paths"])
            done = int((f["done"][()] | f["failed"][()]).sum())
        except (OSError, KeyError, ValueError, TypeError, UserError):
            f.close()
            return None  # unreadable: start over (nothing usable in it)
        if done == 0:
            f.close()
            return None  # a start that failed before any image: nothing to keep
        same_images = old_ids == [str(i) for i in image_ids] and old_paths == [
            str(p) for p in paths
        ]
        differs = [k for k in _EXTRACTION_FIELDS if getattr(old, k) != getattr(config, k)]
        if differs or not same_images:
            f.close()
            if differs:
                what = ", ".join(
                    f"{k} {getattr(old, k)!r} (now {getattr(config, k)!r})" for k in differs
                )
            else:
                what = f"another list of images ({len(old_ids)} then, {len(image_ids)} now)"
            raise UserError(
                f"{part}: holds {done} of {len(old_ids)} images extracted by an earlier run "
                f"that stopped, with {what}; rerun with those settings to finish it, or "
                "discard it (--restart)"
            )
        if old != config:  # only what is applied after extraction (PCA) changed: keep rows
            f.attrs["config"] = config.to_json()
            f.flush()
        return cls(out, f, config, done)

    # -- progress ---------------------------------------------------------------------------
    def pending(self) -> np.ndarray:
        """Indices (P,) of the images neither done nor failed, in order."""
        return np.flatnonzero(~(self._f["done"][()] | self._f["failed"][()]))

    @property
    def size(self) -> int:
        return len(self._f["done"])

    def write(self, rows: np.ndarray, raw: np.ndarray, grid: np.ndarray | None = None) -> None:
        """Store raw (B, R) float32 (and the raw grid cells (B, L, Rg)) for rows (B,)
        increasing; flush."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        R = self.config.raw_dim
        if raw.shape != (len(rows), R):
            raise ValueError(f"raw must be ({len(rows)}, {R}), got {raw.shape}")
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be strictly increasing")
        # a run of consecutive rows (the usual batch) is written as one slice, not point-wise
        sel = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
        if self.config.grid:
            expected = (len(rows), self.config.grid_len, self.config.grid_raw_dim)
            if grid is None or grid.shape != expected:
                got = None if grid is None else grid.shape
                raise ValueError(f"grid must be {expected} (B, L, Rg), got {got}")
            self._f["grid_raw"][sel] = grid.astype(np.float16, copy=False)
        self._f["features_raw"][sel] = raw.astype(np.float32, copy=False)
        self._f["done"][sel] = True  # last: a row is done only once its numbers are written
        self._f.flush()

    def mark_failed(self, row: int, error: str) -> None:
        self._f["failed"][row] = True
        self._f["errors"][row] = str(error)
        self._f.flush()

    def failures(self) -> list[dict[str, str]]:
        """``[{"image_id", "path", "error"}]`` for every image that could not be read."""
        idx = np.flatnonzero(self._f["failed"][()])
        ids, paths = self._f["image_ids"], self._f["paths"]
        errors = self._f["errors"]
        return [
            {
                "image_id": _read_strings(ids[i : i + 1])[0],
                "path": _read_strings(paths[i : i + 1])[0],
                "error": _read_strings(errors[i : i + 1])[0],
            }
            for i in idx
        ]

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def raw_rows(self, rows: np.ndarray) -> np.ndarray:
        """(K, R) float32 raw features of rows (K,) written so far; reads only those rows."""
        return _read_rows(self._f["features_raw"], np.asarray(rows, dtype=np.int64))

    def grid_cell_sample(self, rows: np.ndarray, limit: int = GRID_PCA_FIT_CELLS, seed: int = 0):
        """(K, Rg) float32: raw grid cells of images ``rows`` (increasing) to fit the per-cell
        PCA on: every cell when they are at most ``limit``, else the same seeded number of
        random cells of every image (at least one), so memory stays at about ``limit`` rows."""
        rows = np.asarray(rows, dtype=np.int64)
        L = self.config.grid_len
        per_image = L if len(rows) * L <= limit else max(1, limit // max(len(rows), 1))
        rng = np.random.default_rng(seed)
        ds = self._f["grid_raw"]
        out = np.empty((len(rows) * per_image, self.config.grid_raw_dim), np.float32)
        step = max(1, (8 << 20) // (ds.dtype.itemsize * L * ds.shape[2]))
        k = 0
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            cells = _read_rows(ds, block)  # (B, L, Rg) float16
            for b in range(len(block)):
                pick = np.arange(L) if per_image == L else rng.choice(L, per_image, False)
                out[k : k + per_image] = cells[b, pick]
                k += per_image
        return out

    # -- the end ----------------------------------------------------------------------------
    def fit_rows(self) -> tuple[np.ndarray, str]:
        """Rows (K,) the PCA is fitted on, and the split used ("all" when it had no image)."""
        ok = self._f["done"][()] & ~self._f["failed"][()]
        split = self.config.pca_fit_split
        if split:
            in_split = ok & (np.array(_read_strings(self._f["splits"])) == split)
            if in_split.any():
                return np.flatnonzero(in_split), split
        return np.flatnonzero(ok), "all"

    def finalize(
        self,
        pca: PCA | None = None,
        pca_fit: tuple[int, str] = (0, ""),
        *,
        grid_pca: PCA | None = None,
        grid_pca_cells: int = 0,
        source: dict[str, str] | None = None,
    ) -> Path:
        """Write ``out`` from the partial file (atomically) and remove the partial file.

        ``pca`` projects the pooled features (given exactly when ``config.pca_dim`` is set),
        ``grid_pca`` every grid cell (exactly when the config has a grid and a
        ``grid_pca_dim``), fitted on ``grid_pca_cells`` cells. ``source``: attributes naming
        the dataset file the images came from (``source``, ``source_sha256``), so readers can
        tell which dataset the store was made for.
        """
        if len(self.pending()):
            raise RuntimeError(f"{self.path}: {len(self.pending())} images still pending")
        if (pca is None) != (self.config.pca_dim is None):
            raise ValueError("pca must be given exactly when config.pca_dim is set")
        if (grid_pca is None) != (not self.config.grid or self.config.grid_pca_dim is None):
            raise ValueError("grid_pca must be given exactly when the config has a grid PCA")
        f = self._f
        keep = np.flatnonzero(f["done"][()] & ~f["failed"][()])
        if len(keep) == 0:
            raise UserError(f"no image could be read; first error: {self.failures()[0]['error']}")
        failures = self.failures()
        with atomic_path(self.out) as tmp:
            with h5py.File(tmp, "w") as g:
                for key in ("format", "format_version", "config", "captionlab_version"):
                    g.attrs[key] = f.attrs[key]
                g.attrs["complete"] = False
                g.attrs["n_failed"] = len(failures)
                g.attrs["pca_fit_rows"] = int(pca_fit[0])
                g.attrs["pca_fit_split"] = pca_fit[1]
                g.attrs["grid_pca_fit_cells"] = int(grid_pca_cells)
                for key, value in (source or {}).items():
                    g.attrs[key] = str(value)
                for key in ("image_ids", "paths", "splits"):
                    g.create_dataset(
                        key, data=_strings(np.array(_read_strings(f[key]))[keep]), dtype=_STR
                    )
                self._copy_rows(f["features_raw"], g, "features_raw" if pca else "features", keep)
                if pca is not None:
                    D = pca.components.shape[1]
                    out = g.create_dataset("features", (len(keep), D), np.float32)
                    for start in range(0, len(keep), 1024):
                        raw = g["features_raw"][start : start + 1024]
                        out[start : start + len(raw)] = pca.transform(raw)
                    grp = g.create_group("pca")
                    grp.create_dataset("mean", data=pca.mean.astype(np.float32))
                    grp.create_dataset("components", data=pca.components.astype(np.float32))
                    grp.create_dataset("explained_variance", data=pca.explained_variance)
                if "grid_raw" in f:
                    self._write_grid(f["grid_raw"], g, keep, grid_pca)
                fg = g.create_group("failed")
                for key in ("image_id", "path", "error"):
                    fg.create_dataset(
                        key + "s", data=_strings(x[key] for x in failures), dtype=_STR
                    )
                g.attrs["complete"] = True
        self.close()
        self.path.unlink(missing_ok=True)
        return self.out

    @staticmethod
    def _write_grid(src: h5py.Dataset, dst: h5py.File, keep: np.ndarray, pca: PCA | None):
        """The final ``grid`` (K, L, Dg) float16 from the raw cells of rows ``keep``, projected
        by ``pca`` when given, ~8 MB of raw cells at a time; one chunk per image (training
        reads scattered images)."""
        _, L, Rg = src.shape
        Dg = pca.components.shape[1] if pca is not None else Rg
        out = dst.create_dataset("grid", (len(keep), L, Dg), np.float16, chunks=(1, L, Dg))
        step = max(1, (8 << 20) // (src.dtype.itemsize * L * Rg))
        for start in range(0, len(keep), step):
            cells = _read_rows(src, keep[start : start + step])  # (B, L, Rg) float16
            B = len(cells)
            if pca is not None:
                cells = pca.transform(cells.reshape(B * L, Rg)).reshape(B, L, Dg)
            out[start : start + B] = cells.astype(np.float16)
        if pca is not None:
            grp = dst.create_group("grid_pca")
            grp.create_dataset("mean", data=pca.mean.astype(np.float32))
            grp.create_dataset("components", data=pca.components.astype(np.float32))
            grp.create_dataset("explained_variance", data=pca.explained_variance)
            grp.create_dataset("scale", data=np.float64(pca.scale))

    @staticmethod
    def _copy_rows(src: h5py.Dataset, dst: h5py.File, name: str, keep: np.ndarray) -> None:
        """Copy rows ``keep`` (increasing) of ``src`` into a new dataset, ~8 MB at a time."""
        row_bytes = src.dtype.itemsize * int(np.prod(src.shape[1:]))
        step = max(1, (8 << 20) // row_bytes)
        chunks = (1 if src.ndim > 2 else min(256, len(keep)), *src.shape[1:])
        out = dst.create_dataset(name, (len(keep), *src.shape[1:]), src.dtype, chunks=chunks)
        contiguous = len(keep) == src.shape[0]  # nothing failed: plain slices
        for start in range(0, len(keep), step):
            sel = keep[start : start + step]
            out[start : start + len(sel)] = src[sel[0] : sel[-1] + 1] if contiguous else src[sel]


# -- reading ----------------------------------------------------------------------------------


class FeatureStore:
    """A finished feature store, read-only. ``FeatureStore.open(path)``.

    ``image_ids`` (M,), ``splits`` (M,), ``paths`` (M,), ``config``, ``pca`` (or None),
    ``dim`` (D), ``failed`` (the skipped images), ``features_for(ids) -> (K, D)``; with an
    attention grid, ``grid_features_for(ids) -> (K, L, Dg)``, ``grid_rows(ids)`` (the same,
    read minibatch by minibatch), ``grid_pca``, ``grid_shape`` (L, Dg).
    Arrays are read on demand; no file handle is kept open between calls.
    """

    def __init__(
        self,
        path: Path,
        config: FeatureExtractorConfig,
        attrs: dict,
        image_ids: list[str],
        paths: list[str],
        splits: list[str],
        failed: list[dict[str, str]],
        pca: PCA | None,
        dim: int,
        has_grid: bool,
        grid_pca: PCA | None = None,
        legacy_grid: bool = False,
    ):
        self.path = path
        self.config = config
        self.attrs = attrs
        self.image_ids = image_ids
        self.paths = paths
        self.splits = splits
        self.failed = failed
        self.pca = pca
        self.dim = dim
        self.has_grid = has_grid
        self.grid_pca = grid_pca
        self.legacy_grid = legacy_grid
        self._index = {image_id: i for i, image_id in enumerate(image_ids)}
        self._features: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a finished store. Every dataset is checked (kind, shape, the bytes it holds)
        before it is read; the features themselves are read only when asked for. Anything
        else than a store written by :class:`FeatureStoreWriter` is a DataError naming it."""
        path = Path(path)
        if not path.is_file():
            hint = (
                " (an extraction was interrupted: rerun it to resume)"
                if partial_path(path).exists()
                else ""
            )
            raise DataError(f"{path}: feature store not found{hint}")
        try:
            f = h5py.File(path, "r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"{path}: not an HDF5 feature store ({exc})") from exc
        try:
            with f:
                return cls._read(path, f)
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise DataError(f"{path}: not a readable feature store ({exc})") from None

    @classmethod
    def _read(cls, path: Path, f: h5py.File) -> FeatureStore:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        fmt = attrs.get("format")
        if fmt != FORMAT:
            raise DataError(f"{path}: attribute 'format' must be {FORMAT!r}, got {fmt!r:.80}")
        version = attrs.get("format_version", -1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DataError(f"{path}: attribute 'format_version' must be a positive integer")
        if version > FORMAT_VERSION:
            raise DataError(
                f"{path}: format_version {version} is newer than this captionlab reads "
                f"({FORMAT_VERSION}); upgrade captionlab"
            )
        if attrs.get("complete") is not True:
            raise DataError(f"{path}: incomplete feature store (attribute 'complete' is false)")
        text = attrs.get("config", "")
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        if not isinstance(text, str):
            raise DataError(f"{path}: attribute 'config' must be JSON text")
        config = FeatureExtractorConfig.from_json(text, f"{path}: attrs.config")
        ids = _strings_of(f, "image_ids", path)
        M = len(ids)
        if len(set(ids)) != M:
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            raise DataError(f"{path}: dataset 'image_ids' repeats image id {dup!r:.80}")
        paths, splits = _strings_of(f, "paths", path, M), _strings_of(f, "splits", path, M)
        feats = h5_dataset(f, "features", path, kinds="f", ndim=2)
        if feats.shape != (M, config.feature_dim):
            raise DataError(
                f"{path}: dataset 'features' must be ({M}, {config.feature_dim}) for its "
                f"config, got {feats.shape}"
            )
        pca = None
        if config.pca_dim is not None:
            if not isinstance(f.get("pca"), h5py.Group):
                raise DataError(f"{path}: config has pca_dim={config.pca_dim} but no 'pca' group")
            R, D = config.raw_dim, config.pca_dim
            want = {"mean": (R,), "components": (R, D), "explained_variance": (D,)}
            parts = {}
            for key, shape in want.items():
                ds = h5_dataset(f, f"pca/{key}", path, kinds="f", ndim=len(shape))
                if ds.shape != shape:
                    raise DataError(f"{path}: 'pca/{key}' must be {shape}, got {ds.shape}")
                parts[key] = ds[()]
            pca = PCA(parts["mean"], parts["components"], parts["explained_variance"])
        grid_pca, has_grid, legacy = cls._open_grid(path, f, config, version, M)
        failed = []
        if "failed" in f:
            cols = [_strings_of(f, f"failed/{k}s", path) for k in ("image_id", "path", "error")]
            if len({len(c) for c in cols}) != 1:
                raise DataError(f"{path}: the datasets of group 'failed' differ in length")
            failed = [{"image_id": a, "path": b, "error": c} for a, b, c in zip(*cols, strict=True)]
        return cls(path, config, attrs, ids, paths, splits, failed, pca, config.feature_dim,
                   has_grid, grid_pca, legacy)  # fmt: skip

    @staticmethod
    @staticmethod
    def _open_grid(path: Path, f: h5py.File, config, version: int, M: int):
        """``(grid_pca or None, has a usable grid, has a version-1 raw grid)``, checked."""
        if "grid" not in f:
            return None, False, False
        if version < 2:
            return None, False, True  # the raw last feature map (M, h, w, 1280)
        expected = (M, config.grid_len, config.grid_dim)
        grid = h5_dataset(f, "grid", path, kinds="f", ndim=3)
        if grid.shape != expected:
            raise DataError(
                f"{path}: dataset 'grid' must be {expected} (M, L, Dg) for its config, "
                f"got {grid.shape}"
            )
        if config.grid_pca_dim is None:
            return None, True, False
        if not isinstance(f.get("grid_pca"), h5py.Group):
            raise DataError(
                f"{path}: config has grid_pca_dim={config.grid_pca_dim} but no 'grid_pca' group"
            )
        R, D = config.grid_raw_dim, config.grid_pca_dim
        want = {"mean": (R,), "components": (R, D), "explained_variance": (D,)}
        parts = {}
        for key, shape in want.items():
            ds = h5_dataset(f, f"grid_pca/{key}", path, kinds="f", ndim=len(shape))
            if ds.shape != shape:
                raise DataError(f"{path}: 'grid_pca/{key}' must be {shape}, got {ds.shape}")
            parts[key] = ds[()]
        scale = 1.0
        if "grid_pca/scale" in f:
            scale = float(h5_dataset(f, "grid_pca/scale", path, kinds="f", ndim=0)[()])
            if not np.isfinite(scale) or scale <= 0:
                raise DataError(f"{path}: 'grid_pca/scale' must be a positive number, got {scale}")
        pca = PCA(parts["mean"], parts["components"], parts["explained_variance"], scale)
        return pca, True, False

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def index_of(self, ids: Iterable[str]) -> np.ndarray:
        """Row indices (K,) of ``ids``; any id not in the store -> DataError naming it."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(
                f"{self.path}: no features for image id(s) {shown}{more} "
                f"({len(self)} images stored, {len(self.failed)} skipped at extraction)"
            )
        return np.array([self._index[i] for i in ids], dtype=np.int64)

    def all_features(self) -> np.ndarray:
        """(M, D) float32, every image in store order (cached after the first read)."""
        if self._features is None:
            self._features = self._read_rows("features", np.arange(len(self), dtype=np.int64))
        return self._features

    def features_for(self, ids: Iterable[str]) -> np.ndarray:
        """(K, D) float32 features of ``ids``, in the order given: only those rows are read
        (in blocks of about 8 MB), so memory is the result, not the whole store."""
        rows = self.index_of(ids)
        if self._features is not None:
            return self._features[rows]
        return self._read_rows("features", rows).astype(np.float32, copy=False)

    def fingerprint(self) -> str:
        """A content fingerprint (SHA-256 hex) of what decides the features a model sees: the
        extractor config, the image ids and the files they came from, the PCA basis, and a
        sample of 16 feature rows. Equal stores (moved, copied) have equal fingerprints."""
        import hashlib

        h = hashlib.sha256(self.config.to_json().encode())
        for values in (self.image_ids, self.paths):
            h.update("\0".join(values).encode("utf-8", "surrogatepass"))
        if self.pca is not None:
            for part in (self.pca.mean, self.pca.components):
                h.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        if len(self):
            rows = np.unique(np.linspace(0, len(self) - 1, 16).round().astype(np.int64))
            h.update(self._read_rows("features", rows).astype(np.float32).tobytes())
        return h.hexdigest()

    def raw_features_for(self, ids: Iterable[str]) -> np.ndarray:
        """(K, R) float32 pooled features before PCA (the same as features without PCA)."""
        rows = self.index_of(ids)
        name = "features_raw" if self.pca is not None else "features"
        return self._read_rows(name, rows).astype(np.float32, copy=False)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(L, Dg): one image's grid, cells by values per cell."""
        return (self.config.grid_len, self.config.grid_dim)

    def require_grid(self) -> None:
        """DataError, one line naming the store and the flag that makes a grid, unless the
        store holds an attention grid."""
        if self.has_grid:
            return
        if self.legacy_grid:
            raise DataError(
                f"{self.path}: its grid is the raw last feature map of an older captionlab "
                "(store format 1), which attention models do not read; extract the store again "
                "with `captionlab features ... --grid --overwrite`"
            )
        raise DataError(
            f"{self.path}: holds no attention grid; extract one with "
            "`captionlab features ... --grid` (the grid is stored beside the pooled features)"
        )

    def grid_features_for(self, ids: Iterable[str]) -> np.ndarray:
        """(K, L, Dg) float32 attention grids of ``ids``, in the order given; only those rows
        are read. DataError (see :meth:`require_grid`) when the store has no grid."""
        self.require_grid()
        return self._read_rows("grid", self.index_of(ids)).astype(np.float32)

    def grid_rows(self, ids: Iterable[str]) -> StoredRows:
        """The grids of ``ids`` as a :class:`StoredRows` (K, L, Dg): nothing is read until it
        is indexed, then only the rows asked for (a training minibatch)."""
        self.require_grid()
        return StoredRows(self.path, "grid", self.index_of(ids), self.grid_shape)

    def split_ids(self, split: str) -> list[str]:
        """The ids of one split, in store order."""
        return [i for i, s in zip(self.image_ids, self.splits, strict=True) if s == split]

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return _read_rows(f[name], rows)


class StoredRows:
    """Rows of one dataset of a feature store, read from the file when indexed.

    It stands for a float32 array of :attr:`shape` (K, ...) without holding it: ``rows[idx]``
    (an int, a slice or an int array (B,)) reads only those rows, so a training set of grids
    is read minibatch by minibatch and never loaded whole. ``np.asarray(rows)`` reads all.
    """

    def __init__(self, path: Path, name: str, rows: np.ndarray, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.name = name
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *row_shape)
        self.dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        rows = self.rows[idx]
        with h5py.File(self.path, "r") as f:
            out = _read_rows(f[self.name], np.atleast_1d(rows))
        out = out.astype(np.float32)
        return out[0] if np.ndim(rows) == 0 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"StoredRows({self.path}:{self.name}, shape={self.shape})"


def _read_rows(ds: h5py.Dataset, rows: np.ndarray, block_bytes: int = 8 << 20) -> np.ndarray:
    """Rows ``rows`` (K,) of ``ds``, in that order (repeats allowed).

    Reads the span of the wanted rows in slices of about ``block_bytes``, skipping slices
    that hold none of them, and keeps only the wanted rows: memory stays at the result plus
    one slice, and scattered rows cost slice reads, not h5py's slow point selections. Where
    the wanted rows of a slice are few (a minibatch of scattered images), they are read one
    by one instead (about 64 KB of reading saved pays for one more read call).
    """
    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    out_sorted = np.empty((len(uniq), *ds.shape[1:]), ds.dtype)
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    step = max(1, block_bytes // max(row_bytes, 1))
    i = 0
    while i < len(uniq):
        lo = int(uniq[i])
        j = int(np.searchsorted(uniq, lo + step))  # wanted rows in [lo, lo + step)
        hi = int(uniq[j - 1]) + 1
        if (hi - lo) * row_bytes > (j - i) * (row_bytes + (64 << 10)):
            for k in range(i, j):  # sparse: one read per wanted row
                out_sorted[k] = ds[int(uniq[k])]
        else:
            out_sorted[i:j] = ds[lo:hi][uniq[i:j] - lo]
        i = j
    if len(uniq) == len(rows) and np.all(np.diff(rows) > 0):
        return out_sorted  # rows were increasing already
    out = np.empty((len(rows), *ds.shape[1:]), ds.dtype)
    out[order] = out_sorted[inverse]
    return out
