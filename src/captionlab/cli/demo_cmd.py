"""``captionlab demo``: the whole pipeline on the built-in shapes benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from captionlab.cli import add_json_flag, main
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    return run_demo(args.out, config, progress=not args.no_progress, vision_figures=vision_figures)


VISION_JOBS = (
    ("classify.png", ["classify", "skimage:chelsea", "skimage:coffee", "skimage:astronaut",
                      "skimage:rocket"]),
    ("saliency_chelsea.png", ["saliency", "skimage:chelsea", "--method", "all"]),
    ("fool_coffee_goldfish.png", ["fool", "skimage:coffee", "--target", "goldfish",
                                  "--epsilon", "2/255"]),
    ("dream.png", ["dream", "tarantula", "flamingo"]),
)  # fmt: skip


def vision_figures(out: Path) -> list[str]:
    """The network-visualization figures on bundled photos, made by the same commands a
    user runs (``captionlab classify | saliency | fool | dream``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, argv in VISION_JOBS:
        status = main([*argv, "--out", str(out / name)])
        if status != 0:
            raise RuntimeError(f"captionlab {' '.join(argv)} failed with status {status}")
        written.append(str(out / name))
    return written
