"""``TrainConfig``: the defaults of ``captionlab train``, every field a flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from captionlab.bounds import SEED, check_fields, integer, real
from captionlab.captioning.model import CELL_TYPES
from captionlab.errors import UserError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Defaults of ``captionlab train``; every field is a flag (``--hidden-dim 256``).

    Each number's range is its ``bound`` (:mod:`captionlab.bounds`), checked for a flag, a
    JSON config and a config built in code alike. Sizes are capped here; the whole model's
    size is checked against :data:`captionlab.captioning.budget.MAX_PARAMETERS` before it is
    built.
    """

    cell: str = field(
        default="lstm",
        metadata={"help": "recurrent cell", "choices": CELL_TYPES},
    )
    hidden_dim: int = field(
        default=512, metadata={"help": "H, size of the hidden state", "bound": integer(1, 16384)}
    )
    wordvec_dim: int = field(
        default=256, metadata={"help": "W, size of a word vector", "bound": integer(1, 16384)}
    )
    epochs: int = field(
        default=10,
        metadata={"help": "passes over the training captions", "bound": integer(1, 100_000)},
    )
    batch_size: int = field(
        default=128, metadata={"help": "captions per minibatch", "bound": integer(1, 8192)}
    )
    learning_rate: float = field(
        default=5e-3, metadata={"help": "Adam learning rate", "bound": real(0, lo_open=True)}
    )
    lr_decay: float = field(
        default=0.9,
        metadata={"help": "learning rate factor per epoch", "bound": real(0, 1, lo_open=True)},
    )
    grad_clip: float = field(
        default=5.0,
        metadata={"help": "clip gradients to this global norm", "bound": real(0, lo_open=True)},
    )
    patience: int = field(
        default=3,
        metadata={
            "help": "stop after this many epochs without improvement",
            "bound": integer(1, 100_000),
        },
    )
    max_length: int = field(
        default=16,
        metadata={
            "help": "words per caption kept for training (longer are cut)",
            "bound": integer(2, 1024),
        },
    )
    min_word_count: int = field(
        default=1,
        metadata={"help": "words seen fewer times become <UNK>", "bound": integer(1, 10**9)},
    )
    val_images: int = field(
        default=250,
        metadata={
            "help": "validation images scored (BLEU-4) after every epoch (0: none; the "
            "validation loss is monitored then)",
            "bound": integer(0, 10**7),
        },
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "parameter precision", "choices": ("float32", "float64")},
    )
    seed: int = field(
        default=0, metadata={"help": "seeds initialisation and minibatch order", "bound": SEED}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.cell not in CELL_TYPES:
            raise UserError(f"cell must be one of {', '.join(CELL_TYPES)}, got {self.cell!r}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype must be float32 or float64, got {self.dtype!r}")
