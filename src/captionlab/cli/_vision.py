"""Flags and file handling the visualization commands share (classify, saliency, fool, dream)."""

from __future__ import annotations

import argparse
from pathlib import Path

from captionlab.errors import UserError
from captionlab.vision.images import BUNDLED_PHOTOS


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the network runs: cpu or cuda (cuda:N for one GPU of several)",
    )


def image_help() -> str:
    return (
        "an image file Pillow reads, or skimage:NAME for a photo bundled with scikit-image "
        f"({', '.join(BUNDLED_PHOTOS)})"
    )


def load_model(device: str):
    """The pretrained backbone on ``device`` (UserError when CUDA is asked for but absent)."""
    from captionlab.vision.backbone import load_backbone

    return load_backbone(device=device)


def write_figure(fig, out: str | Path) -> str:
    """Save ``fig`` as PNG at ``out``; an unwritable place is the user's to fix."""
    from captionlab.vision.figures import save_figure

    try:
        return str(save_figure(fig, out))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the figure ({exc.strerror or exc})") from exc
