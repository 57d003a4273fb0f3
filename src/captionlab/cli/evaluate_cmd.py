"""``captionlab evaluate``: caption a split with a trained model and score it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from captionlab.bounds import add_number, integer
from captionlab.cli import add_json_flag


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained model on a dataset split (BLEU, METEOR, ROUGE-L, CIDEr, scenes)",
        description="Caption a split and score it. Features come from --features, else from "
        "the store the model trained on when it holds this dataset's images, else they are "
        "extracted with the model's own extractor and PCA basis and cached in "
        "RUN/eval_features/ (once per dataset, split and model).",
    )
    p.add_argument("--model", required=True, help="RUN/, RUN/best or a .npz checkpoint")
    p.add_argument("--data", required=True, help="dataset file (Karpathy or COCO json)")
    p.add_argument(
        "--features",
        default=None,
        help="feature store (default: the model's training store, or features extracted with "
        "the model's extractor)",
    )
    p.add_argument("--split", default="test", help="split to caption: train, val or test")
    add_number(
        p,
        "--beam",
        bound=integer(1, 100),
        default=3,
        help="beam size (1 = greedy); greedy is always reported too",
    )
    p.add_argument("--image-root", default=None, help="folder the dataset's image paths are under")
    p.add_argument("--scenes", default=None, help="scenes.json for scene accuracy (shapes data)")
    p.add_argument(
        "--no-meteor", action="store_true", help="skip METEOR (it costs ~15 s of Java start-up)"
    )
    add_number(p, "--limit", bound=integer(1), default=None, help="caption only the first N images")
    p.add_argument(
        "--out",
        default=None,
        help="JSON file for metrics and every caption, or a folder to write eval_SPLIT.json in "
        "(default: RUN/eval_SPLIT.json)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda for extracting features")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab._atomic import write_json
    from captionlab.runs.evaluate import evaluate_run
    from captionlab.runs.inference import resolve_model_path
    from captionlab.runs.report import metrics_table

    beams = sorted({1, args.beam})
    ckpt = resolve_model_path(args.model)
    out = Path(args.out) if args.out else ckpt.parent / f"eval_{args.split}.json"
    if out.is_dir():
        out = out / f"eval_{args.split}.json"
    cache = ckpt.parent if os.access(ckpt.parent, os.W_OK) else out.parent
    result = evaluate_run(
        args.model,
        args.data,
        args.features,
        split=args.split,
        beams=beams,
        image_root=args.image_root,
        scenes_path=args.scenes,
        limit=args.limit,
        meteor=not args.no_meteor,
        cache_dir=cache / "eval_features",
        device=args.device,
        progress=not args.json and sys.stderr.isatty(),
    )
    write_json(out, result)
    rows = {name: r["metrics"] for name, r in result["results"].items()}
    if not args.json:
        print(f"{result['cell']} on {result['images']} {args.split} images ({ckpt})")
        how = "extracted into" if result["features"]["extracted"] else "from"
        print(f"features {how} {result['features']['store']}")
        print(metrics_table(rows))
        best = result["results"][f"beam{args.beam}" if args.beam > 1 else "greedy"]
        for item in best["captions"][:5]:
            print(f"  {Path(item['path']).name}: {item['caption']}")
        print(f"all captions: {out}")
    return {
        "model": str(ckpt),
        "split": args.split,
        "images": result["images"],
        "metrics": rows,
        "features": result["features"],
        "captions_file": str(out),
    }
