"""``captionlab saliency IMAGE``: which pixels the network looked at, overlaid on the photo."""

from __future__ import annotations

from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, load_model, write_figure
from captionlab.errors import UserError

CHOICES = ("vanilla", "smoothgrad", "ig", "all")


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
    p.add_argument("--samples", type=int, default=25, help="SmoothGrad: noisy copies")
    p.add_argument(
        "--noise", type=float, default=0.15, help="SmoothGrad: noise std / image value range"
    )
    p.add_argument(
        "--steps", type=int, default=32, help="Integrated Gradients: path points (black baseline)"
    )
    p.add_argument("--seed", type=int, default=0, help="SmoothGrad: noise seed")
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

    if args.samples < 1 or args.steps < 1:
        raise UserError(f"--samples and --steps must be >= 1, got {args.samples}, {args.steps}")
    if args.noise < 0:
        raise UserError(f"--noise must be >= 0, got {args.noise}")
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
