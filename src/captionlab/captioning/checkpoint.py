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

Reading trusts nothing: see :func:`load_checkpoint` (the zip directory and each array's
``.npy`` header are checked against the JSON header and size limits before anything is
read or built; only the expected arrays are ever read).

``extra`` is free for the caller (the CLI keeps the feature-extractor configuration there:
backbone, image size, pooling, PCA). Writes are atomic: a temporary file in the same folder,
flushed and fsynced, then renamed over the target, so a crash leaves the old file intact.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from captionlab._atomic import atomic_write
from captionlab.captioning._npz import NpzReader
from captionlab.captioning.attention_model import AttentionCaptioner
from captionlab.captioning.model import CaptioningRNN
from captionlab.captioning.transformer_model import CaptioningTransformer
from captionlab.errors import CheckpointError

#: The captioner classes a checkpoint may hold, by the name stored in ``model.class``.
MODEL_CLASSES: dict[str, type] = {
    "CaptioningRNN": CaptioningRNN,
    "AttentionCaptioner": AttentionCaptioner,
    "CaptioningTransformer": CaptioningTransformer,
}

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
#: The most parameters a checkpoint may hold or ``captionlab train`` may build (400 MB as
#: float32). Checked from the header, before any array is read or any model is built.
MAX_PARAMETERS = 100_000_000
#: The most bytes of the JSON header (vocabulary, config, histories).
MAX_HEADER_BYTES = 64 << 20
#: The most bytes of the arrays in ``extra`` (e.g. a PCA basis: 6400 x 512 floats is 13 MB).
MAX_EXTRA_BYTES = 256 << 20
#: Solver-state arrays (optimizer moments, best parameters) may hold this many times the
#: parameters' bytes (Adam's two moments and the best copy are three).
MAX_STATE_FACTOR = 4


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    """How many numbers parameters of these shapes hold."""
    return sum(math.prod(shape) for shape in shapes.values())


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


def _references(obj: Any, prefix: str, path, out: list[str]) -> list[str]:
    """The array names ``obj`` (a JSON header part) refers to; each must start with ``prefix``."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if set(item) == {_ARRAY_REF}:
                key = item[_ARRAY_REF]
                if not isinstance(key, str) or not key.startswith(prefix):
                    raise _fail(
                        path, f"header refers to array {key!r:.80}; expected a name under {prefix}"
                    )
                out.append(key)
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _read_header(npz: NpzReader, path) -> dict:
    if HEADER_KEY not in npz.names:
        shown = ", ".join(sorted(npz.names)[:5]) or "none"
        raise _fail(
            path, f"not a captionlab checkpoint: no '{HEADER_KEY}' entry (entries: {shown})"
        )
    info = npz.info(HEADER_KEY)
    if info.dtype != np.uint8 or len(info.shape) != 1:
        raise _fail(
            path, f"'{HEADER_KEY}' must be a 1-D uint8 array, got {info.dtype} {info.shape}"
        )
    if info.nbytes > MAX_HEADER_BYTES:
        raise _fail(
            path, f"'{HEADER_KEY}' of {info.nbytes} bytes exceeds the limit of {MAX_HEADER_BYTES}"
        )
    raw = npz.read(HEADER_KEY)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(path, f"'{HEADER_KEY}' is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise _fail(
            path, f"not a captionlab checkpoint: format must be {FORMAT!r}, got {got!r:.80}"
        )
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, f"field 'format_version' must be a positive integer, got {version!r:.80}")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"checkpoint format version {version} is newer than this captionlab reads "
            f"(up to {FORMAT_VERSION}); upgrade captionlab",
        )
    for key in ("extra", "solver_state"):
        if header.get(key) is not None and not isinstance(header[key], dict):
            raise _fail(path, f"field {key!r} must be an object, got {type(header[key]).__name__}")
    return header


def _vocabulary(path, header: dict) -> dict[str, int]:
    vocab = header.get("vocab")
    vocab = vocab if isinstance(vocab, dict) else {}
    words = vocab.get("idx_to_word")
    if isinstance(words, list):
        if not all(isinstance(w, str) for w in words) or len(set(words)) != len(words):
            raise _fail(path, "field 'vocab.idx_to_word' must be a list of distinct words")
        return {w: i for i, w in enumerate(words)}
    mapping = vocab.get("word_to_idx")
    if isinstance(mapping, dict):
        ids = list(mapping.values())
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) or len(
            set(ids)
        ) != len(ids):
            raise _fail(path, "field 'vocab.word_to_idx' must map words to distinct ids >= 0")
        return dict(mapping)
    raise _fail(path, "field 'vocab' must hold 'idx_to_word' (list) or 'word_to_idx' (dict)")


def _model_spec(path, header: dict) -> tuple[type, dict, dict[str, int], dict]:
    """The class, config, vocabulary and parameter shapes a header describes, checked
    against :data:`MAX_PARAMETERS` (nothing is allocated)."""
    spec = header.get("model")
    cls = MODEL_CLASSES.get(spec.get("class")) if isinstance(spec, dict) else None
    if cls is None:
        got = spec.get("class") if isinstance(spec, dict) else spec
        raise _fail(
            path, f"field 'model.class' must be one of {sorted(MODEL_CLASSES)}, got {got!r:.80}"
        )
    config = {k: v for k, v in spec.items() if k != "class"}
    word_to_idx = _vocabulary(path, header)
    try:
        shapes = cls.shapes_for(config, len(word_to_idx))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise _fail(path, f"field 'model' is incomplete or malformed: {exc}") from None
    if not all(
        isinstance(n, int) and n >= 0 for shape in shapes.values() for n in shape
    ):  # pragma: no cover - a registered class returning bad shapes is a bug
        raise TypeError(f"{cls.__name__}.shapes_for returned {shapes}")
    count = parameter_count(shapes)
    if count > MAX_PARAMETERS:
        sizes = ", ".join(f"{k}={v!r:.20}" for k, v in config.items() if k.endswith("_dim"))
        raise _fail(
            path,
            f"field 'model' ({sizes}, {len(word_to_idx)} words) describes {count:,} parameters, "
            f"past the limit of {MAX_PARAMETERS:,}; refused before reading any array",
        )
    return cls, config, word_to_idx, shapes


def _check_arrays(path, npz: NpzReader, header: dict, shapes: dict) -> tuple[list, list]:
    """Check every array's header (shape, dtype, size) before any is read; return the names
    the header's ``extra`` and ``solver_state`` refer to."""
    param_bytes = 0
    for name, shape in shapes.items():
        key = f"params/{name}"
        info = npz.info(key)
        if info.shape != tuple(shape):
            raise _fail(path, f"array {key!r} must have shape {tuple(shape)}, got {info.shape}")
        if info.dtype.kind != "f":
            raise _fail(path, f"array {key!r} must be floating point, got {info.dtype}")
        param_bytes += info.nbytes
    extra = _references(header.get("extra") or {}, "extra/", path, [])
    state = _references(header.get("solver_state") or {}, "state/", path, [])
    expected = {HEADER_KEY, *(f"params/{n}" for n in shapes), *extra, *state}
    unexpected = sorted(npz.names - expected)
    if unexpected:
        raise _fail(
            path,
            f"holds entries its header does not mention ({', '.join(map(repr, unexpected[:3]))}"
            f"{', ...' if len(unexpected) > 3 else ''}); a captionlab checkpoint holds only its "
            "model's parameters and the arrays its header refers to (none was read)",
        )
    limits = (
        (extra, MAX_EXTRA_BYTES, "extra"),
        (state, MAX_STATE_FACTOR * param_bytes + (1 << 20), "solver_state"),
    )
    for names, limit, what in limits:
        total = sum(npz.info(n).nbytes for n in set(names))
        if total > limit:
            raise _fail(
                path,
                f"the arrays of field {what!r} hold {total:,} bytes, past the limit of {limit:,}",
            )
    return extra, state


