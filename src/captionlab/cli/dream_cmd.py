"""``captionlab dream CLASS...``: class visualization by regularised gradient ascent from noise."""

from __future__ import annotations

from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, load_model, write_figure
from captionlab.errors import UserError
from captionlab.vision.class_viz_defaults import DEFAULTS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dream",
        help="an image the network takes for a class (class visualization)",
        description="Gradient ascent from noise on class scores, with L2, jitter and blur.",
    )
    p.add_argument("classes", nargs="+", metavar="CLASS", help="ImageNet class by index or name")
    p.add_argument(
        "--iterations",
        type=int,
        default=DEFAULTS["num_iterations"],
        help="gradient steps",
    )
    p.add_argument(
        "--lr", type=float, default=DEFAULTS["learning_rate"], help="L2 length of each step"
    )
    p.add_argument(
        "--l2", type=float, default=DEFAULTS["l2_reg"], help="weight of the L2 penalty on the image"
    )
    p.add_argument(
        "--blur-every", type=int, default=DEFAULTS["blur_every"], help="blur every N steps"
    )
    p.add_argument(
        "--blur-sigma", type=float, default=DEFAULTS["blur_sigma"], help="blur width in pixels"
    )
    p.add_argument(
        "--jitter", type=int, default=DEFAULTS["max_jitter"], help="largest random shift"
    )
    p.add_argument(
        "--init-std", type=float, default=DEFAULTS["init_std"], help="std of the start noise"
    )
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and jitter")
    p.add_argument("--out", default="dream.png", help="PNG to write (default: ./dream.png)")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.vision.figures import class_viz_figure
    from captionlab.vision.imagenet import resolve_class
    from captionlab.vision.tasks import dream

    if args.iterations < 0 or args.blur_every < 0 or args.jitter < 0:
        raise UserError(
            "--iterations, --blur-every and --jitter must be >= 0, got "
            f"{args.iterations}, {args.blur_every}, {args.jitter}"
        )
    if not 32 <= args.size <= 1024:
        raise UserError(f"--size must be in 32..1024 pixels, got {args.size}")
    targets = [resolve_class(c) for c in args.classes]
    model = load_model(args.device)
    res = dream(
        model, targets, l2_reg=args.l2, learning_rate=args.lr, num_iterations=args.iterations,
        blur_every=args.blur_every, blur_sigma=args.blur_sigma, max_jitter=args.jitter,
        init_std=args.init_std, size=args.size, seed=args.seed,
    )  # fmt: skip
    classes = res["classes"]
    fig = class_viz_figure(
        res["images"], [c["name"] for c in classes], [c["prob"] for c in classes],
        iterations=args.iterations,
    )  # fmt: skip
    written = write_figure(fig, args.out)
    summary = {
        "classes": classes,
        "iterations": args.iterations,
        "seconds": res["seconds"],
        "device": args.device,
        "out": written,
    }
    if not args.json:
        for c in summary["classes"]:
            print(f"{c['index']:4d} {c['name']}: {100 * c['prob']:.1f}%")
        print(f"wrote {written}")
    return summary
