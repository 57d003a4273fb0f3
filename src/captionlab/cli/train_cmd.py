"""``captionlab train``: fit a captioner on a dataset's features, into a run folder."""

from __future__ import annotations

import sys

from captionlab.cli import add_json_flag
from captionlab.cli._options import (
    add_dataclass_flags,
    dataclass_from_args,
    given_fields,
    load_json_config,
    load_json_values,
)
from captionlab.errors import UserError

_EPILOG = (
    "A run folder knows its data and its settings: a new run refuses a folder holding one "
    "(--overwrite replaces it); --resume RUN continues on the same data with the run's own "
    "settings (only --epochs may be given, to train longer)."
)


def register(sub) -> None:
    from captionlab.runs.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a captioner (RNN/LSTM/GRU, attention or Transformer) on precomputed features",
        description="Train a captioner: --model rnn (pooled features; --cell rnn, lstm or gru), "
        "--model attention (Show, Attend and Tell over the store's grid, from `captionlab "
        "features --grid`) or --model transformer (pooled features, or the grid with --grid). "
        "Writes RUN/best.npz, RUN/last.npz, RUN/loss.png, RUN/log.json, RUN/config.json and "
        "RUN/vocab.json.",
        epilog=_EPILOG,
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset file (Karpathy dataset.json or COCO json); with --resume: the run's",
    )
    p.add_argument(
        "--features",
        default=None,
        help="HDF5 feature store from `captionlab features`; with --resume: the run's",
    )
    p.add_argument("--out", default=None, help="run folder to write (created if missing)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, config and log)",
    )
    p.add_argument("--image-root", default=None, help="folder the dataset's image paths are under")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN",
        help="continue the run in RUN (default: --out) from its last.npz, on its data and "
        "with its settings; --epochs may raise the total",
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

    out = args.resume or args.out
    if not out:
        raise UserError("give --out RUN (a new run folder) or --resume RUN (an existing one)")
    if args.resume is not None:
        if args.overwrite:
            raise UserError("--overwrite starts over and --resume continues: give one of them")
        # only what the user asked for is compared with the run's own config
        asked = load_json_values(TrainConfig, args.config) if args.config else {}
        config = {**asked, **given_fields(TrainConfig, args)}
    else:
        base = load_json_config(TrainConfig, args.config) if args.config else None
        config = dataclass_from_args(TrainConfig, args, base)
    summary = train_run(
        args.data,
        args.features,
        out,
        config,
        image_root=args.image_root,
        resume=args.resume is not None,
        overwrite=args.overwrite,
        progress=not args.quiet and not args.json and sys.stderr.isatty(),
        verbose=not args.quiet and not args.json,
    )
    if not args.json:
        if summary["best_val_bleu4"] is not None:
            best = f"best val BLEU-4 {summary['best_val_bleu4']:.3f}"
        elif summary["best_val_loss"] is not None:
            best = f"best val loss {summary['best_val_loss']:.3f}"
        else:
            best = "best train loss"
        print(
            f"trained {summary['cell']} for {summary['epochs']} epochs in {summary['seconds']} s "
            f"({summary['stop_reason']}); {best} at epoch {summary['best_epoch']}\n"
            f"  model: {summary['best']}\n  curve: {summary['loss_curve']}"
        )
    summary.pop("loss_history")  # one value per iteration: in RUN/log.json's curve, not here
    return summary
