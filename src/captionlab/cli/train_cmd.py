"""``captionlab train``: fit a captioner on a dataset's features, into a run folder."""

from __future__ import annotations

from captionlab.cli import add_json_flag
from captionlab.cli._options import add_dataclass_flags, dataclass_from_args, load_json_config
from captionlab.errors import UserError


def register(sub) -> None:
    from captionlab.runs.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a captioning RNN/LSTM/GRU on precomputed features",
        description="Train a captioner. Writes RUN/best.npz, RUN/last.npz, RUN/loss.png, "
        "RUN/log.json, RUN/config.json and RUN/vocab.json.",
    )
    p.add_argument(
        "--data", required=True, help="dataset file (Karpathy dataset.json or COCO json)"
    )
    p.add_argument(
        "--features", required=True, help="HDF5 feature store from `captionlab features`"
    )
    p.add_argument("--out", default=None, help="run folder to write (created if missing)")
    p.add_argument("--image-root", default=None, help="folder the dataset's image paths are under")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN",
        help="continue the run in RUN (default: --out) from its last.npz; "
        "--epochs may raise the total",
    )
    p.add_argument(
        "--config", default=None, help="JSON file with TrainConfig keys (flags override)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_dataclass_flags(p, TrainConfig, "model and optimisation")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.runs.config import TrainConfig
    from captionlab.runs.train import train_run

    base = load_json_config(TrainConfig, args.config) if args.config else None
    config = dataclass_from_args(TrainConfig, args, base)
    out = args.resume or args.out
    if not out:
        raise UserError("give --out RUN (a new run folder) or --resume RUN (an existing one)")
    summary = train_run(
        args.data,
        args.features,
        out,
        config,
        image_root=args.image_root,
        resume=args.resume is not None,
        progress=not args.quiet and not args.json,
        verbose=not args.quiet and not args.json,
    )
    if not args.json:
        print(
            f"trained {summary['cell']} for {summary['epochs']} epochs in {summary['seconds']} s "
            f"({summary['stop_reason']}); best val BLEU-4 {summary['best_val_bleu4']:.3f} at "
            f"epoch {summary['best_epoch']}\n  model: {summary['best']}\n  curve: "
            f"{summary['loss_curve']}"
        )
    summary.pop("loss_history")  # one value per iteration: in RUN/log.json's curve, not here
    return summary
