"""Reading a ``.npz`` file without trusting it: the zip directory first, then each ``.npy``
header, then only the arrays the caller asks for, each checked before any memory is given.

``np.load`` reads a whole entry to learn its size, and ``read_array`` allocates whatever the
header claims. Here a caller sees an array's shape, dtype and size (:meth:`NpzReader.info`)
and decides; :meth:`NpzReader.read` then allocates exactly that and fills it from the entry
in 16 MB pieces, so a lying entry (longer, shorter, another shape, a failed CRC) is an error
and memory is never more than the array asked for. Entries nobody asks for are never read,
so a small file holding a zip bomb costs nothing.

Every failure raises the caller's error class with a message that starts with the file.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ArrayInfo", "NpzReader"]

_CHUNK = 16 << 20  # bytes read at a time
_MAX_NPY_HEADER = 1 << 16  # a .npy header is a short Python dict literal

# What a corrupt or hostile zip makes the standard library raise.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    RuntimeError,  # encrypted entries
    NotImplementedError,  # unknown compression methods
    struct.error,
    OverflowError,
    UnicodeDecodeError,
    IndexError,
    TypeError,
    SyntaxError,  # a .npy header that is not a Python literal
)


@dataclass(frozen=True)
class ArrayInfo:
    """What an entry's ``.npy`` header says: shape, dtype, order, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes of magic + header before the data

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class NpzReader:
    """``with NpzReader(path, Error) as npz: npz.names, npz.info(name), npz.read(name)``.

    Failures raise ``error(f"{path}: ...")``. Names are the array names
    (``"params/W_embed"``), without ``.npy``.
    """

    def __init__(self, path: str | Path, error: type[Exception]):
        self.path = Path(path)
        self.error = error
        self._infos: dict[str, ArrayInfo] = {}
        try:
            self._zip = zipfile.ZipFile(self.path)
            entries = self._zip.infolist()
        except _ZIP_ERRORS as exc:
            raise self._fail(f"not a readable .npz archive (truncated or corrupt): {exc}") from None
        self._entries = {
            e.filename[: -len(".npy")]: e
            for e in entries
            if e.filename.endswith(".npy") and not e.is_dir()
        }

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> set[str]:
        return set(self._entries)

    def info(self, name: str) -> ArrayInfo:
        """The header of array ``name`` (read once; only the header is read)."""
        if name in self._infos:
            return self._infos[name]
        entry = self._entries.get(name)
        if entry is None:
            raise self._fail(f"array {name!r} is missing")
        try:
            with self._zip.open(entry) as f:
                info = self._read_header(f, name)
        except self.error:
            raise
        except _ZIP_ERRORS as exc:
            raise self._fail(f"array {name!r} cannot be read (corrupt entry): {exc}") from None
        if entry.file_size != info.offset + info.nbytes:
            raise self._fail(
                f"array {name!r}: its header says {info.dtype} {info.shape} ({info.nbytes} "
                f"bytes) but the entry holds {entry.file_size - info.offset} bytes of data"
            )
        self._infos[name] = info
        return info

    def read(self, name: str, finite: bool = False) -> np.ndarray:
        """Array ``name``: exactly the memory its (already checked) header says, filled from
        the entry piece by piece. ``finite``: a NaN or infinity in a float array is an error."""
        info = self.info(name)
        shape = info.shape[::-1] if info.fortran else info.shape
        out = np.empty(shape, dtype=info.dtype)
        flat = out.reshape(-1)
        view = memoryview(flat.view(np.uint8)) if info.nbytes else memoryview(b"")
        try:
            with self._zip.open(self._entries[name]) as f:
                f.read(info.offset)
                done = 0
                while done < info.nbytes:
                    got = f.readinto(view[done : done + _CHUNK])
                    if not got:
                        raise self._fail(
                            f"array {name!r} is truncated ({done} of {info.nbytes} bytes)"
                        )
                    done += got
                if f.read(1):
                    raise self._fail(f"array {name!r} has data past its header's shape")
        except self.error:
            raise
        except _ZIP_ERRORS as exc:
            raise self._fail(f"array {name!r} cannot be read (corrupt entry): {exc}") from None
        if finite and info.dtype.kind == "f":
            step = max(1, _CHUNK // max(info.dtype.itemsize, 1))
            for start in range(0, flat.size, step):
                part = flat[start : start + step]
                if not np.isfinite(part).all():
                    bad = int(np.size(part) - np.count_nonzero(np.isfinite(part)))
                    raise self._fail(
                        f"array {name!r} holds non-finite values (NaN or infinity; {bad} or "
                        "more): its model diverged before it was saved"
                    )
        return out.T if info.fortran else out

    # -- internals ----------------------------------------------------------------------------
    def _fail(self, message: str) -> Exception:
        return self.error(f"{self.path}: {message}")

    def _read_header(self, f, name: str) -> ArrayInfo:
        magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise self._fail(f"array {name!r} is not a .npy array (no NumPy magic)")
        version = tuple(f.read(2))
        if version == (1, 0):
            (length,) = struct.unpack("<H", f.read(2))
            offset = 10 + length
        elif version in ((2, 0), (3, 0)):
            (length,) = struct.unpack("<I", f.read(4))
            offset = 12 + length
        else:
            raise self._fail(f"array {name!r}: unknown .npy format version {version}")
        if length > _MAX_NPY_HEADER:
            raise self._fail(f"array {name!r}: .npy header of {length} bytes is too long")
        text = f.read(length)
        if len(text) != length:
            raise self._fail(f"array {name!r} is truncated (inside its .npy header)")
        encoding = "utf-8" if version == (3, 0) else "latin1"
        header = _parse_header(text.decode(encoding))
        if header is None:
            raise self._fail(f"array {name!r}: malformed .npy header {text[:80]!r}")
        descr, fortran, shape = header
        try:
            dtype = np.lib.format.descr_to_dtype(descr)
        except (TypeError, ValueError, KeyError, IndexError, RecursionError) as exc:
            raise self._fail(f"array {name!r}: unknown dtype {descr!r:.80} ({exc})") from None
        if dtype.hasobject or dtype.kind not in "biuf":
            raise self._fail(
                f"array {name!r} must be numeric, got dtype {dtype} (pickled Python objects "
                "and records are never read)"
            )
        return ArrayInfo(shape, dtype, fortran, offset)


def _parse_header(text: str) -> tuple[object, bool, tuple[int, ...]] | None:
    """``{'descr': ..., 'fortran_order': ..., 'shape': (...)}`` -> its three values, or None.

    Parsed with :func:`ast.literal_eval` (a literal, never code), as NumPy does.
    """
    import ast

    try:
        d = ast.literal_eval(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        return None
    shape, fortran = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not isinstance(fortran, bool):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        return None
    return d["descr"], fortran, shape
