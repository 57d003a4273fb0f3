"""The ``captionlab`` command: thin wrappers over the library; no logic of its own.

Each sub-command lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` where
``run(args) -> dict`` does the work and returns a JSON-able summary. ``main`` prints
that summary when ``--json`` is given, turns :class:`captionlab.errors.UserError` into a
one-line message with exit status 2, and lets real bugs raise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from captionlab import __version__
from captionlab.cli._options import HelpFormatter
from captionlab.errors import UserError

# Sub-command modules (``captionlab/cli/<name>_cmd.py``), in the order `--help` lists them.
COMMAND_MODULES = [
    "demo",
    "data",
    "features",
    "train",
    "evaluate",
    "caption",
    "classify",
    "saliency",
    "explain",
    "fool",
    "dream",
    "gradcheck",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captionlab",
        description="Image captioning from scratch in NumPy, and CNN visualization.",
    )
    parser.add_argument("--version", action="version", version=f"captionlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"captionlab.cli.{name}_cmd").register(sub)
    for command in sub.choices.values():  # one way of saying defaults, for every command
        command.formatter_class = HelpFormatter
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Every command takes ``--json``: print a machine-readable summary on stdout."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable JSON summary of what was done on stdout",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        summary = args.func(args)
    except UserError as exc:
        print(f"captionlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"captionlab {args.command}: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(summary if summary is not None else {}, indent=2, default=str))
    status = summary.get("exit_status", 0) if isinstance(summary, dict) else 0
    return int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
