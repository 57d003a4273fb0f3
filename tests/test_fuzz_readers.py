"""Property-based fuzz of every reader of user files: datasets (Karpathy, COCO), the cs231n
folder, feature stores, checkpoints, configs and images.

The property: whatever the file holds, the reader returns a result or raises a
``UserError`` (one line naming the file), never another exception; and the memory it
allocates while reading (measured with ``tracemalloc``, which sees NumPy's and h5py's
arrays) stays under :data:`MEMORY_LIMIT`. Inputs are near-valid documents with fields
replaced by junk, byte-level corruptions of valid files, and files that declare huge
shapes they do not hold.

Examples are drawn deterministically (``derandomize``), so ``make test`` is repeatable.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captionlab.captioning import CaptioningRNN, load_checkpoint
from captionlab.captioning.checkpoint import save_checkpoint
from captionlab.cli._options import load_json_config
from captionlab.data import Vocabulary, load_coco_data, load_dataset
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.features import FeatureStore, FeatureStoreWriter
from captionlab.data.pca import fit_pca
from captionlab.errors import UserError
from captionlab.runs.config import TrainConfig
from captionlab.vision.images import load_image

MEMORY_LIMIT = 64 << 20  # bytes any one read may allocate: every file here is tiny

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def bounded(read, *args, **kwargs):
    """``read(*args)``: its result, or None when it raised a UserError; any other exception
    propagates (a failure). Asserts the allocation peak stays under MEMORY_LIMIT."""
    tracemalloc.start()
    try:
        return read(*args, **kwargs)
    except UserError as exc:
        assert "\n" not in str(exc), str(exc)
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{read.__name__} allocated {peak / 2**20:.0f} MB"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# -- junk ------------------------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def maybe(valid):
    """Mostly a valid value (7 in 8), sometimes junk."""
    return st.one_of(*[valid] * 7, junk)


names = st.sampled_from(
    [
        *["a.png", "sub/b.png", "a.png", "sub/b.png", "./a.png", "sub//b.png", "missing.png"],
        *["", ".", "../x.png", "/etc/passwd", "a/../../b", "C:/w", "n\x00ul", "..\\x"],
    ]
)
splits = st.sampled_from(["train", "val", "test", "restval"] * 3 + ["dev", ""])
words = st.text(alphabet="abc <>.,'-", max_size=15)

sentence = st.one_of(
    *[st.fixed_dictionaries({"raw": maybe(words)}, optional={"tokens": maybe(st.lists(words))})]
    * 3,
    st.fixed_dictionaries({"tokens": maybe(st.lists(maybe(words), max_size=4))}),
    junk,
)


@st.composite
def karpathy(draw):
    """A Karpathy dataset.json: image i has id i (or junk), the rest mostly valid."""
    images = []
    for i in range(draw(st.integers(0, 4))):
        image = {
            "filename": draw(maybe(names)),
            draw(st.sampled_from(["imgid", "cocoid"])): draw(maybe(st.just(i) | st.just(str(i)))),
            "split": draw(maybe(splits)),
            "sentences": draw(maybe(st.lists(sentence, min_size=1, max_size=3))),
        }
        if draw(st.booleans()):
            image["filepath"] = draw(maybe(st.sampled_from(["", "sub", ".", "..", "/abs"])))
        if draw(st.integers(0, 7)) == 0:
            image["sentids"] = draw(junk)
        images.append(draw(maybe(st.just(image))))
    doc = {"images": draw(maybe(st.just(images)))}
    if draw(st.booleans()):
        doc["dataset"] = draw(maybe(st.sampled_from(["shapes", "flickr8k"])))
    return doc


@st.composite
def coco(draw):
    """A COCO captions_*.json: images with ids 0.. (or junk) and captions of those ids."""
    n = draw(st.integers(0, 4))
    images = [
        draw(
            maybe(
                st.just(
                    {
                        "id": draw(maybe(st.just(i) | st.just(str(i)))),
                        "file_name": draw(maybe(names)),
                    }
                )
            )
        )
        for i in range(n)
    ]
    annotations = [
        draw(
            maybe(
                st.just(
                    {
                        "image_id": draw(maybe(st.integers(0, max(n - 1, 0)))),
                        "caption": draw(maybe(words)),
                    }
                )
            )
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    return {
        "images": draw(maybe(st.just(images))),
        "annotations": draw(maybe(st.just(annotations))),
    }


def _write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


def _use_dataset(path: Path, root: Path, check: bool):
    ds = load_dataset(path, image_root=root, check_images=check)
    captions = ds.all_captions()
    vocab = Vocabulary.build(captions)
    vocab.encode(captions, max_length=8)
    for split in ("train", "val", "test"):
        ds.split(split)
    return ds


@settings(FUZZ, max_examples=150)
@given(doc=st.one_of(karpathy(), coco(), junk), check=st.booleans())
def test_caption_datasets(folder, doc, check):
    root = folder / "images"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "sub/b.png"):
        (root / name).write_bytes(b"x")
    ds = bounded(_use_dataset, _write_json(folder / "dataset.json", doc), root, check)
    if ds is not None:  # every image path stays inside the image root
        for r in ds.images:
            assert r.path.resolve().is_relative_to(root.resolve()), r.path


@FUZZ
@given(
    filename=names | st.text(max_size=12),
    filepath=st.sampled_from(["", "sub", ".", "..", "/abs", "sub/..", "~"]) | st.text(max_size=6),
    kind=st.sampled_from(["karpathy", "coco"]),
)
def test_dataset_paths_stay_inside_the_root(folder, filename, filepath, kind):
    if kind == "karpathy":
        image = {"filename": filename, "filepath": filepath, "imgid": 1, "split": "train",
                 "sentences": [{"raw": "a cat"}]}  # fmt: skip
        doc = {"images": [image]}
    else:
        doc = {"images": [{"id": 1, "file_name": f"{filepath}/{filename}"}],
               "annotations": [{"image_id": 1, "caption": "a cat"}]}  # fmt: skip
    root = folder / "root"
    ds = bounded(load_dataset, _write_json(folder / "paths.json", doc), root, check_images=False)
    if ds is not None:
        path = ds.images[0].path
        assert path.resolve().is_relative_to(root.resolve()) and path != root, path


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(0, 400))
def test_dataset_bytes(folder, data, cut):
    valid = json.dumps({"images": [{"filename": "a.png", "imgid": 1, "split": "train",
                                    "sentences": [{"raw": "a cat"}]}]}).encode()  # fmt: skip
    path = folder / "bytes.json"
    path.write_bytes(valid[:cut] + data)
    bounded(load_dataset, path, check_images=False)
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)  # nested past the recursion limit
    bounded(load_dataset, path, check_images=False)


# -- the cs231n coco_captioning folder ---------------------------------------------------------
array_spec = st.one_of(
    st.none(),  # missing
    st.tuples(
        st.sampled_from(["int32", "int64", "float32", "float64", "S3", "bool"]),
        st.lists(st.integers(0, 4), min_size=0, max_size=3),
        st.integers(-3, 9),
    ),
    st.just("huge"),  # declared (10**9, 4096) float32, nothing stored
    st.just("group"),
)


def _put(f: h5py.File, key: str, spec) -> None:
    if spec is None:
        return
    if spec == "huge":
        f.create_dataset(key, (10**9, 4096), np.float32, chunks=(1, 4096))
    elif spec == "group":
        f.create_group(key)
    else:
        dtype, shape, fill = spec
        f.create_dataset(key, data=np.full(shape, fill).astype(dtype))


@FUZZ
@given(
    arrays=st.fixed_dictionaries(
        {
            k: array_spec
            for k in (
                "train_captions",
                "train_image_idxs",
                "val_captions",
                "val_image_idxs",
                "train_features",
                "val_features",
            )
        }
    ),
    urls=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    vocab=st.one_of(
        st.just({"idx_to_word": ["<NULL>", "<START>", "<END>", "<UNK>", "a"]}),
        st.fixed_dictionaries({"idx_to_word": maybe(st.lists(maybe(words), max_size=6))}),
        junk,
    ),
    pca=st.booleans(),
)
def test_cs231n_folder(folder, arrays, urls, vocab, pca):
    base = folder / "coco_captioning"
    base.mkdir(exist_ok=True)
    suffix = "_pca" if pca else ""
    with h5py.File(base / "coco2014_captions.h5", "w") as f:
        for key in ("train_captions", "train_image_idxs", "val_captions", "val_image_idxs"):
            _put(f, key, arrays[key])
    for split, lines in zip(("train", "val"), urls, strict=True):
        with h5py.File(base / f"{split}2014_vgg16_fc7{suffix}.h5", "w") as f:
            _put(f, "features", arrays[f"{split}_features"])
        (base / f"{split}2014_urls.txt").write_text("".join(f"u{i}\n" for i in range(lines)))
    _write_json(base / "coco2014_vocab.json", vocab)
    bounded(load_coco_data, base, pca_features=pca)


# -- feature stores ----------------------------------------------------------------------------
def _valid_store(path: Path, pca: bool) -> Path:
    config = FeatureExtractorConfig(image_size=32, pca_dim=2 if pca else None)
    ids = ["a", "b", "c"]
    w = FeatureStoreWriter.open(path, config, ids, [f"/i/{i}.png" for i in ids], ["train"] * 3)
    w.write(np.arange(3), np.random.default_rng(0).standard_normal((3, 1280)).astype(np.float32))
    fit = w.fit_rows()[0]
    w.finalize(fit_pca(w.raw_rows(fit), 2) if pca else None, (len(fit), "train"))
    return path


def _use_store(path: Path):
    store = FeatureStore.open(path)
    store.features_for(store.image_ids)
    store.split_ids("train")
    store.fingerprint()
    return store


store_edit = st.one_of(
    st.tuples(
        st.just("delete"), st.sampled_from(["image_ids", "paths", "features", "pca", "splits"])
    ),
    st.tuples(
        st.just("attr"), st.sampled_from(["format", "format_version", "complete", "config"]), junk
    ),
    st.tuples(
        st.just("replace"),
        st.sampled_from(["image_ids", "paths", "splits", "features", "pca/components", "pca/mean"]),
        array_spec,
    ),
    st.tuples(st.just("bytes"), st.integers(0, 20_000), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("cut"), st.integers(0, 20_000)),
)


@FUZZ
@given(pca=st.booleans(), edits=st.lists(store_edit, min_size=1, max_size=3))
def test_feature_store(folder, pca, edits):
    path = _valid_store(folder / "store.h5", pca)
    for edit in edits:
        kind = edit[0]
        if kind in ("bytes", "cut"):
            data = bytearray(path.read_bytes())
            if kind == "cut":
                data = data[: edit[1]]
            else:
                at = edit[1] % max(len(data), 1)
                data[at : at + len(edit[2])] = edit[2]
            path.write_bytes(bytes(data))
            continue
        try:
            f = h5py.File(path, "r+")
        except OSError:
            break  # already corrupt: the reader must say so
        with f:
            if kind == "delete" and edit[1] in f:
                del f[edit[1]]
            elif kind == "attr":
                value = edit[2]
                f.attrs[edit[1]] = (
                    json.dumps(value) if not isinstance(value, int | float | str) else value
                )
            elif kind == "replace":
                if edit[1] in f:
                    del f[edit[1]]
                _put(f, edit[1], edit[2])
    bounded(_use_store, path)


# -- checkpoints -------------------------------------------------------------------------------
VOCAB = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}


def _valid_checkpoint(path: Path) -> Path:
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=4, hidden_dim=3, cell_type="gru", seed=0)
    state = {"m": {"W_embed": np.ones((6, 4))}, "epoch": 1, "history": [1.0, 2.0]}
    extra = {"features": {"image_size": 160}, "pca": {"mean": np.zeros(6, np.float32)}}
    return save_checkpoint(path, model, solver_state=state, extra=extra)


header_paths = st.sampled_from(
    [("model", "hidden_dim"), ("model", "wordvec_dim"), ("model", "input_dim"), ("model", "class"),
     ("model", "cell_type"), ("model", "dtype"), ("model",), ("vocab",), ("vocab", "idx_to_word"),
     ("format",), ("format_version",), ("extra",), ("extra", "pca"), ("extra", "pca", "mean"),
     ("solver_state",), ("solver_state", "m"), ("solver_state", "m", "W_embed")]
)  # fmt: skip
array_edit = st.tuples(
    st.sampled_from(
        ["params/Wh", "params/W_embed", "extra/pca/mean", "state/m/W_embed", "__header__"]
    ),
    st.sampled_from(["float32", "float64", "int8", "uint8", "complex64", "object", "V4", "<U2"]),
    st.lists(st.integers(0, 20), max_size=3),
)


def _edit_header(header: dict, where: tuple, value) -> None:
    node = header
    for key in where[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node[where[-1]] = value


def _save_npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@FUZZ
@given(
    header_edits=st.lists(st.tuples(header_paths, junk), max_size=2),
    array_edits=st.lists(array_edit, max_size=2),
    byte_edit=st.one_of(
        st.none(), st.tuples(st.integers(0, 8000), st.binary(min_size=1, max_size=32))
    ),
    cut=st.one_of(st.none(), st.integers(0, 8000)),
    with_state=st.booleans(),
)
def test_checkpoints(folder, header_edits, array_edits, byte_edit, cut, with_state):
    good = _valid_checkpoint(folder / "good.npz")
    path = folder / "edited.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        entries = {i.filename: zin.read(i.filename) for i in zin.infolist()}
        header = json.loads(np.load(io.BytesIO(entries["__header__.npy"])).tobytes())
        for where, value in header_edits:
            _edit_header(header, where, value)
        text = json.dumps(header, allow_nan=True).encode()
        entries["__header__.npy"] = _save_npy(np.frombuffer(text, np.uint8))
        for name, dtype, shape in array_edits:
            values = (
                np.zeros(shape, dtype=np.float64).astype(dtype)
                if dtype != "object"
                else np.empty(shape, object)
            )
            entries[f"{name}.npy"] = _save_npy(values)
        for name, data in entries.items():
            zout.writestr(name, data)
    data = bytearray(path.read_bytes())
    if byte_edit is not None:
        at = byte_edit[0] % len(data)
        data[at : at + len(byte_edit[1])] = byte_edit[1]
    if cut is not None:
        data = data[:cut]
    path.write_bytes(bytes(data))
    loaded = bounded(load_checkpoint, path, solver_state=with_state)
    if loaded is not None:
        model, _ = loaded
        for name, shape in (
            type(model).shapes_for(model.config_dict(), len(model.word_to_idx)).items()
        ):
            assert model.params[name].shape == shape
            assert np.isfinite(model.params[name]).all()


# -- configs -----------------------------------------------------------------------------------
config_values = st.dictionaries(
    st.sampled_from([f.name for f in TrainConfig.__dataclass_fields__.values()] + ["hidden_dimm"]),
    junk | st.integers(-5, 10**6) | st.floats(),
    max_size=4,
)


@FUZZ
@given(doc=st.one_of(config_values, junk), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_configs(folder, doc, raw):
    path = folder / "config.json"
    if raw is None:
        _write_json(path, doc)
    else:
        path.write_bytes(raw)
    bounded(load_json_config, TrainConfig, path)
    bounded(FeatureExtractorConfig.from_json, json.dumps(doc, allow_nan=True), "c.json")


# -- images ------------------------------------------------------------------------------------
def _image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")}


@FUZZ
@given(
    fmt=st.sampled_from(sorted(IMAGES)),
    edits=st.lists(st.tuples(st.integers(0, 3000), st.binary(min_size=1, max_size=16)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 3000)),
    size=st.sampled_from([32, 64]),
)
def test_images(folder, fmt, edits, cut, size):
    data = bytearray(IMAGES[fmt])
    for at, chunk in edits:
        at %= len(data)
        data[at : at + len(chunk)] = chunk
    if cut is not None:
        data = data[:cut]
    path = folder / f"image.{fmt.lower()}"
    path.write_bytes(bytes(data))
    out = bounded(load_image, path, size)
    if out is not None:
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
