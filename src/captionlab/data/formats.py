"""Readers for the caption formats people have, and the bridge to the model's data dict.

* Karpathy's ``dataset.json`` (Flickr8k, Flickr30k, COCO; also the shapes benchmark):
  ``images[]`` with ``filename``, optional ``filepath``, ``imgid`` (and ``cocoid`` for COCO),
  ``split`` in train/val/test/restval, ``sentences[]`` with ``raw`` and ``tokens``.
* COCO's ``captions_*.json``: ``images[]`` (``id``, ``file_name``) and ``annotations[]``
  (``image_id``, ``caption``).
* cs231n's ``coco_captioning/`` folder of HDF5 arrays: :func:`load_coco_data`.

:func:`load_dataset` reads either JSON format into a :class:`CaptionDataset`;
:func:`to_caption_data` turns one, with a vocabulary and features, into the dictionary that
``CaptioningSolver`` expects (the same keys :func:`load_coco_data` returns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from captionlab.data._io import h5_dataset, read_json, require
from captionlab.data.features import StoredRows
from captionlab.data.vocab import Vocabulary, tokenize
from captionlab.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions.

    ``image_id`` is a string key (Karpathy ``cocoid`` or ``imgid``; COCO ``id``) shared with
    the features store; ``path`` is the image file; ``split`` is train, val or test; ``file``
    is the path as the dataset wrote it, relative to the image root (``filepath/filename``),
    always inside it (absolute paths and ``..`` are refused when the file is read).
    """

    image_id: str
    path: Path
    split: str
    captions: tuple[str, ...]
    file: str = ""


