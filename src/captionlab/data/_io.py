"""Small file helpers for the data package: JSON reading and field checks with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captionlab.errors import DataError

__all__ = ["read_json", "require"]


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a JSON file)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def require(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    """Return ``obj[key]``, checking it exists and has type ``kind``.

    ``where`` names the enclosing field (``"images[3]"``) so the message reads
    ``dataset.json: field 'images[3].filename' must be str, got int``.
    """
    field = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: field '{where or '<root>'}' must be an object, got {type(obj).__name__}"
        )
    if key not in obj:
        raise DataError(f"{path}: missing field '{field}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(
            f"{path}: field '{field}' must be {names}, got {type(value).__name__} {value!r:.60}"
        )
    return value
