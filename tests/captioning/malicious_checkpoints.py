"""Hostile checkpoints, small on disk: a zip bomb beside the arrays, headers that claim huge
models, array headers that claim huge shapes. Used by the tests and runnable on its own:

    python tests/captioning/malicious_checkpoints.py OUT_DIR   # writes them, prints names

Deflate streams of zeros are built by repetition (after a full flush, deflating the same
chunk gives the same bytes) and their CRC by zlib's combine, so a 6 GB entry takes a
second to write and 6 MB of disk.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from captionlab.captioning import CaptioningRNN
from captionlab.captioning.checkpoint import save_checkpoint

_CHUNK = 1 << 24


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and len(B) (zlib's crc32_combine)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _zeros_shift(n: int) -> list[int]:
    """The GF(2) matrix that appends ``n`` zero bytes to a CRC-32 (column per bit)."""
    return [crc32_combine(1 << i, 0, n) for i in range(32)]


def write_zeros_entry(zf: zipfile.ZipFile, name: str, n_zeros: int, prefix: bytes = b"") -> None:
    """Add entry ``name`` = ``prefix`` + ``n_zeros`` zero bytes, deflated, to ``zf``
    (a multiple of 16 MB of zeros; written without deflating them one by one)."""
    assert n_zeros % _CHUNK == 0
    chunk = bytes(_CHUNK)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(prefix + chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    body = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)  # the same for every chunk
    crc_chunk = zlib.crc32(chunk)
    shift = _zeros_shift(_CHUNK)
    crc = zlib.crc32(prefix + chunk)
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as w:
        # zipfile's own writer, told the sizes and CRC instead of deflating every byte.
        w._fileobj.write(head)
        w._compress_size += len(head)
        for _ in range(n_zeros // _CHUNK - 1):
            w._fileobj.write(body)
            w._compress_size += len(body)
            crc = _gf2_times(shift, crc) ^ crc_chunk  # crc32_combine(crc, crc_chunk, _CHUNK)
        w._file_size = len(prefix) + n_zeros
        w._crc = crc
        w._compressor = comp  # close() writes its final block


def _small_checkpoint(path: Path) -> Path:
    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}
    model = CaptioningRNN(vocab, input_dim=8, wordvec_dim=4, hidden_dim=4, cell_type="lstm", seed=0)
    return save_checkpoint(path, model)


def _rewrite(src: Path, dst: Path, header_change=None, skip=()) -> zipfile.ZipFile:
    """An open zip at ``dst``: ``src``'s entries (header edited by ``header_change``)."""
    out = zipfile.ZipFile(dst, "w")
    with zipfile.ZipFile(src) as zin:
        for item in zin.infolist():
            if item.filename in skip:
                continue
            data = zin.read(item.filename)
            if item.filename == "__header__.npy" and header_change is not None:
                header = json.loads(np.load(io.BytesIO(data)).tobytes())
                header_change(header)
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(header).encode(), np.uint8))
                data = buf.getvalue()
            out.writestr(item, data)
    return out


def _npy_prefix(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_all(out: Path, bomb_gb: int = 6) -> dict[str, Path]:
    """Every hostile checkpoint of issue 12 (and a few more), by name."""
    out.mkdir(parents=True, exist_ok=True)
    good = _small_checkpoint(out / "good.npz")
    made = {"good": good}

    # 1. A zip bomb beside the arrays: an extra entry that unpacks to `bomb_gb` GB.
    path = out / "zip_bomb_entry.npz"
    with _rewrite(good, path) as zf:
        write_zeros_entry(zf, "padding.npy", bomb_gb << 30, _npy_prefix("<f4", (bomb_gb << 28,)))
    made["zip_bomb_entry"] = path

    # 2. The header claims hidden_dim 15000 (the old reader built that model: past 8 GB).
    path = out / "hidden_15000.npz"
    _rewrite(good, path, lambda h: h["model"].update(hidden_dim=15000)).close()
    made["hidden_15000"] = path

    # 3. hidden_dim 200000 (the old reader ended in a NumPy memory traceback).
    path = out / "hidden_200000.npz"
    _rewrite(good, path, lambda h: h["model"].update(hidden_dim=200000)).close()
    made["hidden_200000"] = path

    # 4. A parameter whose own .npy header claims 4 G floats, its data a deflated bomb.
    path = out / "param_bomb.npz"
    with _rewrite(good, path, skip={"params/W_vocab.npy"}) as zf:
        n = 4 << 30  # 4 GiB of float32 zeros
        write_zeros_entry(zf, "params/W_vocab.npy", n, _npy_prefix("<f4", (n // 4,)))
    made["param_bomb"] = path

    # 5. A consistent model past the parameter limit, its arrays deflated zeros: the header
    #    says hidden_dim 8192 (an LSTM: 8192 x 32768 recurrent weights, 1 GiB).
    H, W, D, V = 8192, 4, 8, 6
    shapes = {
        "W_embed": (V, W), "W_proj": (D, H), "b_proj": (H,), "Wx": (W, 4 * H),
        "Wh": (H, 4 * H), "b": (4 * H,), "W_vocab": (H, V), "b_vocab": (V,),
    }  # fmt: skip
    path = out / "consistent_too_large.npz"
    names = {f"params/{k}.npy" for k in shapes}
    with _rewrite(good, path, lambda h: h["model"].update(hidden_dim=H), skip=names) as zf:
        for key, shape in shapes.items():
            nbytes = 4 * int(np.prod(shape))
            if nbytes % _CHUNK == 0:
                write_zeros_entry(zf, f"params/{key}.npy", nbytes, _npy_prefix("<f4", shape))
            else:
                buf = io.BytesIO()
                np.save(buf, np.zeros(shape, np.float32))
                zf.writestr(f"params/{key}.npy", buf.getvalue())
    made["consistent_too_large"] = path
    return made


if __name__ == "__main__":
    for name, p in write_all(Path(sys.argv[1])).items():
        print(f"{name}: {p} ({p.stat().st_size:,} bytes)")
