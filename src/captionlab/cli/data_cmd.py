"""``captionlab data``: make the shapes benchmark, inspect a caption dataset, build a vocabulary.

captionlab data shapes --out DIR [--train N --val N --test N --size PX --seed S]
captionlab data info PATH [--image-root DIR]
captionlab data vocab PATH --out vocab.json [--min-count K --split train]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from captionlab.bounds import SEED, add_number, integer
from captionlab.cli import add_json_flag
from captionlab.data import Vocabulary, dataset_summary, load_coco_data, load_dataset
from captionlab.data.shapes import generate_shapes
from captionlab.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="make the shapes benchmark, inspect a caption dataset, build a vocabulary",
        description="Data tools: the generated shapes benchmark and the real caption formats "
        "(Karpathy dataset.json, COCO captions_*.json).",
    )
    add_json_flag(parser)
    parser.set_defaults(func=run, data_action=None)
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION")

    p = actions.add_parser(
        "shapes", help="generate the seeded shapes benchmark (cached: same arguments, no work)"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    count = integer(0, 10**7)
    add_number(p, "--train", bound=count, default=4000, help="training images (default: 4000)")
    add_number(p, "--val", bound=count, default=500, help="validation images (default: 500)")
    add_number(p, "--test", bound=count, default=500, help="test images (default: 500)")
    add_number(
        p,
        "--size",
        bound=integer(32, 1024),
        default=128,
        help="image side in pixels (default: 128)",
    )
    add_number(p, "--seed", bound=SEED, default=0, help="random seed; fixes every image and split")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_json_flag(p, nested=True)
    p.set_defaults(func=run)

    p = actions.add_parser("info", help="read a dataset and print its splits and counts")
    p.add_argument(
        "path", type=Path, help="dataset.json, captions_*.json, a folder, or cs231n's folder"
    )
    p.add_argument("--image-root", type=Path, default=None, help="folder the images are in")
    add_json_flag(p, nested=True)
    p.set_defaults(func=run)

    p = actions.add_parser("vocab", help="build a vocabulary JSON from a dataset's captions")
    p.add_argument("path", type=Path, help="dataset.json, captions_*.json, or a folder")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="vocabulary JSON file to write (a folder: vocab.json in it)",
    )
    add_number(
        p, "--min-count", bound=integer(1, 10**9), default=1, help="keep words seen this often"
    )
    p.add_argument("--split", default="train", help="split whose captions count (default: train)")
    p.add_argument("--image-root", type=Path, default=None, help="folder the images are in")
    add_json_flag(p, nested=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    action = getattr(args, "data_action", None)
    if action == "shapes":
        start = time.perf_counter()
        out = generate_shapes(
            args.out,
            n_train=args.train,
            n_val=args.val,
            n_test=args.test,
            image_size=args.size,
            seed=args.seed,
            progress=not args.no_progress,
        )
        summary = dataset_summary(load_dataset(out, check_images=False))
        summary.update(out=str(out), seconds=round(time.perf_counter() - start, 2))
        if not args.json:
            counts = ", ".join(f"{s} {c['images']}" for s, c in summary["splits"].items())
            print(f"shapes benchmark in {out}: {counts} images")
        return summary
    if action == "info":
        if (args.path / "coco2014_captions.h5").is_file():
            return _cs231n_info(args)
        summary = dataset_summary(load_dataset(args.path, args.image_root))
        if not args.json:
            print(f"{summary['source']} ({summary['format']})")
            for s, c in summary["splits"].items():
                print(f"  {s:5s} {c['images']:7d} images {c['captions']:8d} captions")
        return summary
    if action == "vocab":
        ds = load_dataset(args.path, args.image_root, check_images=False)
        vocab = Vocabulary.build(ds.all_captions(args.split), min_count=args.min_count)
        if args.out.is_dir():
            args.out = args.out / "vocab.json"
        vocab.save(args.out)
        if not args.json:
            print(f"{args.out}: {len(vocab)} words (min count {args.min_count})")
        return {"out": str(args.out), "words": len(vocab), "min_count": args.min_count}
    raise UserError("data: choose an action: shapes, info or vocab (see captionlab data --help)")


def _cs231n_info(args: argparse.Namespace) -> dict:
    """Shapes of the arrays in a cs231n ``coco_captioning`` folder."""
    data = load_coco_data(args.path)
    summary = {
        "format": "cs231n",
        "source": str(args.path),
        "words": len(data["idx_to_word"]),
        "arrays": {k: list(v.shape) for k, v in data.items() if hasattr(v, "shape")},
    }
    if not args.json:
        print(f"{args.path} (cs231n coco_captioning, {summary['words']} words)")
        for k, shape in summary["arrays"].items():
            print(f"  {k:18s} {tuple(shape)}")
    return summary
