"""Feature extraction: image files -> EfficientNet-Lite0 -> pooled features -> HDF5 store.

The wiring between :mod:`captionlab.vision` (the network, image loading) and
:mod:`captionlab.data.features` (the store). Two entry points:

* :func:`extract_features` -- a dataset file or a folder of images -> a feature store,
  batched, with a progress bar, resumable, skipping (and listing) unreadable files.
* :class:`FeatureExtractor` -- the same computation for new images at caption time:
  ``FeatureExtractor.from_store(path).transform(paths) -> (M, D)`` gives exactly the
  features the store's images got (same size, pooling and PCA basis), and
  ``transform_with_grid(paths)`` the attention grid too, from the same forward pass.

Shapes: ``B`` images in a batch, ``S`` the image side, ``C = 1280``, ``h = w = ceil(S/32)``,
``R`` the pooled size, ``D`` the stored size (``R``, or the PCA size); the attention grid:
``L = s * s`` cells, ``Rg`` values per cell from its taps, ``Dg`` after the per-cell PCA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captionlab.data._io import file_sha256
from captionlab.data.feature_config import FeatureExtractorConfig, parse_pool
from captionlab.data.features import FeatureStore, FeatureStoreWriter
from captionlab.data.pca import PCA, fit_pca, fit_pca_rows
from captionlab.errors import DataError, UserError
from captionlab.vision.backbone import EfficientNetLite0, load_backbone, preprocess, resolve_device
from captionlab.vision.images import list_image_files, load_image

__all__ = [
    "FeatureExtractor",
    "FeatureExtractorConfig",
    "ImageItem",
    "collect_images",
    "extract_features",
    "grid_cells",
    "pool_grid",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """One image to extract: its id in the store, its file, its split ("" for a folder)."""

    image_id: str
    path: Path
    split: str


def pool_grid(grid: torch.Tensor, pool: str) -> torch.Tensor:
    """Last feature map (B, C, h, w) -> pooled features (B, R), parts as :func:`parse_pool`.

    ``avg`` -> mean over h, w (B, C); ``max`` -> max over h, w (B, C); ``KxK`` -> adaptive
    average to K x K cells, flattened cell-major (row-major cells, each cell's C channels
    contiguous) (B, K*K*C). Parts are concatenated in the order given.
    """
    B, C = grid.shape[:2]
    outs = []
    for kind, k in parse_pool(pool):
        if kind == "avg":
            outs.append(grid.mean(dim=(2, 3)))  # (B, C)
        elif kind == "max":
            outs.append(grid.amax(dim=(2, 3)))  # (B, C)
        else:
            cells = F.adaptive_avg_pool2d(grid, k)  # (B, C, k, k)
            outs.append(cells.permute(0, 2, 3, 1).reshape(B, k * k * C))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def grid_cells(taps: dict[str, torch.Tensor], names: Sequence[str], side: int) -> torch.Tensor:
    """Backbone taps ``{name: (B, C_tap, h, w)}`` -> grid cells (B, side*side, Rg).

    Each tap named in ``names`` is brought to ``side x side`` cells (average-pooled when it is
    finer, nearest-upsampled when it is coarser) and the taps' channels are concatenated per
    cell, in the order named; cells are row-major, top-left first.
    """
    parts = []
    for name in names:
        t = taps[name]  # (B, C_tap, h, w)
        if t.shape[-1] > side:
            t = F.adaptive_avg_pool2d(t, side)
        elif t.shape[-1] < side:
            t = F.interpolate(t, size=(side, side), mode="nearest")
        parts.append(t)
    cells = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, Rg, side, side)
    B, Rg = cells.shape[:2]
    return cells.permute(0, 2, 3, 1).reshape(B, side * side, Rg)


def _try_load(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, size), None
    except UserError as exc:
        return None, str(exc)


class FeatureExtractor:
    """Runs the backbone the way ``config`` says: uint8 images or files -> features.

    Args:
        config: the extraction settings (default: :class:`FeatureExtractorConfig()`).
        device: "cpu", "cuda", "cuda:N"; CUDA asked for but absent raises UserError.
        pca: the PCA basis; :meth:`transform` needs it when ``config.pca_dim`` is set (see
            :meth:`from_store`); :meth:`forward` (raw features) does not.
        grid_pca: the per-cell PCA basis of the grid, needed by :meth:`transform_with_grid`
            when ``config.grid_pca_dim`` is set.
        batch_size: images per forward pass.
        workers: threads decoding images while the network runs (0: decode in line).
        model: an already loaded backbone to reuse (it must match fold_bn/channels_last).
    """

    def __init__(
        self,
        config: FeatureExtractorConfig | None = None,
        device: str | torch.device = "cpu",
        pca: PCA | None = None,
        batch_size: int = 64,
        workers: int = 2,
        model: EfficientNetLite0 | None = None,
        grid_pca: PCA | None = None,
    ):
        self.config = config or FeatureExtractorConfig()
        want = (self.config.grid_raw_dim, self.config.grid_dim)
        if grid_pca is not None and grid_pca.components.shape != want:
            raise UserError(
                f"grid PCA basis must be {want} for this config, got {grid_pca.components.shape}"
            )
        if pca is not None and pca.components.shape != (
            self.config.raw_dim,
            self.config.feature_dim,
        ):
            raise UserError(
                f"PCA basis must be ({self.config.raw_dim}, {self.config.feature_dim}) for this "
                f"config, got {pca.components.shape}"
            )
        if batch_size < 1 or workers < 0:
            raise UserError(
                f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}"
            )
        self.device = resolve_device(device)
        self.pca = pca
        self.grid_pca = grid_pca
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.model = model or load_backbone(
            self.device, fold_bn=self.config.fold_bn, channels_last=self.config.channels_last
        )

    @property
    def dim(self) -> int:
        """D: the size of the vectors :meth:`transform` returns."""
        return self.config.feature_dim

    @classmethod
    def from_store(
        cls, store: FeatureStore | str | Path, device: str | torch.device = "cpu", **kwargs
    ) -> FeatureExtractor:
        """The extractor that made ``store``, with its config and PCA basis."""
        if not isinstance(store, FeatureStore):
            store = FeatureStore.open(store)
        return cls(store.config, device=device, pca=store.pca, grid_pca=store.grid_pca, **kwargs)

    # -- arrays -----------------------------------------------------------------------------
    def forward(
        self, images: np.ndarray, grid: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (B, S, S, 3) -> raw pooled (B, R) float32, and the raw grid cells (B, L, Rg)
        float16 or None, from one forward pass.

        The grid is returned when ``grid`` is true (default: when ``config.grid`` is on).
        """
        S = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (S, S, 3):
            raise ValueError(f"images must be (B, {S}, {S}, 3) uint8, got {images.shape}")
        grid = self.config.grid if grid is None else grid
        names = ("grid", *self.config.grid_tap_list) if grid else ("grid",)
        with torch.inference_mode():
            x = preprocess(images).to(self.device, non_blocking=True)  # (B, 3, S, S)
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            taps = self.model.taps(x, names)  # the pass stops at the head
            raw = pool_grid(taps["grid"], self.config.pool).float().cpu().numpy()  # (B, R)
            grid_out = None
            if grid:
                cells = grid_cells(taps, self.config.grid_tap_list, self.config.grid_side)
                grid_out = cells.to(torch.float16).cpu().numpy()  # (B, L, Rg)
        return np.ascontiguousarray(raw, dtype=np.float32), grid_out

    def transform_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (M, S, S, 3) -> (M, D) float32: pooled, then PCA-projected if configured."""
        return self._transform(images, grid=False)[0]

    def transform_images_with_grid(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (M, S, S, 3) -> ``(features (M, D), grid (M, L, Dg))`` float32, one forward
        pass per batch; the grid is projected and rounded through float16 as the store keeps
        it, so a new image gets exactly the numbers a stored one would."""
        return self._transform(images, grid=True)

    def _transform(self, images: np.ndarray, grid: bool) -> tuple[np.ndarray, np.ndarray | None]:
        c = self.config
        if c.pca_dim is not None and self.pca is None:
            raise UserError(
                f"config asks for PCA to {c.pca_dim} dims but no PCA basis was given; "
                "use FeatureExtractor.from_store(store_path) to reuse the store's basis"
            )
        if grid and c.grid_pca_dim is not None and self.grid_pca is None:
            raise UserError(
                f"config asks for a grid PCA to {c.grid_pca_dim} dims but no grid PCA basis "
                "was given; use FeatureExtractor.from_store(store_path) to reuse the store's"
            )
        raws, grids = [], []
        for i in range(0, len(images), self.batch_size):
            raw, cells = self.forward(images[i : i + self.batch_size], grid=grid)
            raws.append(raw)
            if grid:
                B, L, Rg = cells.shape
                if self.grid_pca is not None:
                    cells = self.grid_pca.transform(cells.reshape(B * L, Rg)).reshape(B, L, -1)
                grids.append(cells.astype(np.float16).astype(np.float32))
        raw = np.concatenate(raws) if raws else np.zeros((0, c.raw_dim), np.float32)
        features = self.pca.transform(raw) if self.pca is not None else raw
        if not grid:
            return features, None
        empty = np.zeros((0, c.grid_len, c.grid_dim), np.float32)
        return features, np.concatenate(grids) if grids else empty

    def transform(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Image files (M,) -> (M, D) float32, exactly as the store's images were extracted.

        An unreadable file raises UserError naming it.
        """
        return self.transform_images(self.load_images(paths))

    def transform_with_grid(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
        """Image files (M,) -> ``(features (M, D), grid (M, L, Dg))`` float32, as the store's
        images were extracted, from one forward pass (see :meth:`transform_images_with_grid`).
        """
        return self.transform_images_with_grid(self.load_images(paths))

    def load_images(self, paths: Sequence[str | Path]) -> np.ndarray:
        """uint8 (M, S, S, 3) of image files; an unreadable one raises UserError naming it."""
        images = []
        for _rows, results in self.load_batches([Path(p) for p in paths]):
            for array, error in results:
                if error is not None:
                    raise UserError(error)
                images.append(array)
        S = self.config.image_size
        return np.stack(images) if images else np.zeros((0, S, S, 3), np.uint8)

    # -- files ------------------------------------------------------------------------------
    def load_batches(
        self, paths: Sequence[Path], rows: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], list[tuple[np.ndarray | None, str | None]]]]:
        """Yield ``(rows, [(image or None, error or None), ...])`` batch by batch.

        ``rows`` index ``paths`` (default: all). The next batch is decoded by ``workers``
        threads while the caller runs the network on the current one.
        """
        order = list(range(len(paths))) if rows is None else [int(r) for r in rows]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        size = self.config.image_size
        if self.workers == 0:
            for batch in batches:
                yield batch, [_try_load(paths[i], size) for i in batch]
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="captionlab-load") as pool:

            def submit(batch: list[int]) -> list:
                return [pool.submit(_try_load, paths[i], size) for i in batch]

            pending = submit(batches[0]) if batches else []
            for k, batch in enumerate(batches):
                following = submit(batches[k + 1]) if k + 1 < len(batches) else []
                yield batch, [fut.result() for fut in pending]
                pending = following


# -- the command's work ------------------------------------------------------------------------


def collect_images(
    source: str | Path,
    image_root: str | Path | None = None,
    limit: int | None = None,
    only_ids: Collection[str] | None = None,
) -> tuple[list[ImageItem], str]:
    """A dataset file (Karpathy or COCO JSON) or a folder of images -> (items, kind).

    Folder images get their relative path as id (``"sub/cat.jpg"``) and split ``""``; every
    item's path is absolute.
    Listed files that are missing are kept: extraction reports them as failed. ``only_ids``
    keeps just those images (in the source's order).
    """
    source = Path(source)
    if source.is_dir() and not (source / "dataset.json").is_file():
        items = [
            ImageItem(p.relative_to(source).as_posix(), p.absolute(), "")
            for p in list_image_files(source)
        ]
        kind = "folder"
    elif source.exists():
        from captionlab.data.formats import load_dataset

        ds = load_dataset(source, image_root=image_root, check_images=False)
        # absolute paths: the store then names its files wherever it is read from
        items = [ImageItem(str(r.image_id), Path(r.path).absolute(), r.split) for r in ds.images]
        kind = ds.name
    else:
        raise UserError(
            f"{source}: expected a dataset file or a folder of images, got nothing there"
        )
    if only_ids is not None:
        wanted = set(only_ids)
        items = [it for it in items if it.image_id in wanted]
    if limit is not None:
        items = items[: max(0, int(limit))]
    if not items:
        raise UserError(f"{source}: no images found")
    return items, kind


def extract_features(
    source: str | Path,
    out: str | Path,
    config: FeatureExtractorConfig | None = None,
    *,
    image_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 2,
    restart: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    only_ids: Collection[str] | None = None,
    pca: PCA | None = None,
    grid_pca: PCA | None = None,
) -> dict:
    """Extract features of every image of ``source`` into the store ``out``; return a summary.

    ``only_ids`` extracts just those images of the source; ``pca`` projects with that basis
    (a trained model's) instead of fitting one (``config.pca_dim`` must be its size), and
    ``grid_pca`` the grid's cells likewise (``config.grid_pca_dim``).

    Resumes an interrupted run into the same ``out`` with the same config (``restart`` throws
    the unfinished work away). A finished ``out`` made with the same config for the same images
    is left as it is (``up_to_date``); a different one needs ``overwrite``. Unreadable images
    are skipped, logged and listed under ``failed``. ``threads`` sets torch's intra-op threads
    for the run (restored after; None keeps torch's default, one per core). ``on_batch(k)`` is
    called after batch ``k`` is safely written (tests use it to interrupt a run).
    """
    config = config or FeatureExtractorConfig()
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the store's file name (e.g. {out / 'feats.h5'})")
    if pca is not None and pca.components.shape != (config.raw_dim, config.pca_dim):
        raise UserError(
            f"the PCA basis must be ({config.raw_dim}, {config.pca_dim}) for the extractor "
            f"config, got {pca.components.shape}"
        )
    if grid_pca is not None and grid_pca.components.shape != (
        config.grid_raw_dim,
        config.grid_pca_dim,
    ):
        raise UserError(
            f"the grid PCA basis must be ({config.grid_raw_dim}, {config.grid_pca_dim}) for the "
            f"extractor config, got {grid_pca.components.shape}"
        )
    device = resolve_device(device)  # fail before any work when CUDA is asked for but absent
    items, kind = collect_images(source, image_root, limit, only_ids)
    ids = [it.image_id for it in items]
    if out.exists() and not overwrite:
        summary = _up_to_date(out, config, ids)
        if summary is not None:
            return summary
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = FeatureStoreWriter.open(
        out, config, ids, [str(it.path) for it in items], [it.split for it in items], restart
    )
    threads_before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        extractor = FeatureExtractor(config, device, batch_size=batch_size, workers=workers)
        processed, seconds = _extract_pending(writer, extractor, items, progress, on_batch)
        if pca is None:
            pca, fit = _fit_store_pca(writer, config)
        else:
            fit = (0, "given")
        if grid_pca is None:
            grid_pca, grid_cells_fit = _fit_grid_pca(writer, config)
        else:
            grid_cells_fit = 0
        failures = writer.failures()
        resumed = writer.resumed
        writer.finalize(
            pca, fit, grid_pca=grid_pca, grid_pca_cells=grid_cells_fit,
            source=_source_attrs(source, kind),
        )  # fmt: skip
    finally:
        writer.close()
        torch.set_num_threads(threads_before)
    store = FeatureStore.open(out)
    return {
        "out": str(out),
        "source": str(source),
        "source_kind": kind,
        "images": len(items),
        "stored": len(store),
        "n_failed": len(failures),
        "failed": failures,
        "resumed_from": resumed,
        "processed": processed,
        "feature_dim": store.dim,
        "raw_dim": config.raw_dim,
        "pca_fit_rows": fit[0],
        "pca_fit_split": fit[1] or None,
        "grid": list(store.grid_shape) if store.has_grid else None,
        "grid_pca_fit_cells": grid_cells_fit or None,
        "config": asdict(config),
        "device": str(extractor.device),
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else None,
        "up_to_date": False,
    }


def _extract_pending(
    writer: FeatureStoreWriter,
    extractor: FeatureExtractor,
    items: list[ImageItem],
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> tuple[int, float]:
    """Run the network on every image the writer still lacks, batch by batch, writing each
    batch (and each unreadable image) as it comes. Returns (images processed, seconds)."""
    started = time.perf_counter()  # throughput: loading + network + writing, not start-up
    processed = 0
    paths = [it.path for it in items]
    bar = _progress(len(items), writer.resumed, progress)
    try:
        for k, (rows, results) in enumerate(extractor.load_batches(paths, writer.pending())):
            ok_rows, arrays = [], []
            for row, (array, error) in zip(rows, results, strict=True):
                if error is None:
                    ok_rows.append(row)
                    arrays.append(array)
                else:
                    log.warning("skipped %s: %s", items[row].image_id, error)
                    writer.mark_failed(row, error)
            if arrays:
                raw, grid = extractor.forward(np.stack(arrays))
                writer.write(np.array(ok_rows), raw, grid)
            processed += len(rows)
            if bar is not None:
                bar.update(len(rows))
            if on_batch is not None:
                on_batch(k)
    finally:
        if bar is not None:
            bar.close()
    return processed, time.perf_counter() - started


def _fit_store_pca(
    writer: FeatureStoreWriter, config: FeatureExtractorConfig
) -> tuple[PCA | None, tuple[int, str]]:
    """The PCA basis the config asks for, fitted on the store's training rows (or all rows
    when the training split has none), and ``(rows fitted on, split)``."""
    if config.pca_dim is None:
        return None, (0, "")
    fit_rows, fit_split = writer.fit_rows()
    if len(fit_rows) == 0:
        raise UserError(f"no image could be read; first error: {writer.failures()[0]['error']}")
    pca = fit_pca_rows(writer.raw_rows, fit_rows, config.raw_dim, config.pca_dim)
    return pca, (len(fit_rows), fit_split)


def _source_attrs(source: str | Path, kind: str) -> dict[str, str]:
    """The dataset file a store is made from, by resolved path and content."""
    if kind == "folder":
        return {}
    path = Path(source)
    path = path / "dataset.json" if path.is_dir() else path
    return {"source": str(path.resolve()), "source_sha256": file_sha256(path)}


def _fit_grid_pca(writer: FeatureStoreWriter, config: FeatureExtractorConfig):
    """The per-cell PCA of the grid, fitted on a seeded sample of the fit split's cells
    (``FeatureStoreWriter.grid_cell_sample``) and scaled to unit RMS on them (the cells'
    norms are ~40 unscaled, which saturates the attention's tanh and the LSTM's gates at
    initialisation), and the number of cells it saw."""
    if not config.grid or config.grid_pca_dim is None:
        return None, 0
    fit_rows, _ = writer.fit_rows()
    cells = writer.grid_cell_sample(fit_rows)  # (K, Rg)
    return fit_pca(cells, config.grid_pca_dim).with_unit_rms(cells), len(cells)


def _up_to_date(out: Path, config: FeatureExtractorConfig, ids: list[str]) -> dict | None:
    try:
        store = FeatureStore.open(out)
    except DataError as exc:
        raise UserError(
            f"{out}: exists and is not a finished feature store ({exc}); "
            "choose another output or overwrite it (--overwrite)"
        ) from exc
    failed = [f["image_id"] for f in store.failed]
    if store.config == config and sorted(store.image_ids + failed) == sorted(ids):
        return {
            "out": str(out),
            "images": len(ids),
            "stored": len(store),
            "n_failed": len(failed),
            "failed": store.failed,
            "feature_dim": store.dim,
            "config": asdict(config),
            "processed": 0,
            "up_to_date": True,
        }
    raise UserError(
        f"{out}: a feature store made with other settings or images is there "
        f"(config {store.config.to_json()}); overwrite it (--overwrite) or choose another output"
    )


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="features", leave=False)
