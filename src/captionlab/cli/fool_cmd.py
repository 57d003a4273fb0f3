"""``captionlab fool IMAGE --target CLASS``: a fooling image, shown beside the photo."""

from __future__ import annotations

import time
from fractions import Fraction

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
    p.add_argument("image", metavar="IMAGE", help=add_image_help())
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
    import torch

    from captionlab.vision import fooling
    from captionlab.vision.backbone import INPUT_RANGE, deprocess, preprocess
    from captionlab.vision.figures import fooling_figure
    from captionlab.vision.imagenet import CLASS_NAMES, resolve_class

    if args.max_iter < 0:
        raise UserError(f"--max-iter must be >= 0, got {args.max_iter}")
    if not 0 <= args.confidence < 1:
        raise UserError(f"--confidence must be in [0, 1), got {args.confidence}")
    target = resolve_class(args.target)
    epsilon = None if args.epsilon is None else parse_epsilon(args.epsilon)
    step = None if args.step_size is None else parse_epsilon(args.step_size)
    pixels = read_image(args.image)
    model = load_model(args.device)
    device = next(model.parameters()).device
    X = preprocess(pixels).to(device)  # (1, 3, 224, 224)
    stop_prob = args.confidence or None
    start = time.perf_counter()
    if epsilon is None:
        res = fooling.fool(
            X,
            target,
            model,
            learning_rate=args.lr,
            max_iter=args.max_iter,
            input_range=INPUT_RANGE,
            stop_prob=stop_prob,
        )
    else:
        res = fooling.pgd_attack(
            X,
            target,
            model,
            epsilon=epsilon,
            step_size=step,
            max_iter=args.max_iter,
            input_range=INPUT_RANGE,
            stop_prob=stop_prob,
        )
    seconds = time.perf_counter() - start
    fooled = deprocess(res.images)[0]  # what is saved: the image rounded to pixels
    with torch.no_grad():
        before = model(X).softmax(dim=1)[0].cpu()
        after = model(preprocess(fooled).to(device)).softmax(dim=1)[0].cpu()
    top_before, top_after = top_classes(before, 1)[0], top_classes(after, 1)[0]
    fig = fooling_figure(
        pixels,
        fooled,
        original_label=top_before["name"],
        original_prob=top_before["prob"],
        fooled_label=top_after["name"],
        fooled_prob=top_after["prob"],
    )
    written = write_figure(fig, args.out or f"{image_stem(args.image)}_fool.png")
    summary = {
        "image": args.image,
        "target": {"index": target, "name": CLASS_NAMES[target]},
        "attack": "cs231n" if epsilon is None else "pgd",
        "epsilon": epsilon,
        "success": bool(res.success[0]),
        "iterations": int(res.iterations[0]),
        "target_prob": float(res.target_prob[0]),
        "l2": float(res.l2[0]),
        "linf": float(res.linf[0]),
        "predicted_before": top_before,
        "predicted_after_saving": top_after,
        "success_after_saving": top_after["index"] == target,
        "seconds": seconds,
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
