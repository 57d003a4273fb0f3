"""``captionlab saliency IMAGE``: which pixels the network looked at, overlaid on the photo."""

from __future__ import annotations

from captionlab.bounds import add_number
from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, load_model, write_figure
from captionlab.vision.settings import SALIENCY, SALIENCY_METHODS

CHOICES = (*SALIENCY_METHODS, "all")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "saliency",
        help="saliency map of a photo for a class (vanilla gradient, SmoothGrad, IG)",
        description="Write a PNG of the photo beside its saliency map(s) for one class.",
    )
    p.add_argument("image", metavar="IMAGE", help=image_help())
    p.add_argument(
        "--method",
        choices=CHOICES,
        default="vanilla",
        help="vanilla gradient, SmoothGrad, Integrated Gradients, or all three side by side",
    )
    p.add_argument(
        "--target",
        default=None,
        help="class to explain, by index or ImageNet name (default: the predicted class)",
    )
    add_number(
        p, "--samples", bound=SALIENCY["samples"], default=25, help="SmoothGrad: noisy copies"
    )
    add_number(
        p,
        "--noise",
        bound=SALIENCY["noise"],
        default=0.15,
        help="SmoothGrad: noise std / image value range",
    )
    add_number(
        p,
        "--steps",
        bound=SALIENCY["steps"],
        default=32,
        help="Integrated Gradients: path points (black baseline)",
    )
    add_number(p, "--seed", bound=SALIENCY["seed"], default=0, help="SmoothGrad: noise seed")
    p.add_argument(
        "--out", default=None, help="PNG to write (default: ./<image>_saliency_<method>.png)"
    )
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.vision.figures import saliency_figure
    from captionlab.vision.imagenet import resolve_class
    from captionlab.vision.images import image_stem, read_image
    from captionlab.vision.tasks import saliency_maps

    target = None if args.target is None else resolve_class(args.target)
    pixels = read_image(args.image)  # (224, 224, 3)
    model = load_model(args.device)
    methods = ("vanilla", "smoothgrad", "ig") if args.method == "all" else (args.method,)
    result = saliency_maps(
        model, pixels, target, methods,
        samples=args.samples, noise=args.noise, steps=args.steps, seed=args.seed,
    )  # fmt: skip
    chosen = result["target"]
    fig = saliency_figure(pixels, result["maps"], label=chosen["name"], prob=chosen["prob"])
    out = args.out or f"{image_stem(args.image)}_saliency_{args.method}.png"
    written = write_figure(fig, out)
    summary = {
        "image": args.image,
        "target": chosen,
        "predicted": result["predicted"],
        "methods": list(methods),
        "seconds": result["seconds"],
        "device": args.device,
        "out": written,
    }
    if not args.json:
        print(
            f"{args.image}: saliency for {chosen['index']} '{chosen['name']}' "
            f"({100 * chosen['prob']:.1f}%) by {', '.join(methods)} -> {written}"
        )
    return summary
