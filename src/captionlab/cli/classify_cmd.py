"""``captionlab classify IMAGE...``: the backbone's top-k ImageNet classes for each photo."""

from __future__ import annotations

import time

import numpy as np

from captionlab.bounds import add_number, integer
from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, load_model, write_figure


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="top-k ImageNet classes of photos, by the pretrained backbone",
        description="Print the backbone's top-k ImageNet classes with probabilities.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help=image_help())
    add_number(
        p, "--top", bound=integer(1, 1000), default=5, help="how many classes to list per image"
    )
    p.add_argument(
        "--out", default=None, help="also write a PNG with each photo and its top classes"
    )
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.vision.images import image_stem, read_image
    from captionlab.vision.tasks import classify

    pixels = np.stack([read_image(spec) for spec in args.images])  # (N, 224, 224, 3)
    model = load_model(args.device)
    start = time.perf_counter()
    tops = classify(model, pixels, args.top)
    seconds = time.perf_counter() - start
    results = [{"image": spec, "top": top} for spec, top in zip(args.images, tops, strict=True)]
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
