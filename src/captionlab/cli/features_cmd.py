"""``captionlab features``: extract EfficientNet-Lite0 features of a dataset into HDF5.

captionlab features SOURCE --out FEATURES.h5 [--size 160] [--pool avg+2x2] [--pca 512]
                    [--grid [--grid-taps block10+grid] [--grid-cells 5] [--grid-pca 256]]
                    [--device cuda] [--batch-size 64] [--restart] [--overwrite]

SOURCE is a Karpathy ``dataset.json``, a COCO ``captions_*.json`` or a folder of images.
An interrupted run resumes when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from captionlab.bounds import add_number, field_bound, integer
from captionlab.cli import add_json_flag
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.errors import UserError

_DEFAULTS = {"size": 160, "pool": "avg", "batch_size": 64}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="extract CNN features of a dataset or an image folder into an HDF5 store",
        description="Run EfficientNet-Lite0 (ImageNet weights) over every image of a dataset "
        "file (Karpathy dataset.json, COCO captions_*.json) or a folder of images and write "
        "pooled features (optionally the spatial grid and a PCA projection) to an HDF5 store. "
        "Unreadable images are skipped and listed; an interrupted run resumes.",
    )
    parser.add_argument(
        "source", type=Path, help="dataset.json / captions_*.json, or a folder of images"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the HDF5 feature store to write (e.g. feats.h5)"
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="folder the dataset's image paths are relative to (default: the file's folder)",
    )
    add_number(
        parser,
        "--size",
        bound=field_bound(FeatureExtractorConfig, "image_size"),
        default=_DEFAULTS["size"],
        metavar="PX",
        help="image side after resize and centre crop: 128, 160 or 224 are typical "
        "(default: 160; 224 is the backbone's training size, about 2x slower)",
    )
    parser.add_argument(
        "--pool",
        default=_DEFAULTS["pool"],
        help="how the last feature map becomes a vector, parts joined by '+': avg (1280), max "
        "(1280), KxK (average over KxK cells, K*K*1280); 'avg+2x2' (6400) keeps left/right "
        "(default: avg)",
    )
    add_number(
        parser,
        "--pca",
        bound=integer(1),
        default=None,
        metavar="DIM",
        help="project features to DIM dimensions by PCA fitted on the train split; the basis "
        "is stored in the file and reused at caption time (default: no PCA)",
    )
    parser.add_argument(
        "--pca-fit-split",
        default="train",
        help="split the PCA is fitted on; all images if it has none (default: train)",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="also store an attention grid per image (L cells x Dg values, float16) for "
        "attention models, from the same forward pass: by default block10 and the last "
        "feature map on the last map's cells (5x5 at 160 px), PCA to 256 per cell",
    )
    parser.add_argument(
        "--grid-taps",
        default="block10+grid",
        help="taps concatenated per grid cell: 'grid' (the last feature map, 1280 channels) "
        "and/or 'blockN' (N = 0..15, e.g. block10: 112 channels at stride 16), joined by '+' "
        "(default: block10+grid)",
    )
    parser.add_argument(
        "--grid-cells",
        type=int,
        default=None,
        metavar="S",
        help="cells per side of the grid, S x S cells (default: the last feature map's side, "
        "ceil(size / 32))",
    )
    parser.add_argument(
        "--grid-pca",
        type=int,
        default=256,
        metavar="DIM",
        help="project every grid cell to DIM values by one PCA fitted on training cells and "
        "stored in the file; 0 keeps the raw cells (default: 256)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_number(
        parser,
        "--batch-size",
        bound=integer(1, 4096),
        default=_DEFAULTS["batch_size"],
        help="images per forward pass (default: 64)",
    )
    add_number(
        parser,
        "--workers",
        bound=integer(0, 64),
        default=2,
        help="threads decoding images while the network runs; 0 decodes in line (default: 2)",
    )
    add_number(
        parser,
        "--threads",
        bound=integer(1, 1024),
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); 1 can be faster "
        "on a machine busy with other work",
    )
    parser.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="keep batch norm separate (slower; features differ only at ~1e-5)",
    )
    parser.add_argument(
        "--no-channels-last",
        action="store_true",
        help="use NCHW memory layout instead of channels-last (for speed comparisons)",
    )
    add_number(
        parser,
        "--limit",
        bound=integer(1),
        default=None,
        help="extract only the first N images (quick runs)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished earlier run into --out instead of resuming it",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished store at --out made with other settings or images",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    from captionlab.extract import extract_features

    raw_dim = FeatureExtractorConfig(pool=args.pool).raw_dim
    if args.pca is not None and args.pca > raw_dim:
        raise UserError(
            f"--pca must be an integer in 1..{raw_dim} (the pooled size of --pool "
            f"{args.pool}), got {args.pca}"
        )
    config = FeatureExtractorConfig(
        image_size=args.size,
        pool=args.pool,
        grid=args.grid,
        pca_dim=args.pca,
        pca_fit_split=args.pca_fit_split or None,
        grid_taps=args.grid_taps,
        grid_cells=args.grid_cells,
        grid_pca_dim=args.grid_pca or None,
        fold_bn=not args.no_fold_bn,
        channels_last=not args.no_channels_last,
    )
    logging.basicConfig(level=logging.WARNING, format="captionlab features: %(message)s")
    summary = extract_features(
        args.source,
        args.out,
        config,
        image_root=args.image_root,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        restart=args.restart,
        overwrite=args.overwrite,
        limit=args.limit,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads,
    )
    if not args.json:
        if summary["up_to_date"]:
            print(
                f"{summary['out']}: up to date ({summary['stored']} images, "
                f"{summary['feature_dim']}-d features); nothing to do"
            )
        else:
            rate = summary["images_per_s"]
            grid = summary.get("grid")
            print(
                f"{summary['out']}: {summary['stored']} of {summary['images']} images, "
                f"{summary['feature_dim']}-d features"
                + (f", grid of {grid[0]} cells x {grid[1]}" if grid else "")
                + (f" (resumed after {summary['resumed_from']})" if summary["resumed_from"] else "")
                + (f", {rate:.1f} images/s on {summary['device']}" if rate else "")
            )
        if summary["n_failed"]:
            print(f"  {summary['n_failed']} unreadable images skipped (each logged above)")
    return summary
