"""``TrainConfig``: the defaults of ``captionlab train``, every field a flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from captionlab.captioning.model import CELL_TYPES
from captionlab.errors import UserError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Defaults of ``captionlab train``; every field is a flag (``--hidden-dim 256``)."""

    cell: str = field(
        default="lstm",
        metadata={"help": "recurrent cell", "choices": CELL_TYPES},
    )
    hidden_dim: int = field(default=512, metadata={"help": "H, size of the hidden state"})
    wordvec_dim: int = field(default=256, metadata={"help": "W, size of a word vector"})
    epochs: int = field(default=10, metadata={"help": "passes over the training captions"})
    batch_size: int = field(default=128, metadata={"help": "captions per minibatch"})
    learning_rate: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    lr_decay: float = field(default=0.9, metadata={"help": "learning rate factor per epoch"})
    grad_clip: float = field(default=5.0, metadata={"help": "clip gradients to this global norm"})
    patience: int = field(
        default=3, metadata={"help": "stop after this many epochs without improvement"}
    )
    max_length: int = field(
        default=16, metadata={"help": "words per caption kept for training (longer are cut)"}
    )
    min_word_count: int = field(default=1, metadata={"help": "words seen fewer times become <UNK>"})
    val_images: int = field(
        default=250, metadata={"help": "validation images scored (BLEU-4) after every epoch"}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "parameter precision", "choices": ("float32", "float64")},
    )
    seed: int = field(default=0, metadata={"help": "seeds initialisation and minibatch order"})

    def __post_init__(self) -> None:
        checks = {
            "hidden_dim": self.hidden_dim >= 1,
            "wordvec_dim": self.wordvec_dim >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "lr_decay": 0 < self.lr_decay <= 1,
            "grad_clip": self.grad_clip > 0,
            "patience": self.patience >= 1,
            "max_length": self.max_length >= 1,
            "min_word_count": self.min_word_count >= 1,
            "val_images": self.val_images >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise UserError(f"{name} out of range, got {getattr(self, name)!r}")
        if self.cell not in CELL_TYPES:
            raise UserError(f"cell must be one of {', '.join(CELL_TYPES)}, got {self.cell!r}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype must be float32 or float64, got {self.dtype!r}")
