"""``captionlab classify IMAGE...``: the backbone's top-k ImageNet classes for each photo.

Also holds the small helpers the visualization commands (saliency, fool, dream) share:
reading an image argument, loading the model on a device, and writing a figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from captionlab.cli import add_json_flag
from captionlab.errors import UserError

BUNDLED_PREFIX = "skimage:"
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the network runs: cpu or cuda (cuda:N for one GPU of several)",
    )


def add_image_help() -> str:
    return (
        "an image file Pillow reads, or skimage:NAME for a photo bundled with scikit-image "
        f"({', '.join(BUNDLED_PHOTOS)})"
    )


def read_image(spec: str, size: int = 224) -> np.ndarray:
    """An image argument -> uint8 (size, size, 3); ``skimage:NAME`` reads a bundled photo."""
    from captionlab.vision.images import load_image

    if not spec.startswith(BUNDLED_PREFIX):
        return np.array(load_image(spec, size=size))  # a writable copy, for torch
    from PIL import Image

    from captionlab.vision.images import center_crop_resize

    name = spec[len(BUNDLED_PREFIX) :]
    if name not in BUNDLED_PHOTOS:
        raise UserError(
            f"{spec}: unknown bundled photo; expected one of {', '.join(BUNDLED_PHOTOS)}"
        )
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    img = Image.fromarray(pixels[..., :3].astype(np.uint8))
    return np.array(center_crop_resize(img, size), dtype=np.uint8)


def image_stem(spec: str) -> str:
    return spec[len(BUNDLED_PREFIX) :] if spec.startswith(BUNDLED_PREFIX) else Path(spec).stem


def load_model(device: str):
    """The pretrained backbone on ``device`` (UserError when CUDA is asked for but absent)."""
    from captionlab.vision.backbone import load_backbone

    return load_backbone(device=device)


def write_figure(fig, out: str | Path) -> str:
    """Save ``fig`` as PNG at ``out``; an unwritable place is the user's to fix."""
    from captionlab.vision.figures import save_figure

    try:
        return str(save_figure(fig, out))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the figure ({exc.strerror or exc})") from exc


def top_classes(probs, k: int) -> list[dict]:
    """probs (K,) tensor -> the top ``k`` as ``{"index", "name", "prob"}``."""
    from captionlab.vision.imagenet import CLASS_NAMES

    values, indices = probs.topk(k)
    return [
        {"index": int(i), "name": CLASS_NAMES[int(i)], "prob": float(v)}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="top-k ImageNet classes of photos, by the pretrained backbone",
        description="Print the backbone's top-k ImageNet classes with probabilities.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help=add_image_help())
    p.add_argument("--top", type=int, default=5, help="how many classes to list per image")
    p.add_argument(
        "--out", default=None, help="also write a PNG with each photo and its top classes"
    )
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    import torch

    from captionlab.vision.backbone import preprocess

    if not 1 <= args.top <= 1000:
        raise UserError(f"--top must be in 1..1000, got {args.top}")
    pixels = np.stack([read_image(spec) for spec in args.images])  # (N, 224, 224, 3)
    model = load_model(args.device)
    start = time.perf_counter()
    with torch.no_grad():
        probs = model(preprocess(pixels).to(next(model.parameters()).device)).softmax(dim=1)
    seconds = time.perf_counter() - start
    results = [
        {"image": spec, "top": top_classes(probs[i].cpu(), args.top)}
        for i, spec in enumerate(args.images)
    ]
    summary = {"device": args.device, "seconds": seconds, "results": results}
    if args.out:
        from captionlab.vision.figures import classify_figure

        fig = classify_figure(
            list(pixels),
            [[(c["name"], c["prob"]) for c in r["top"]] for r in results],
            titles=[image_stem(s) for s in args.images],
        )
        summary["out"] = write_figure(fig, args.out)
    if not args.json:
        for r in results:
            print(r["image"])
            for c in r["top"]:
                print(f"  {100 * c['prob']:5.1f}%  {c['index']:4d}  {c['name']}")
        if args.out:
            print(f"wrote {summary['out']}")
    return summary
