"""Numbers a user gives (flags, config fields), validated once.

A :class:`Bound` says what a number may be: an integer or a finite real, in a range. It is
declared once, in a dataclass field's metadata (``field(default=512, metadata={"help": ...,
"bound": integer(1, 16384)})``) or beside a flag (:func:`add_number`), and checked the same
way everywhere: on the command line (naming the flag), in a JSON config (naming the file and
the field) and when a config object is built in code (naming the field)::

    --hidden-dim must be an integer in 1..16384, got 100000
    cfg.json: field 'learning_rate' must be a finite number > 0, got None
    lr_decay must be a number in (0, 1], got nan

NaN and infinity are never accepted; an integer field refuses ``8.5``, ``"big"`` and
``true``. Standard library only, so every package may use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from captionlab.errors import UserError

__all__ = [
    "SEED",
    "Bound",
    "add_number",
    "check_fields",
    "check_values",
    "field_bound",
    "integer",
    "real",
]


@dataclass(frozen=True)
class Bound:
    """An integer or a finite real number, optionally within ``lo``/``hi``.

    ``lo_open``/``hi_open`` exclude the end itself; ``none`` also allows ``None`` (an
    optional setting).
    """

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    none: bool = False

    def describe(self) -> str:
        """``"an integer in 1..16384"``, ``"a finite number > 0"``, ``"a number in (0, 1]"``."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None:
            if self.kind is int:
                text = f"an integer in {_num(self.lo)}..{_num(self.hi)}"
            else:
                left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
                text = f"a number in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        elif self.lo is not None:
            text = f"{what} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            text = f"{what} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            text = what
        return text + (" (or null)" if self.none else "")

    def check(self, value: Any, name: str) -> Any:
        """``value`` as an int or float within the bound, else UserError naming ``name``."""
        if value is None and self.none:
            return None
        number = self._number(value)
        if number is None or not self._inside(number):
            raise UserError(f"{name} must be {self.describe()}, got {_shown(value)}")
        return number

    def parse(self, text: str, name: str) -> Any:
        """A command-line string -> the number (``"8/255"`` is read as a fraction)."""
        text = text.strip()
        value: Any = text
        if self.kind is int:
            try:
                value = int(text)
            except ValueError:
                pass
        else:
            try:
                value = float(text)
            except ValueError:
                try:
                    value = float(Fraction(text))
                except (ValueError, ZeroDivisionError):
                    pass
        return self.check(value, name)

    def _number(self, value: Any) -> int | float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            return None
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                return None
            return int(value)
        return float(value)

    def _inside(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))


def integer(lo: int | None = None, hi: int | None = None, *, none: bool = False) -> Bound:
    """An integer in ``lo..hi`` (either end may be open-ended: ``None``)."""
    return Bound(int, lo, hi, none=none)


def real(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    none: bool = False,
) -> Bound:
    """A finite real number within ``lo``/``hi`` (ends excluded when ``*_open``)."""
    return Bound(float, lo, hi, lo_open, hi_open, none)


#: Seeds of NumPy's and torch's generators.
SEED = integer(0, 2**32 - 1)


def _num(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer():
        return str(int(x))
    return f"{x:g}"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, int) else f"{value:g}"
    return f"a {type(value).__name__}"


# -- dataclasses --------------------------------------------------------------------------------


def check_values(cls: type, values: dict, where: Callable[[str], str] = str) -> dict:
    """Check the values of ``cls``'s bounded fields in ``values`` (a dict, e.g. a JSON config);
    return a copy with each number normalised (``8.0`` -> ``8`` for an integer field).

    ``where(name)`` is how a field is named in a message (default: its name).
    """
    out = dict(values)
    for f in dataclasses.fields(cls):
        bound = f.metadata.get("bound")
        if bound is not None and f.name in out:
            out[f.name] = bound.check(out[f.name], where(f.name))
    return out


def check_fields(obj: Any) -> None:
    """Check every bounded field of the dataclass instance ``obj`` (for ``__post_init__``),
    normalising numbers in place (frozen dataclasses too)."""
    for f in dataclasses.fields(obj):
        bound = f.metadata.get("bound")
        if bound is not None:
            value = bound.check(getattr(obj, f.name), f.name)
            object.__setattr__(obj, f.name, value)


# -- argparse -----------------------------------------------------------------------------------


def number_type(bound: Bound, flag: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for ``bound``: a bad value raises :class:`UserError` naming
    ``flag`` (``captionlab.cli.main`` prints it as one line, exit status 2)."""

    def parse(text: str) -> Any:
        return bound.parse(text, flag)

    parse.__name__ = "integer" if bound.kind is int else "number"
    return parse


def add_number(parser, *flags: str, bound: Bound, **kwargs) -> argparse.Action:
    """``parser.add_argument(*flags, type=...)`` for a number within ``bound``."""
    return parser.add_argument(*flags, type=number_type(bound, flags[0]), **kwargs)


def field_bound(cls: type, name: str) -> Bound:
    """The bound declared on field ``name`` of the dataclass ``cls`` (for a flag that sets it)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["bound"]
