"""``captionlab caption``: describe image files with a trained model."""

from __future__ import annotations

from captionlab.bounds import add_number, integer
from captionlab.cli import add_json_flag


def register(sub) -> None:
    p = sub.add_parser(
        "caption",
        help="caption image files with a trained model",
        description="Features are extracted on the fly exactly as in training (same backbone, "
        "image size, pooling and PCA basis, all stored in the checkpoint).",
    )
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, help="RUN/, RUN/best or a .npz checkpoint")
    add_number(p, "--beam", bound=integer(1, 100), default=3, help="beam size (1 = greedy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda for the feature extractor")
    p.add_argument(
        "--attention",
        default=None,
        metavar="DIR",
        help="(attention models) write one figure per image into DIR: the image and, for "
        "every word of its caption, where the model looked (DIR/<image>_attention.png)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.runs.inference import caption_image_files

    result = caption_image_files(
        args.model, args.images, beam=args.beam, device=args.device, attention_dir=args.attention
    )
    if not args.json:
        for r in result["captions"]:
            print(f"{r['image']}: {r['caption']}")
            if "figure" in r:
                print(f"  attention: {r['figure']}")
        if result["note"]:
            print(f"note: {result['note']}")
    return {"model": args.model, "beam": args.beam, **result}
