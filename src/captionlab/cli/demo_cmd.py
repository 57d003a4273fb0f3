"""``captionlab demo``: the whole pipeline on the built-in shapes benchmark."""

from __future__ import annotations

from captionlab.cli import add_json_flag
from captionlab.cli._options import add_dataclass_flags, dataclass_from_args


def register(sub) -> None:
    from captionlab.demo import DemoConfig

    p = sub.add_parser(
        "demo",
        help="generate data, extract features, train LSTM and RNN, evaluate, draw figures",
        description="From nothing: the shapes benchmark, EfficientNet-Lite0 features, an LSTM "
        "and a vanilla-RNN captioner, beam-search captions of the test split with COCO metrics "
        "and scene accuracy, a gallery and the CNN-visualization figures. Data, features and "
        "trained models are cached in OUT/cache and OUT/runs, so a second run is quick.",
    )
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument(
        "--quick", action="store_true", help="tiny settings (a minute): a first look, and tests"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_flags(p, DemoConfig, "demo settings")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from captionlab.demo import DemoConfig, run_demo

    base = DemoConfig.quick() if args.quick else DemoConfig()
    config = dataclass_from_args(DemoConfig, args, base)
    return run_demo(args.out, config, progress=not args.no_progress)
