"""``captionlab explain --model RUN IMAGE...``: why each word of a caption, as a map per word."""

from __future__ import annotations

from pathlib import Path

from captionlab.cli import add_json_flag
from captionlab.cli._vision import add_device_flag, image_help, write_figure
from captionlab.errors import UserError
from captionlab.explain.methods import LAYERCAM_TAP, METHODS  # torch-free


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="caption images and show, for each word, which pixels made the model say it",
        description="Decode a caption, then for every word a saliency map of its "
        "log-probability (teacher-forced on the caption), through the captioner's own "
        "backward pass and the checkpoint's feature extraction (image size, pooling, PCA) to "
        "the pixels. Writes one figure per image: the image, then a panel per word (and the "
        "word's attention beneath, for captioners with attention).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help=image_help())
    p.add_argument("--model", required=True, help="RUN/, RUN/best or a .npz checkpoint")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="smoothgrad",
        help="vanilla gradient, SmoothGrad or Integrated Gradients; layercam (LayerCAM at the "
        "backbone's block --layer, averaged over SmoothGrad's noisy copies); for captioners "
        "over a grid of cells (attention, grid Transformer) also gradcam (the word's gradient "
        "times the features per cell, upsampled) and guided-gradcam (SmoothGrad times "
        "gradcam's map). benchmarks/bench_explain.py measures which points at the word's "
        "object; SmoothGrad and layercam cost --samples times vanilla",
    )
    p.add_argument("--layer", default=LAYERCAM_TAP, metavar="BLOCK[,BLOCK]",
                   help=f"layercam: the backbone block it reads, block0 .. block15, or several "
                   f"joined by commas, whose maps are fused (each scaled to 1, their geometric "
                   f"mean: high where every block's is) (default {LAYERCAM_TAP})")  # fmt: skip
    p.add_argument("--hold-attention", action="store_true",
                   help="attention captioner or Transformer: take every gradient with its "
                   "attention weights (and the Transformer's layer-norm scales) held constant, "
                   "so a word's map shows what in the cells it looked at made it say the word, "
                   "not also where else it might have looked (on held-out shapes scenes it "
                   "points at the word's object more often; figure "
                   "IMAGE_explain_METHOD-held.png)")  # fmt: skip
    p.add_argument("--beam", type=int, default=1, help="beam size of the caption (1 = greedy)")
    p.add_argument("--max-length", type=int, default=None,
                   help="most words in a caption (default: 20, fewer for a Transformer that "
                   "encodes fewer positions)")  # fmt: skip
    p.add_argument("--samples", type=int, default=25,
                   help="SmoothGrad and layercam: noisy copies")  # fmt: skip
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="SmoothGrad and layercam: noise std / image value range (default 0.3: on "
        "held-out shapes scenes it points at a word's object more often than saliency's 0.15)",
    )
    p.add_argument(
        "--steps", type=int, default=32, help="Integrated Gradients: path points (black baseline)"
    )
    p.add_argument("--seed", type=int, default=0, help="SmoothGrad and layercam: noise seed")
    p.add_argument(
        "--out", default=".", help="folder for the figures, IMAGE_explain_METHOD.png (default: .)"
    )
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    for flag, value in (("--beam", args.beam), ("--max-length", args.max_length),
                        ("--samples", args.samples), ("--steps", args.steps)):  # fmt: skip
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.noise is not None and args.noise < 0:
        raise UserError(f"--noise must be >= 0, got {args.noise}")


def _figure_names(images: list[str], method: str) -> list[str]:
    """``STEM_explain_METHOD.png`` per image; a repeated stem gets ``-2``, ``-3``, ..."""
    from captionlab.vision.images import image_stem

    seen: dict[str, int] = {}
    names = []
    for spec in images:
        stem = image_stem(spec)
        seen[stem] = seen.get(stem, 0) + 1
        suffix = "" if seen[stem] == 1 else f"-{seen[stem]}"
        names.append(f"{stem}{suffix}_explain_{method}.png")
    return names


def run(args) -> dict:
    from captionlab.explain import CropGeometry, Explainer
    from captionlab.explain.figure import explanation_figure
    from captionlab.vision.images import read_image

    _check(args)
    explainer = Explainer.from_checkpoint(
        args.model, device=args.device, max_length=args.max_length,
        hold_attention=args.hold_attention,
    )  # fmt: skip
    label = args.method + ("-held" if args.hold_attention else "")
    S = explainer.image_size
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    pixels = [read_image(spec, size=S) for spec in args.images]  # every image readable first
    geometry = [CropGeometry.of_image(spec, S) for spec in args.images]
    results = []
    for spec, image, geo, name in zip(
        args.images, pixels, geometry, _figure_names(args.images, label), strict=True
    ):
        result = explainer.explain(
            image, args.method, beam=args.beam,
            samples=args.samples, steps=args.steps, seed=args.seed, layer=args.layer,
            **({} if args.noise is None else {"noise": args.noise}),
        )  # fmt: skip
        figure = write_figure(explanation_figure(image, result), out / name)
        words = []
        for w in result.words:
            peak = None if w.peak is None else list(geo.to_original(*w.peak))  # None: flat map
            entry = {"word": w.word, "position": w.position, "peak": peak,
                     "prob": round(w.prob, 4)}  # fmt: skip
            if w.attention_peak is not None:  # the centre of the cell it weighs most
                entry["attention_peak"] = list(geo.to_original(*w.attention_peak))
            words.append(entry)
        results.append(
            {"image": spec, "caption": result.caption, "words": words, "figure": figure,
             "image_size": [geo.width, geo.height], "seconds": round(result.seconds, 3)}
        )  # fmt: skip
        if not args.json:
            print(f"{spec}: {result.caption} -> {figure}")
    return {"model": args.model, "method": args.method, "hold_attention": args.hold_attention,
            "beam": args.beam, "images": results}  # fmt: skip
