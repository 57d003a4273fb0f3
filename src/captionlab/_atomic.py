"""Atomic file writes (bytes, JSON), written once for every package (standard library only).

A crash at any point leaves the target as it was: the new content goes to a temporary
file in the same folder, is flushed and fsynced, gets the usual permissions (``mkstemp``
makes files private), and is renamed over the target; the folder is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "fsync_path", "write_json"]


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder by path (ignored where the platform refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception,
    fsync it and rename it over ``path``. On an exception the temporary file is removed.

    For writers that need a file name (h5py); :func:`atomic_write` is for file objects.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(folder)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int = 0o644
) -> Path:
    """Call ``write(fileobj)`` on a temporary binary file, then rename it over ``path``."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data), mode)


def _json_default(obj: Any) -> Any:
    """NumPy arrays and scalars (anything with ``tolist``) and paths, for :func:`write_json`."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON atomically: sorted keys (equal objects give equal bytes),
    NumPy values and paths converted, a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, default=_json_default)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))
