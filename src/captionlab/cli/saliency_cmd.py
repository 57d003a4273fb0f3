"""``captionlab saliency IMAGE``: which pixels the network looked at, overlaid on the photo."""

from __future__ import annotations

import time

from captionlab.cli import add_json_flag
from captionlab.cli.classify_cmd import (
    add_device_flag,
    add_image_help,
    image_stem,
    load_model,
    read_image,
    top_classes,
    write_figure,
)
from captionlab.errors import UserError

CHOICES = ("vanilla", "smoothgrad", "ig", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "saliency",
        help="saliency map of a photo for a class (vanilla gradient, SmoothGrad, IG)",
        description="Write a PNG of the photo beside its saliency map(s) for one class.",
    )
    p.add_argument("image", metavar="IMAGE", help=add_image_help())
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
    import torch

    from captionlab.vision import saliency as sal
    from captionlab.vision.backbone import INPUT_RANGE, preprocess
    from captionlab.vision.figures import saliency_figure
    from captionlab.vision.imagenet import CLASS_NAMES, resolve_class

    if args.samples < 1 or args.steps < 1:
        raise UserError(f"--samples and --steps must be >= 1, got {args.samples}, {args.steps}")
    if args.noise < 0:
        raise UserError(f"--noise must be >= 0, got {args.noise}")
    target = None if args.target is None else resolve_class(args.target)
    pixels = read_image(args.image)  # (224, 224, 3)
    model = load_model(args.device)
    device = next(model.parameters()).device
    X = preprocess(pixels).to(device)  # (1, 3, 224, 224)
    with torch.no_grad():
        probs = model(X).softmax(dim=1)[0].cpu()
    if target is None:
        target = int(probs.argmax())
    methods = ("vanilla", "smoothgrad", "ig") if args.method == "all" else (args.method,)
    options = {
        "vanilla": {},
        "smoothgrad": {"n_samples": args.samples, "noise_level": args.noise, "seed": args.seed},
        # the black image as baseline: pixel 0 on the model's scale
        "ig": {"steps": args.steps, "baseline": float(INPUT_RANGE[0])},
    }
    maps, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        maps[method] = sal.saliency(X, target, model, method=method, **options[method])[0].cpu()
        seconds[method] = time.perf_counter() - start
    fig = saliency_figure(
        pixels,
        {m: v.numpy() for m, v in maps.items()},
        label=CLASS_NAMES[target],
        prob=float(probs[target]),
    )
    out = args.out or f"{image_stem(args.image)}_saliency_{args.method}.png"
    written = write_figure(fig, out)
    summary = {
        "image": args.image,
        "target": {"index": target, "name": CLASS_NAMES[target], "prob": float(probs[target])},
        "predicted": top_classes(probs, 1)[0],
        "methods": list(methods),
        "seconds": seconds,
        "device": args.device,
        "out": written,
    }
    if not args.json:
        print(
            f"{args.image}: saliency for {target} '{CLASS_NAMES[target]}' "
            f"({100 * float(probs[target]):.1f}%) by {', '.join(methods)} -> {written}"
        )
    return summary