def _open(path: str | os.PathLike) -> NpzReader:
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not a .npz checkpoint (truncated, or not a zip archive at all)")
    return NpzReader(path, CheckpointError)


def read_checkpoint_arrays(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate the container: ``(header, arrays)``; no model is built.

    Every array's shape, dtype and size is checked against the header (and the limits
    above) before any is read; parameters and arrays must be finite.

    Raises:
        CheckpointError: one line naming the file: missing, truncated, not a captionlab
            checkpoint, holding pickled objects, too large, or of a newer format version.
    """
    with _open(path) as npz:
        header = _read_header(npz, path)
        _, _, _, shapes = _model_spec(path, header)
        extra, state = _check_arrays(path, npz, header, shapes)
        names = [*(f"params/{n}" for n in shapes), *extra, *state]
        return header, {name: npz.read(name, finite=True) for name in names}


def load_checkpoint(path: str | os.PathLike, *, solver_state: bool = True) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    The zip directory and every array's ``.npy`` header are read first and checked against
    the JSON header: the model's parameter shapes (its class's ``shapes_for``), at most
    :data:`MAX_PARAMETERS` of them, no entry the header does not mention, the arrays of
    ``extra`` and ``solver_state`` within their limits. Only then is the model built and
    each array read, into exactly the memory its header announced; a NaN or infinity in a
    parameter is refused.

    Args:
        solver_state: read the optimizer state too (to resume training); ``False`` (using a
            model) skips those arrays, and ``state["solver_state"]`` is ``None``.

    Returns:
        ``(model, state)``: the captioner (its class from ``model.class``) with the stored
        parameters, in evaluation mode when it has one (dropout off), and a dict
        with ``format_version``, ``model_config`` (dict), ``solver_state`` (dict with its
        arrays restored, or ``None``) and ``extra`` (dict).

    Raises:
        CheckpointError: one line naming the file and what is wrong.
    """
    with _open(path) as npz:
        header = _read_header(npz, path)
        cls, config, word_to_idx, shapes = _model_spec(path, header)
        extra_names, state_names = _check_arrays(path, npz, header, shapes)
        try:
            model = cls.from_config(word_to_idx, config)
        except (ValueError, TypeError) as exc:
            raise _fail(path, f"field 'model': {exc}") from None
        for name in shapes:  # one array at a time replaces the initial one
            model.params[name] = npz.read(f"params/{name}", finite=True).astype(
                model.dtype, copy=False
            )
        names = extra_names + (state_names if solver_state else [])
        arrays = {name: npz.read(name, finite=True) for name in dict.fromkeys(names)}
    try:
        saved_state = _unflatten(header.get("solver_state"), arrays, path) if solver_state else None
        extra = _unflatten(header.get("extra") or {}, arrays, path)
    except RecursionError:
        raise _fail(path, "its JSON header is nested too deeply") from None
    if hasattr(model, "eval"):
        model.eval()  # a loaded model is used (dropout off); .train() to train it further
    state = {
        "format_version": header["format_version"],
        "model_config": model.config_dict(),
        "solver_state": saved_state,
        "extra": extra,
    }
    return model, state
