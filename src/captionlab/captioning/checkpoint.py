"""Checkpoints: data, never code.

A checkpoint is one ``.npz`` file (a zip of ``.npy`` arrays, written with NumPy and read
with ``allow_pickle=False``) holding:

* ``params/<name>``: the model parameters;
* ``__header__``: a UTF-8 JSON document stored as a uint8 array::

      {"format": "captionlab-checkpoint", "format_version": 1,
       "model": {"class": "CaptioningRNN", ...the model's config_dict()...},
       "vocab": {"idx_to_word": [...]} or {"word_to_idx": {...}},
       "solver_state": {...} or null, "extra": {...}}

* ``state/...`` and ``extra/...``: the arrays inside ``solver_state`` (optimizer moments,
  best parameters) and ``extra`` (e.g. a PCA basis). In the JSON they appear as
  ``{"__array__": "state/..."}``; everything else (epoch, histories, optimizer scalars, RNG
  state) is plain JSON.

Any captioner class listed in :data:`MODEL_CLASSES` can be stored: it provides
``config_dict()``, ``shapes_for(config, V)`` (the parameter shapes, checked against the file
before any model is built) and ``from_config(word_to_idx, config)``.

``extra`` is free for the caller (the CLI keeps the feature-extractor configuration there:
backbone, image size, pooling, PCA). Writes are atomic: a temporary file in the same folder,
flushed and fsynced, then renamed over the target, so a crash leaves the old file intact.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from captionlab._atomic import atomic_write
from captionlab.captioning.model import CaptioningRNN
from captionlab.errors import CheckpointError

#: The captioner classes a checkpoint may hold, by the name stored in ``model.class``.
MODEL_CLASSES: dict[str, type] = {"CaptioningRNN": CaptioningRNN}

FORMAT = "captionlab-checkpoint"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"
_ARRAY_REF = "__array__"


# ---------------------------------------------------------------------------- writing
def _flatten(obj: Any, prefix: str, arrays: dict[str, np.ndarray], where: str) -> Any:
    """Copy ``obj`` into JSON-able form, moving arrays into ``arrays`` under ``prefix``."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: only numeric arrays can be checkpointed, got {obj.dtype}")
        arrays[prefix] = obj
        return {_ARRAY_REF: prefix}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str) or "/" in key:
                raise TypeError(f"{where}: keys must be strings without '/', got {key!r}")
            out[key] = _flatten(value, f"{prefix}/{key}", arrays, f"{where}.{key}")
        return out
    if isinstance(obj, list | tuple):
        return [_flatten(v, f"{prefix}/{i}", arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")


def _vocab_json(model) -> dict:
    V = len(model.word_to_idx)
    if sorted(model.idx_to_word) == list(range(V)):
        return {"idx_to_word": [model.idx_to_word[i] for i in range(V)]}
    return {"word_to_idx": dict(model.word_to_idx)}


def save_checkpoint(
    path: str | os.PathLike,
    model,
    solver_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` (and optionally the solver's state) to ``path`` atomically.

    Args:
        path: target file, conventionally ``*.npz`` (written exactly there).
        model: the captioner (a class of :data:`MODEL_CLASSES`) whose parameters, config
            and vocabulary to store.
        solver_state: JSON-able dict whose leaves may be numeric NumPy arrays (as returned by
            ``CaptioningSolver.state_dict()``), or ``None``.
        extra: JSON-able dict kept verbatim (e.g. the feature-extractor configuration).

    Returns:
        the path written.
    """
    name = type(model).__name__
    if MODEL_CLASSES.get(name) is not type(model):
        raise TypeError(f"cannot checkpoint a {name}: not one of {sorted(MODEL_CLASSES)}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.params.items():
        arrays[f"params/{name}"] = np.ascontiguousarray(value)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"class": type(model).__name__, **model.config_dict()},
        "vocab": _vocab_json(model),
        "solver_state": None
        if solver_state is None
        else _flatten(solver_state, "state", arrays, "solver_state"),
        "extra": _flatten(extra or {}, "extra", arrays, "extra"),
    }
    blob = json.dumps(header, allow_nan=True).encode("utf-8")
    arrays[HEADER_KEY] = np.frombuffer(blob, dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return Path(path)


# ---------------------------------------------------------------------------- reading
def _fail(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


def _unflatten(obj: Any, arrays: dict[str, np.ndarray], path) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_REF}:
            key = obj[_ARRAY_REF]
            if key not in arrays:
                raise _fail(path, f"header refers to array {key!r}, which the file lacks")
            return arrays[key]
        return {k: _unflatten(v, arrays, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays, path) for v in obj]
    return obj


def read_checkpoint_arrays(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate the container: ``(header, arrays)``; no model is built.

    Raises:
        CheckpointError: one line naming the file: missing, truncated, not a captionlab
            checkpoint, holding pickled objects, or of a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not a .npz checkpoint (truncated, or not a zip archive at all)")
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                arrays[name] = npz[name]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _fail(
                path,
                f"array {name!r} holds pickled Python objects; captionlab checkpoints "
                "hold numeric arrays only and are never unpickled",
            ) from None
        raise _fail(path, f"not a readable .npz checkpoint (truncated or corrupt): {exc}") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise _fail(path, f"not a readable .npz checkpoint (truncated or corrupt): {exc}") from None
    if HEADER_KEY not in arrays:
        shown = ", ".join(sorted(arrays)[:5]) or "none"
        raise _fail(
            path, f"not a captionlab checkpoint: no '{HEADER_KEY}' entry (entries: {shown})"
        )
    raw = arrays.pop(HEADER_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _fail(path, f"'{HEADER_KEY}' must be a 1-D uint8 array, got {raw.dtype} {raw.shape}")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"'{HEADER_KEY}' is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise _fail(path, f"not a captionlab checkpoint: format must be {FORMAT!r}, got {got!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _fail(path, f"field 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"checkpoint format version {version} is newer than this captionlab reads "
            f"(up to {FORMAT_VERSION}); upgrade captionlab",
        )
    for name, value in arrays.items():
        if value.dtype.hasobject or value.dtype.kind not in "biuf":
            raise _fail(path, f"array {name!r} must be numeric, got dtype {value.dtype}")
    return header, arrays


def _vocabulary(path, header: dict) -> dict[str, int]:
    vocab = header.get("vocab") or {}
    if isinstance(vocab.get("idx_to_word"), list):
        return {w: i for i, w in enumerate(vocab["idx_to_word"])}
    if isinstance(vocab.get("word_to_idx"), dict):
        return {str(w): int(i) for w, i in vocab["word_to_idx"].items()}
    raise _fail(path, "field 'vocab' must hold 'idx_to_word' (list) or 'word_to_idx' (dict)")


def _model_from(path, header: dict, arrays: dict[str, np.ndarray]):
    spec = header.get("model")
    cls = MODEL_CLASSES.get(spec.get("class")) if isinstance(spec, dict) else None
    if cls is None:
        got = spec.get("class") if isinstance(spec, dict) else spec
        raise _fail(
            path, f"field 'model.class' must be one of {sorted(MODEL_CLASSES)}, got {got!r}"
        )
    config = {k: v for k, v in spec.items() if k != "class"}
    word_to_idx = _vocabulary(path, header)
    try:
        shapes = cls.shapes_for(config, len(word_to_idx))
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"field 'model' is incomplete or malformed: {exc}") from None
    for name, shape in shapes.items():
        key = f"params/{name}"
        if key not in arrays:
            raise _fail(path, f"array {key!r} is missing")
        value = arrays[key]
        if value.shape != shape:
            raise _fail(path, f"array {key!r} must have shape {shape}, got {value.shape}")
        if value.dtype.kind != "f":
            raise _fail(path, f"array {key!r} must be floating point, got {value.dtype}")
    try:
        model = cls.from_config(word_to_idx, config)
    except (ValueError, TypeError) as exc:
        raise _fail(path, f"field 'model': {exc}") from None
    for name in shapes:
        model.params[name] = arrays[f"params/{name}"].astype(model.dtype, copy=False)
    return model


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, state)``: the captioner (its class from ``model.class``) with the stored
        parameters, and a dict
        with ``format_version``, ``model_config`` (dict), ``solver_state`` (dict with its
        arrays restored, or ``None``) and ``extra`` (dict).

    Raises:
        CheckpointError: one line naming the file and what is wrong.
    """
    header, arrays = read_checkpoint_arrays(path)
    model = _model_from(path, header, arrays)
    state = {
        "format_version": header["format_version"],
        "model_config": model.config_dict(),
        "solver_state": _unflatten(header.get("solver_state"), arrays, path),
        "extra": _unflatten(header.get("extra") or {}, arrays, path),
    }
    return model, state
