"""``captionlab fool IMAGE --target CLASS``: a fooling image, shown beside the photo."""

from __future__ import annotations

from fractions import Fraction

from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, load_model, write_figure
from captionlab.errors import UserError


def parse_epsilon(text: str) -> float:
    """``"8/255"`` or ``"0.031"`` -> a fraction of the pixel range in [0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise UserError(f"--epsilon must be like 8/255 or 0.031, got {text!r}") from exc
    if not 0 <= value <= 1:
        raise UserError(
            f"--epsilon is a fraction of the pixel range in [0, 1] (e.g. 8/255), got {text!r}"
        )
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fool",
        help="make a photo be classified as another class (adversarial example)",
        description=(
            "Without --epsilon: cs231n's unbounded attack (normalised gradient ascent on the "
            "target score). With --epsilon: targeted PGD within that L-infinity budget. "
            "Writes the photo, the fooling image and their magnified difference."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help=image_help())
    p.add_argument(
        "--target", required=True, help="class to fool the network into, by index or name"
    )
    p.add_argument(
        "--epsilon",
        default=None,
        help="L-infinity budget as a fraction of the pixel range, e.g. 4/255 (PGD)",
    )
    p.add_argument("--max-iter", type=int, default=100, help="step cap of the attack (default 100)")
    p.add_argument("--lr", type=float, default=1.0, help="unbounded attack: L2 length of each step")
    p.add_argument(
        "--step-size", default=None, help="PGD: step per pixel, like 1/255 (default epsilon/4)"
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="keep going after the flip until the target has this probability (0 = stop at flip)",
    )
    p.add_argument("--out", default=None, help="PNG to write (default: ./<image>_fool.png)")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.vision.figures import fooling_figure
    from captionlab.vision.imagenet import CLASS_NAMES, resolve_class
    from captionlab.vision.images import image_stem, read_image
    from captionlab.vision.tasks import fool

    if args.max_iter < 0:
        raise UserError(f"--max-iter must be >= 0, got {args.max_iter}")
    if not 0 <= args.confidence < 1:
        raise UserError(f"--confidence must be in [0, 1), got {args.confidence}")
    target = resolve_class(args.target)
    epsilon = None if args.epsilon is None else parse_epsilon(args.epsilon)
    step = None if args.step_size is None else parse_epsilon(args.step_size)
    pixels = read_image(args.image)
    model = load_model(args.device)
    res = fool(
        model, pixels, target, epsilon=epsilon, step_size=step, learning_rate=args.lr,
        max_iter=args.max_iter, confidence=args.confidence,
    )  # fmt: skip
    top_before, top_after = res.pop("predicted_before"), res["predicted_after_saving"]
    fig = fooling_figure(
        pixels,
        res.pop("image"),
        original_label=top_before["name"],
        original_prob=top_before["prob"],
        fooled_label=top_after["name"],
        fooled_prob=top_after["prob"],
    )
    written = write_figure(fig, args.out or f"{image_stem(args.image)}_fool.png")
    summary = {
        "image": args.image,
        "target": {"index": target, "name": CLASS_NAMES[target]},
        **res,
        "predicted_before": top_before,
        "device": args.device,
        "out": written,
    }
    if not args.json:
        verdict = "fooled" if summary["success_after_saving"] else "NOT fooled"
        print(
            f"{args.image}: '{top_before['name']}' -> '{top_after['name']}' "
            f"({100 * top_after['prob']:.1f}%), {verdict} after {summary['iterations']} steps, "
            f"max change {255 * summary['linf']:.1f}/255 -> {written}"
        )
    return summary
