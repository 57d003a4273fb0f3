"""``captionlab dream CLASS...``: class visualization by regularised gradient ascent from noise."""

from __future__ import annotations

from captionlab.bounds import add_number
from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, load_model, write_figure
from captionlab.vision.class_viz_defaults import DEFAULTS
from captionlab.vision.settings import DREAM


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dream",
        help="an image the network takes for a class (class visualization)",
        description="Gradient ascent from noise on class scores, with L2, jitter and blur.",
    )
    p.add_argument("classes", nargs="+", metavar="CLASS", help="ImageNet class by index or name")
    number = [
        ("--iterations", "num_iterations", "gradient steps"),
        ("--lr", "learning_rate", "L2 length of each step"),
        ("--l2", "l2_reg", "weight of the L2 penalty on the image"),
        ("--blur-every", "blur_every", "blur every N steps (0: never)"),
        ("--blur-sigma", "blur_sigma", "blur width in pixels"),
        ("--jitter", "max_jitter", "largest random shift"),
        ("--init-std", "init_std", "std of the start noise"),
    ]
    for flag, key, help_text in number:
        add_number(p, flag, bound=DREAM[key], default=DEFAULTS[key], help=help_text)
    add_number(p, "--size", bound=DREAM["size"], default=224, help="image side in pixels")
    add_number(
        p, "--seed", bound=DREAM["seed"], default=0, help="seed of the start noise and jitter"
    )
    p.add_argument("--out", default="dream.png", help="PNG to write (default: ./dream.png)")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.vision.figures import class_viz_figure
    from captionlab.vision.imagenet import resolve_class
    from captionlab.vision.tasks import dream

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
