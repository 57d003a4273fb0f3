"""The ``captionlab`` command: thin wrappers over the library; no logic of its own.

Each sub-command lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` where
``run(args) -> dict`` does the work and returns a JSON-able summary. ``main`` prints
that summary when ``--json`` is given (strict JSON: a non-finite number is ``null``), turns
:class:`captionlab.errors.UserError` (also from a flag's value, see
:mod:`captionlab.bounds`) and an operating-system error on a named file into a one-line
message with exit status 2, and lets real bugs raise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

from captionlab import __version__
from captionlab.cli._options import HelpFormatter
from captionlab.errors import UserError

# errno values of a full disk or quota, reported without a file name.
_DISK_ERRNOS = (28, 122)

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
    "serve",
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


def add_json_flag(parser: argparse.ArgumentParser, nested: bool = False) -> None:
    """Every command takes ``--json``: print a machine-readable summary on stdout.

    ``nested``: the parser is an action under a command that takes ``--json`` itself
    (``captionlab data --json info``): left out, the flag keeps the command's value.
    """
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="print a machine-readable JSON summary of what was done on stdout",
    )


def _error(command: str | None, message: str) -> int:
    """Print one line ``captionlab COMMAND: error: MESSAGE`` on stderr; exit status 2."""
    prefix = f"captionlab {command}" if command else "captionlab"
    print(f"{prefix}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _finite(obj):
    """``obj`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def to_json(summary) -> str:
    """A command's summary as strict JSON (what ``--json`` prints)."""
    summary = summary if summary is not None else {}
    try:
        return json.dumps(summary, indent=2, default=str, allow_nan=False)
    except ValueError:  # a NaN somewhere: JSON has no NaN, so it becomes null
        return json.dumps(_finite(summary), indent=2, default=str, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMAND_MODULES), None)
    try:
        args = parser.parse_args(argv)
    except UserError as exc:  # a flag's value out of its range (captionlab.bounds)
        return _error(command, str(exc))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        summary = args.func(args)
        if getattr(args, "json", False):
            print(to_json(summary))
    except UserError as exc:
        return _error(args.command, str(exc))
    except BrokenPipeError:  # `captionlab ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A file the user named that cannot be written or read (permissions, a folder where
        # a file was expected, a full disk): the user's to fix. Other OSErrors are bugs.
        if exc.errno is None or (exc.filename is None and exc.errno not in _DISK_ERRNOS):
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return _error(args.command, f"{where}{exc.strerror or exc}")
    except MemoryError:
        return _error(args.command, "out of memory; choose smaller sizes or fewer images")
    except KeyboardInterrupt:
        print(f"captionlab {args.command}: interrupted", file=sys.stderr)
        return 130
    status = summary.get("exit_status", 0) if isinstance(summary, dict) else 0
    return int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