@dataclass
class CaptionDataset:
    """Images with captions, from one file. ``name`` is the format ("karpathy", "coco");
    ``title`` what the file calls its data, when it does (Karpathy's ``dataset`` field:
    ``"flickr8k"``, ``"coco"``, or ``"shapes"`` for the generated benchmark)."""

    name: str
    source: Path
    images: list[ImageRecord] = field(default_factory=list)
    title: str | None = None

    def split(self, name: str) -> list[ImageRecord]:
        """The records of split ``name`` (train, val or test), in file order."""
        if name not in SPLITS:
            raise DataError(f"{self.source}: unknown split {name!r}, expected one of {SPLITS}")
        return [r for r in self.images if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"images": M, "captions": N}}`` for the splits present."""
        out: dict[str, dict[str, int]] = {}
        for r in self.images:
            c = out.setdefault(r.split, {"images": 0, "captions": 0})
            c["images"] += 1
            c["captions"] += len(r.captions)
        return out

    def all_captions(self, split: str | None = None) -> list[str]:
        """Every caption (of one split, or all), for building a vocabulary."""
        recs = self.images if split is None else self.split(split)
        return [c for r in recs for c in r.captions]


def load_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    split: str | None = None,
    check_images: bool = True,
) -> CaptionDataset:
    """Read a Karpathy ``dataset.json`` or a COCO ``captions_*.json``; the format is detected.

    Args:
        path: the JSON file, or a folder holding ``dataset.json``.
        image_root: folder the image paths are relative to. Karpathy: ``image_root /
            filepath / filename`` (default: the JSON's folder). COCO: ``image_root /
            file_name`` (default: the JSON's folder, else its sibling folder named like the
            split, e.g. ``annotations/../train2014``).
        split: COCO only: the split of every image (default: from the file name,
            ``captions_val2014.json`` -> val).
        check_images: raise :class:`DataError` when a listed image file is absent.

    Karpathy's ``restval`` split is merged into ``train``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        got = type(data).__name__ if not isinstance(data, dict) else sorted(data)[:6]
        raise DataError(f"{path}: expected an object with a list field 'images', got {got}")
    if "annotations" in data:
        ds = _read_coco(path, data, image_root, split)
    elif all(isinstance(im, dict) and "sentences" in im for im in data["images"][:1]):
        ds = _read_karpathy(path, data, image_root)
    else:
        raise DataError(
            f"{path}: unknown caption format: expected Karpathy (images[].sentences) or "
            f"COCO (annotations[]), got fields {sorted(data)}"
        )
    if check_images:
        _check_images_exist(ds)
    return ds


def inside_root(value: str, field: str, path: Path, allow_empty: bool = False) -> str:
    """``value`` (a path from a dataset file) as a relative POSIX path that stays inside the
    image root; an absolute path, a ``..`` part or a NUL byte is refused naming ``field``."""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    bad = (
        (not parts and not allow_empty)
        or value.startswith(("/", "\\"))
        or ".." in value.replace("\\", "/").split("/")
        or "\0" in value
        or (len(value) > 1 and value[1] == ":")  # a Windows drive, C:
    )
    if bad:
        raise DataError(
            f"{path}: field '{field}' must be a path inside the image folder (relative, "
            f"without '..'), got {value!r:.80}"
        )
    return "/".join(parts)


def _read_karpathy(path: Path, data: dict, image_root: str | Path | None) -> CaptionDataset:
    root = Path(image_root) if image_root is not None else path.parent
    records = []
    seen: set[str] = set()
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        filename = require(im, "filename", str, where, path)
        filepath = require(im, "filepath", str, where, path) if "filepath" in im else ""
        filename = inside_root(filename, f"{where}.filename", path)
        filepath = inside_root(filepath, f"{where}.filepath", path, allow_empty=True)
        key = "cocoid" if "cocoid" in im else "imgid"
        image_id = str(require(im, key, (int, str), where, path))
        if image_id in seen:
            raise DataError(f"{path}: field '{where}.{key}' repeats image id {image_id!r}")
        seen.add(image_id)
        split = require(im, "split", str, where, path)
        if split == "restval":
            split = "train"
        if split not in SPLITS:
            raise DataError(
                f"{path}: field '{where}.split' must be train, val, test or restval, got {split!r}"
            )
        sentences = require(im, "sentences", list, where, path)
        captions = []
        for j, s in enumerate(sentences):
            if isinstance(s, dict) and "raw" in s:
                captions.append(require(s, "raw", str, f"{where}.sentences[{j}]", path))
            else:
                tokens = require(s, "tokens", list, f"{where}.sentences[{j}]", path)
                captions.append(" ".join(map(str, tokens)))
        if not captions:
            raise DataError(f"{path}: field '{where}.sentences' is empty (image {filename})")
        if isinstance(im.get("sentids"), list) and len(im["sentids"]) != len(captions):
            raise DataError(
                f"{path}: field '{where}.sentids' lists {len(im['sentids'])} ids but "
                f"'{where}.sentences' holds {len(captions)} sentences"
            )
        file = f"{filepath}/{filename}" if filepath else filename
        records.append(ImageRecord(image_id, root / file, split, tuple(captions), file))
    title = data.get("dataset") if isinstance(data.get("dataset"), str) else None
    return CaptionDataset("karpathy", path, records, title)


def _read_coco(
    path: Path, data: dict, image_root: str | Path | None, split: str | None
) -> CaptionDataset:
    anns = require(data, "annotations", list, "", path)
    if split is None:
        stem = path.stem.lower()
        split = next((s for s in SPLITS if s in stem), "train")
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    files: dict[int | str, str] = {}
    for i, im in enumerate(data["images"]):
        image_id = require(im, "id", (int, str), f"images[{i}]", path)
        if image_id in files:
            raise DataError(f"{path}: field 'images[{i}].id' repeats image id {image_id!r}")
        name = require(im, "file_name", str, f"images[{i}]", path)
        files[image_id] = inside_root(name, f"images[{i}].file_name", path)
    captions: dict[int | str, list[str]] = {k: [] for k in files}
    for i, ann in enumerate(anns):
        image_id = require(ann, "image_id", (int, str), f"annotations[{i}]", path)
        caption = require(ann, "caption", str, f"annotations[{i}]", path)
        if image_id not in captions:
            raise DataError(
                f"{path}: field 'annotations[{i}].image_id' is {image_id!r}, "
                f"which is not among the {len(files)} ids in 'images'"
            )
        captions[image_id].append(caption.strip())
    if image_root is None:
        folder = _coco_folder(path)
        candidates = [path.parent, path.parent.parent / folder, path.parent / folder]
        first = next(iter(files.values()), "")
        root = next((c for c in candidates if (c / first).is_file()), path.parent)
    else:
        root = Path(image_root)
    records = [
        ImageRecord(str(k), root / files[k], split, tuple(captions[k]), files[k])
        for k in files
        if captions[k]
    ]
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):  # 7 and "7" are one image id in a feature store
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: field 'images[].id' repeats image id {dup!r} (as text)")
    return CaptionDataset("coco", path, records, "coco")


