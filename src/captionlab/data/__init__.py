"""captionlab.data: vocabulary, readers for real caption formats, the shapes benchmark.

Imports numpy, h5py and Pillow only (no torch). The features store lives in
:mod:`captionlab.data.features` and is imported from there.
"""

from captionlab.data.formats import (
    SPLITS,
    CaptionDataset,
    ImageRecord,
    dataset_summary,
    load_coco_data,
    load_dataset,
    sample_coco_minibatch,
    to_caption_data,
)
from captionlab.data.vocab import (
    END,
    NULL,
    START,
    UNK,
    Vocabulary,
    decode_captions,
    strip_special,
    tokenize,
)

__all__ = [
    "END",
    "NULL",
    "SPLITS",
    "START",
    "UNK",
    "CaptionDataset",
    "ImageRecord",
    "Vocabulary",
    "dataset_summary",
    "decode_captions",
    "load_coco_data",
    "load_dataset",
    "sample_coco_minibatch",
    "strip_special",
    "to_caption_data",
    "tokenize",
]
