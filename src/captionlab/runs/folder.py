"""A run folder and what it protects: its data, its finished work, its own settings.

``RUN/config.json`` records the :class:`~captionlab.runs.config.TrainConfig` and the data
the run trains on: the dataset and the feature store, each by resolved path and by content
(the dataset file's SHA-256, the store's :meth:`~captionlab.data.features.FeatureStore.
fingerprint`). So:

* a new run refuses a folder that already holds one (``overwrite`` replaces it);
* a resumed run continues on the same data (moved or copied data with the same content is
  the same data; other data is refused, naming what differs), with its own settings: the
  caller's settings that contradict the saved ones are refused by name, and only ``epochs``
  may change (raised to train longer);
* a feature store made for another dataset is refused before training: each image id's file
  in the store must be the file the dataset names for it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from captionlab._atomic import write_json
from captionlab.data import CaptionDataset, ImageRecord, Vocabulary
from captionlab.data._io import file_sha256
from captionlab.data.features import FeatureStore
from captionlab.errors import DataError, UserError
from captionlab.runs.config import TrainConfig

__all__ = [
    "RUN_FILES",
    "RunFolder",
    "check_store_matches",
    "data_identity",
    "file_sha256",
]

#: The files a run writes (and ``overwrite`` removes; nothing else in the folder is touched).
RUN_FILES = ("config.json", "vocab.json", "last.npz", "best.npz", "log.json", "loss.png")


def data_identity(dataset_path: str | Path, dataset: CaptionDataset, store: FeatureStore) -> dict:
    """What a run trains on, as recorded in ``config.json`` and in every checkpoint."""
    return {
        "dataset": str(Path(dataset.source).resolve()),
        "dataset_sha256": file_sha256(dataset.source),
        "dataset_format": dataset.name,
        "dataset_title": dataset.title,
        "features": str(Path(store.path).resolve()),
        "features_fingerprint": store.fingerprint(),
    }


def check_store_matches(
    store: FeatureStore, dataset: CaptionDataset, records, dataset_sha256: str | None = None
) -> None:
    """Refuse a store whose images are not the dataset's: the store must hold every record's
    id, and either have been made from this very dataset file (its content, wherever it
    lies now), or have extracted each id from the file the dataset names for it."""
    rows = store.index_of([r.image_id for r in records])  # DataError naming missing ids
    made_from = store.attrs.get("source_sha256")
    if made_from is not None:
        if dataset_sha256 is None and Path(dataset.source).is_file():
            dataset_sha256 = file_sha256(dataset.source)
        if made_from == dataset_sha256:
            return
    for record, row in zip(records, rows, strict=True):
        if not _same_file(store.paths[row], record):
            raise DataError(
                f"{store.path}: image id {record.image_id!r} was extracted from "
                f"{store.paths[row]}, but {dataset.source} names {record.file or record.path} "
                "for it: the store was made for another dataset; run `captionlab features "
                f"{dataset.source} --out NEW.h5` (or give the store made from this dataset)"
            )


def _same_file(stored: str, record: ImageRecord) -> bool:
    """Whether a store's recorded file is the record's: the same file when the store wrote
    an absolute path (stores since captionlab 0.1 do), else the same path as the dataset
    writes it (relative paths of older stores)."""
    if Path(stored).is_absolute() or not record.file:
        return Path(stored).resolve() == Path(record.path).resolve()
    stored = stored.replace("\\", "/")
    return stored == record.file or stored.endswith("/" + record.file)


class RunFolder:
    """``RunFolder(path)``: the checks and the header of a training run's folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def holds_run(self) -> bool:
        """Whether the folder holds a run's saved work (a checkpoint). A folder with only the
        header of a run that saved no epoch has nothing to lose."""
        return any((self.path / name).is_file() for name in ("last.npz", "best.npz"))

    def remove_temporaries(self) -> None:
        """Remove the temporary files a process killed while writing a run file left."""
        for name in RUN_FILES:
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def epochs_done(self) -> int:
        """Epochs recorded in ``log.json`` (0 when there is none)."""
        try:
            log = json.loads((self.path / "log.json").read_text(encoding="utf-8"))
            return len(log.get("epochs", []))
        except (OSError, ValueError, AttributeError):
            return 0

    # -- a new run ------------------------------------------------------------------------------
    def check_new(self, overwrite: bool = False) -> None:
        """Refuse a file in the folder's place, and an existing run unless ``overwrite``."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a folder (give a folder for --out)")
        if self.holds_run() and not overwrite:
            raise UserError(
                f"{self.path}: holds a run with {self.epochs_done()} epoch(s) saved; resume it "
                f"(--resume {self.path}), choose another --out, or replace it (--overwrite)"
            )

    def prepare_new(self, overwrite: bool = False) -> None:
        """Make the folder ready for a new run (:meth:`check_new`); the old run's
        :data:`RUN_FILES` and ``eval_*.json`` are removed (with ``overwrite``, or when no
        epoch of it was saved), nothing else."""
        self.check_new(overwrite)
        if self.path.is_dir():
            self.remove_temporaries()
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for stale in self.path.glob("eval_*.json"):
                stale.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def write_header(
        self, config: TrainConfig, vocab: Vocabulary, identity: dict, store: FeatureStore
    ) -> None:
        """``vocab.json`` and ``config.json`` of a new run."""
        vocab.save(self.path / "vocab.json")
        header = {
            "train": dataclasses.asdict(config),
            **identity,
            "feature_config": dataclasses.asdict(store.config),
        }
        write_json(self.config_file, header)

    # -- resuming -------------------------------------------------------------------------------
    def read_header(self) -> tuple[TrainConfig, dict, Vocabulary]:
        """The saved config, the recorded data identity and the vocabulary of a run to resume."""
        for needed in ("config.json", "vocab.json", "last.npz"):
            if not (self.path / needed).is_file():
                raise UserError(
                    f"{self.path / needed}: missing, so {self.path} cannot be resumed"
                    + (" (no epoch finished; start it again with --overwrite)"
                       if needed == "last.npz" and self.config_file.is_file() else "")
                )  # fmt: skip
        self.remove_temporaries()
        try:
            header = json.loads(self.config_file.read_text(encoding="utf-8"))
            saved = TrainConfig(**header["train"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.config_file}: not a run's config ({exc})") from None
        return saved, header, Vocabulary.load(self.path / "vocab.json")

    def resume_config(self, saved: TrainConfig, given: TrainConfig | dict | None) -> TrainConfig:
        """The config to continue with: the saved one, with ``epochs`` raised when given.

        ``given``: the settings the caller asked for (a dict of fields, or a whole config);
        any that contradicts the saved config is refused, naming each (``epochs`` may only
        grow past the epochs already done).
        """
        if given is None:
            given = {}
        elif isinstance(given, TrainConfig):
            given = dataclasses.asdict(given)
        saved_values = dataclasses.asdict(saved)
        unknown = sorted(set(given) - set(saved_values))
        if unknown:
            raise UserError(f"unknown training setting(s) {', '.join(unknown)}")
        clashes = [
            f"--{name.replace('_', '-')} {value} (the run has {saved_values[name]})"
            for name, value in given.items()
            if name != "epochs" and value != saved_values[name]
        ]
        if clashes:
            raise UserError(
                f"{self.path}: a resumed run keeps its own settings; these contradict its "
                f"config.json: {'; '.join(clashes)}. Drop them, or start a new run with --out"
            )
        epochs = given.get("epochs", saved.epochs)
        done = self.epochs_done()
        if epochs < done:
            raise UserError(
                f"--epochs {epochs} is fewer than the {done} epochs {self.path} has done; "
                f"give --epochs above {done} to train longer"
            )
        return dataclasses.replace(saved, epochs=epochs)

    def check_same_data(self, header: dict, identity: dict) -> None:
        """Refuse to resume on other data than the run's (compared by content; a run
        written before content was recorded is compared by resolved path)."""
        checks = (
            ("--data", "dataset", "dataset_sha256"),
            ("--features", "features", "features_fingerprint"),
        )
        for flag, key, digest in checks:
            if header.get(digest) is not None:
                same = header[digest] == identity[digest]
            else:
                same = header.get(key) == identity[key]
            if not same:
                raise UserError(
                    f"{flag} {identity[key]} is not the data {self.path} was trained on "
                    f"({header.get(key)}, whose content differs); resume with the run's own "
                    f"{flag} (or leave it out), or start a new run with --out"
                )

    def saved_sources(self, header: dict) -> tuple[str, str]:
        """The dataset and feature store a run recorded (to resume without --data/--features)."""
        return header.get("dataset", ""), header.get("features", "")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``log.json`` ([] when missing or unreadable)."""
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("epochs", []))
    except (OSError, ValueError, AttributeError):
        return []