def _coco_folder(path: Path) -> str:
    """``captions_train2014.json`` -> ``train2014``."""
    stem = path.stem
    return stem.split("_", 1)[1] if "_" in stem else stem


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, say
        return False


def _check_images_exist(ds: CaptionDataset) -> None:
    missing = [r for r in ds.images if not _is_file(r.path)]
    if missing:
        r = missing[0]
        raise DataError(
            f"{ds.source}: image {r.image_id!r} is listed but its file {r.path} does not exist "
            f"({len(missing)} of {len(ds.images)} images missing; pass image_root / "
            f"--image-root to say where the images are)"
        )


# ----------------------------------------------------------------------------------------
# cs231n coco_captioning folder


def _read_h5(path: Path, keys: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """``{key: (dtype kinds, ndim)}`` -> the arrays, each checked before it is read."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (part of the cs231n coco_captioning folder)")
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for k, (kinds, ndim) in keys.items():
                out[k] = h5_dataset(f, k, path, kinds=kinds, ndim=ndim)[()]
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
    return out


def _read_lines(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found (one image URL per line)")
    try:
        with open(path, encoding="utf-8") as f:
            return np.asarray([line.strip() for line in f], dtype=str)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def load_coco_data(
    base_dir: str | Path,
    max_train: int | None = None,
    pca_features: bool = True,
    *,
    rng: np.random.Generator | None = None,
) -> dict:
    """Load cs231n's ``coco_captioning`` folder into cs231n's dictionary.

    Keys: ``train_captions`` (N, 17) int32, ``train_image_idxs`` (N,), ``val_captions``,
    ``val_image_idxs``, ``train_features`` (M, D) float32 (D=512 with ``pca_features``,
    4096 without), ``val_features``, ``idx_to_word`` (list), ``word_to_idx`` (dict),
    ``train_urls`` (M,), ``val_urls``.

    Args:
        max_train: keep that many training captions, drawn with replacement as cs231n does
            (from ``np.random`` unless ``rng`` is given).

    Counts are checked: captions and image indices have equal rows, every image index points
    into the features, and there is one URL per feature row.
    """
    base = Path(base_dir)
    if not base.is_dir():
        raise DataError(f"{base}: folder not found (expected cs231n's coco_captioning)")
    caption_file = base / "coco2014_captions.h5"
    keys = {
        f"{split}_{name}": ("iu", ndim)
        for split in ("train", "val")
        for name, ndim in (("captions", 2), ("image_idxs", 1))
    }
    data: dict = dict(_read_h5(caption_file, keys))
    suffix = "_pca" if pca_features else ""
    for split in ("train", "val"):
        feat_file = base / f"{split}2014_vgg16_fc7{suffix}.h5"
        feats = _read_h5(feat_file, {"features": ("f", 2)})["features"]
        data[f"{split}_features"] = feats
        url_file = base / f"{split}2014_urls.txt"
        data[f"{split}_urls"] = _read_lines(url_file)
        caps, idxs = data[f"{split}_captions"], data[f"{split}_image_idxs"]
        if caps.ndim != 2 or idxs.shape != (caps.shape[0],):
            raise DataError(
                f"{caption_file}: '{split}_captions' {caps.shape} and '{split}_image_idxs' "
                f"{idxs.shape} must be (N, T) and (N,)"
            )
        if idxs.size and (idxs.min() < 0 or idxs.max() >= feats.shape[0]):
            raise DataError(
                f"{caption_file}: '{split}_image_idxs' must lie in [0, {feats.shape[0]}) "
                f"(rows of {feat_file.name}), got [{idxs.min()}, {idxs.max()}]"
            )
        if len(data[f"{split}_urls"]) != feats.shape[0]:
            raise DataError(
                f"{url_file}: expected {feats.shape[0]} lines (one per row of "
                f"{feat_file.name}), got {len(data[f'{split}_urls'])}"
            )
    vocab_file = base / "coco2014_vocab.json"
    vocab = Vocabulary.from_dict(read_json(vocab_file), source=str(vocab_file))
    data["idx_to_word"] = vocab.idx_to_word
    data["word_to_idx"] = vocab.word_to_idx
    V = len(vocab)
    for split in ("train", "val"):
        caps = data[f"{split}_captions"]
        if caps.size and (caps.min() < 0 or caps.max() >= V):
            raise DataError(
                f"{caption_file}: '{split}_captions' ids must lie in [0, {V}) "
                f"({vocab_file.name} has {V} words), got [{caps.min()}, {caps.max()}]"
            )
    if max_train is not None:
        num_train = data["train_captions"].shape[0]
        if rng is not None:
            mask = rng.integers(num_train, size=max_train)
        else:  # cs231n draws from the global generator
            mask = np.random.randint(num_train, size=max_train)  # noqa: NPY002
        data["train_captions"] = data["train_captions"][mask]
        data["train_image_idxs"] = data["train_image_idxs"][mask]
    return data


def sample_coco_minibatch(
    data: dict,
    batch_size: int = 100,
    split: str = "train",
    *,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random minibatch, as cs231n's ``sample_coco_minibatch``.

    Returns:
        captions: (batch_size, T) int32; features: (batch_size, D); urls: (batch_size,).
    Draws with replacement from ``np.random`` (cs231n) unless ``rng`` is given.
    """
    key = f"{split}_captions"
    if key not in data:
        have = sorted(k[: -len("_captions")] for k in data if k.endswith("_captions"))
        raise DataError(f"no split {split!r} in the data (has {have})")
    split_size = data[key].shape[0]
    if rng is not None:
        mask = rng.choice(split_size, batch_size)
    else:
        mask = np.random.choice(split_size, batch_size)  # noqa: NPY002 (as cs231n)
    captions = data[key][mask]
    image_idxs = data[f"{split}_image_idxs"][mask]
    image_features = data[f"{split}_features"][image_idxs]
    urls = data[f"{split}_urls"][image_idxs]
    return captions, image_features, urls


def to_caption_data(
    dataset: CaptionDataset,
    vocab: Vocabulary,
    features_for: Callable[[list[str]], np.ndarray],
    max_length: int = 16,
    splits: tuple[str, ...] = SPLITS,
) -> dict:
    """The cs231n data dictionary for ``CaptioningSolver``, from a dataset and features.

    For each split present: ``{split}_captions`` (N, max_length+1) int32, one row per
    caption; ``{split}_image_idxs`` (N,) int32 rows into ``{split}_features`` (M, D)
    float32 (or grids (M, L, D)); ``{split}_image_ids`` (M,) str; ``{split}_urls`` (M,) str
    image paths. Plus ``idx_to_word``, ``word_to_idx`` and ``n_truncated`` ({split: captions
    cut}). For val and test also ``{split}_texts`` (N,): each caption's words as text, cut
    like the encoded row but with words outside the vocabulary kept (the references a metric
    compares with).

    Args:
        features_for: maps M image ids to an (M, D) or (M, L, D) array, row i for id i, or
            to a :class:`~captionlab.data.features.StoredRows` of that shape, which stays a
            reader (the solver reads its minibatches from the file).
    """
    data: dict = {"idx_to_word": vocab.idx_to_word, "word_to_idx": vocab.word_to_idx}
    data["n_truncated"] = {}
    for split in splits:
        records = dataset.split(split)
        if not records:
            continue
        ids = [r.image_id for r in records]
        feats = features_for(ids)
        if not isinstance(feats, StoredRows):
            feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim not in (2, 3) or feats.shape[0] != len(ids):
            raise DataError(
                f"features for split {split!r} must be ({len(ids)}, D) or ({len(ids)}, L, D), "
                f"got {feats.shape}"
            )
        captions = [c for r in records for c in r.captions]
        image_idxs = np.asarray(
            [i for i, r in enumerate(records) for _ in r.captions], dtype=np.int32
        )
        encoded, n_cut = vocab.encode(captions, max_length=max_length)
        if split != "train":
            data[f"{split}_texts"] = [" ".join(tokenize(c)[: max_length - 1]) for c in captions]
        data[f"{split}_captions"] = encoded
        data[f"{split}_image_idxs"] = image_idxs
        data[f"{split}_features"] = feats
        data[f"{split}_image_ids"] = np.asarray(ids)
        data[f"{split}_urls"] = np.asarray([str(r.path) for r in records])
        data["n_truncated"][split] = n_cut
    return data


def dataset_summary(ds: CaptionDataset) -> dict:
    """A JSON-able summary: format, source, per-split image and caption counts."""
    return {"format": ds.name, "source": str(ds.source), "splits": ds.counts()}
