"""``captionlab fool IMAGE --target CLASS``: a fooling image, shown beside the photo."""

from __future__ import annotations

from captionlab.bounds import add_number
from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, load_model, write_figure
from captionlab.errors import UserError
from captionlab.vision.settings import FOOL


def parse_epsilon(text: str, flag: str = "--epsilon") -> float:
    """``"8/255"`` or ``"0.031"`` -> a fraction of the pixel range in [0, 1]; a bad value
    raises UserError naming ``flag`` (``--epsilon`` or ``--step-size``)."""
    bound = FOOL["step_size"] if flag == "--step-size" else FOOL["epsilon"]
    return bound.parse(text, flag)


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
    add_number(
        p,
        "--epsilon",
        bound=FOOL["epsilon"],
        default=None,
        help="L-infinity budget as a fraction of the pixel range, e.g. 4/255 (PGD)",
    )
    add_number(
        p,
        "--max-iter",
        bound=FOOL["max_iter"],
        default=100,
        help="step cap of the attack (default 100)",
    )
    add_number(
        p,
        "--lr",
        bound=FOOL["learning_rate"],
        default=1.0,
        help="unbounded attack: L2 length of each step",
    )
    add_number(
        p,
        "--step-size",
        bound=FOOL["step_size"],
        default=None,
        help="PGD: step per pixel, like 1/255 (default epsilon/4)",
    )
    add_number(
        p,
        "--confidence",
        bound=FOOL["confidence"],
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

    target = resolve_class(args.target)
    epsilon, step = args.epsilon, args.step_size
    if step is not None and epsilon is None:
        raise UserError("--step-size is a PGD setting: give --epsilon too (e.g. 4/255)")
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
