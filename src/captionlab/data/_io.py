"""Small file helpers for the data package: JSON reading and field checks with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captionlab.errors import DataError

__all__ = ["file_sha256", "h5_dataset", "h5_strings", "read_json", "require"]


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read 1 MB at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a dataset") from None


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
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(
            f"{path}: field '{field}' must be {names}, got {type(value).__name__} {value!r:.60}"
        )
    return value


# -- HDF5 -----------------------------------------------------------------------------------------
#: Deflate packs at most ~1032:1; a dataset claiming more than this ratio of its stored bytes
#: is unwritten or hostile, and reading it would allocate memory the file never held.
_MAX_RATIO = 1100


def h5_dataset(f, key: str, path: Path, *, kinds: str = "biuf", ndim: int | None = None):
    """``f[key]`` checked before it is read: a dataset (not a group), of dtype kind in
    ``kinds`` (``"S"`` for strings), of ``ndim`` dimensions, holding the bytes it declares
    (so reading it cannot allocate more than the file supports). DataError names the file."""
    import h5py

    try:
        ds = f.get(key)
    except (KeyError, ValueError, OSError, RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: dataset '{key}' cannot be opened ({exc})") from None
    if ds is None:
        have = sorted(f.keys()) if hasattr(f, "keys") else []
        raise DataError(f"{path}: missing dataset '{key}' (has {have[:8]})")
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{key}' must be a dataset, got a {type(ds).__name__}")
    dtype = ds.dtype
    is_string = h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU"
    kind = "S" if is_string else dtype.kind
    if kind not in kinds or (dtype.hasobject and not is_string):
        want = {"S": "strings", "f": "floats", "iu": "integers"}.get(kinds, f"kind {kinds!r}")
        raise DataError(f"{path}: dataset '{key}' must hold {want}, got {dtype}")
    if ndim is not None and ds.ndim != ndim:
        raise DataError(f"{path}: dataset '{key}' must be {ndim}-D, got shape {ds.shape}")
    vlen = dtype.kind == "O"  # variable-length strings live in a heap: 1 byte each at least
    declared = int(ds.size) * (1 if vlen else dtype.itemsize)
    if declared:
        try:
            stored = ds.id.get_storage_size()
            filters = ds.id.get_create_plist().get_nfilters()
        except (OSError, RuntimeError, ValueError) as exc:
            raise DataError(f"{path}: dataset '{key}' cannot be read ({exc})") from None
        enough = stored >= declared if not (filters or vlen) else stored * _MAX_RATIO >= declared
        if not enough:
            raise DataError(
                f"{path}: dataset '{key}' declares shape {ds.shape} of {dtype} but the file "
                f"stores only {stored} bytes of it (unwritten, truncated or hostile)"
            )
    return ds


def h5_strings(ds) -> list[str]:
    """A 1-D string dataset -> list of str (UTF-8; a bad byte sequence is a DataError)."""
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[()]]
    except UnicodeDecodeError as exc:
        raise DataError(f"{ds.file.filename}: dataset '{ds.name}' is not UTF-8 ({exc})") from None
