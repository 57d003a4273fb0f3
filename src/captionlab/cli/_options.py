"""Typed defaults, loud overrides: turn a dataclass of defaults into argparse flags.

Each field becomes ``--field-name`` with its default, type and the help string stored in
``field(metadata={"help": ...})``; a number's range is the field's ``metadata["bound"]``
(:mod:`captionlab.bounds`), checked as the flag is read. Booleans become ``--flag/--no-flag``.
A JSON config file (``--config FILE``) may set the same keys; an unknown key is rejected by
name, and a bad value is named with the file and the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from captionlab.bounds import check_values, number_type
from captionlab.errors import UserError

T = TypeVar("T")


class HelpFormatter(argparse.HelpFormatter):
    """Says each flag's default once: appended unless the help already says it, and not
    for flags without a default (``None``, ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


_UNIONS = (typing.Union, types.UnionType)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, group: str | None = None):
    """Add one flag per field of the dataclass ``cls`` (help text from field metadata)."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        choices = f.metadata.get("choices")
        base = typing.get_args(kind)[0] if typing.get_origin(kind) in _UNIONS else kind
        if base is bool:
            target.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
            continue
        if base not in (int, float, str):
            base = str
        bound = f.metadata.get("bound")
        target.add_argument(
            _flag(f.name),
            dest=f.name,
            type=number_type(bound, _flag(f.name)) if bound is not None else base,
            default=None,
            choices=choices,
            metavar=f.metadata.get("metavar", f.name.upper()),
            help=f"{help_text} (default: {default})",
        )


def given_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` the user set by a flag (flags default to None when not given)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def dataclass_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """Build ``cls`` from its defaults (or ``base``), overridden by flags the user set."""
    values = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return cls(**values)


def checked_values(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """The keys of ``data`` (a JSON config), known to ``cls`` and with numbers in range;
    an unknown key or a bad value is a UserError naming ``source`` and the field."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(names))}"
        )
    return check_values(cls, data, where=lambda name: f"{source}: field {name!r}")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """Build ``cls`` from a dict (a JSON config), rejecting unknown keys by name."""
    values = checked_values(cls, data, source)
    try:
        return cls(**values)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def load_json_config(cls: type[T], path: str | Path) -> T:
    """``cls`` built from a JSON config file (see :func:`dataclass_from_dict`)."""
    return dataclass_from_dict(cls, read_json_config(path), str(path))


def load_json_values(cls: type, path: str | Path) -> dict[str, Any]:
    """Only the keys a JSON config file sets, checked (see :func:`checked_values`)."""
    return checked_values(cls, read_json_config(path), str(path))


def read_json_config(path: str | Path) -> dict[str, Any]:
    """A JSON config file's object; a missing file or another document is a UserError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: expected a JSON config file, got a folder") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
