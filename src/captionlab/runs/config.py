"""``TrainConfig``: the defaults of ``captionlab train``, every field a flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from captionlab.bounds import SEED, check_fields, integer, real
from captionlab.captioning.model import CELL_TYPES
from captionlab.errors import UserError

__all__ = ["MODEL_KINDS", "MONITORS", "TrainConfig"]

#: The captioners ``captionlab train --model`` builds (see ``runs.train.build_model``).
MODEL_KINDS = ("rnn", "attention", "transformer")
#: What may pick the best epoch (``CaptioningSolver``'s ``monitor``).
MONITORS = ("auto", "val_metric", "val_loss", "train_loss")


@dataclass
class TrainConfig:
    """Defaults of ``captionlab train``; every field is a flag (``--hidden-dim 256``).

    Each number's range is its ``bound`` (:mod:`captionlab.bounds`), checked for a flag, a
    JSON config and a config built in code alike. Sizes are capped here; the whole model's
    size is checked against :data:`captionlab.captioning.budget.MAX_PARAMETERS` before it is
    built.
    """

    model: str = field(
        default="rnn",
        metadata={
            "help": "captioner: rnn (CaptioningRNN on pooled features, its cell set by --cell), "
            "attention (Show, Attend and Tell over the store's grid) or transformer "
            "(CaptioningTransformer on pooled features, or on the grid with --grid); a grid "
            "comes from `captionlab features --grid`",
            "choices": MODEL_KINDS,
        },
    )
    cell: str = field(
        default="lstm",
        metadata={"help": "recurrent cell of --model rnn", "choices": CELL_TYPES},
    )
    hidden_dim: int = field(
        default=512,
        metadata={
            "help": "H, size of the hidden state (transformer: F, the feed-forward size)",
            "bound": integer(1, 16384),
        },
    )
    wordvec_dim: int = field(
        default=256,
        metadata={
            "help": "W, size of a word vector (transformer: the model width)",
            "bound": integer(1, 16384),
        },
    )
    attention_dim: int = field(
        default=256,
        metadata={
            "help": "K, size of the additive attention (--model attention)",
            "bound": integer(1, 16384),
        },
    )
    attention_penalty: float = field(
        default=0.0,
        metadata={
            "help": "lambda of the doubly stochastic attention penalty (--model attention); "
            "with 25 cells and ~10 words, 1.0 spread the attention evenly (peak weight 0.06) "
            "and cost object F1 on the shapes data",
            "bound": real(0, 1e6),
        },
    )
    num_heads: int = field(
        default=4,
        metadata={"help": "attention heads (--model transformer)", "bound": integer(1, 64)},
    )
    num_layers: int = field(
        default=2,
        metadata={"help": "decoder layers (--model transformer)", "bound": integer(1, 64)},
    )
    dropout: float = field(
        default=0.1,
        metadata={
            "help": "dropout probability (--model transformer)",
            "bound": real(0, 1, hi_open=True),
        },
    )
    grid: bool = field(
        default=False,
        metadata={
            "help": "attend to the store's spatial grid, not pooled features "
            "(--model transformer; --model attention always does)"
        },
    )
    position: bool | None = field(
        default=None,
        metadata={
            "help": "learn a position embedding per grid cell, added to the cell's features; "
            "unset: on for --model transformer (its attention treats the cells as a set "
            "otherwise, so left and right cannot be told apart), off for --model attention "
            "(its recurrent state tells the words apart; no gain measured on the shapes data)"
        },
    )
    locations: bool | None = field(
        default=None,
        metadata={
            "help": "use each grid cell's place (x, y): --model attention moves its attention "
            "along them and its LSTM reads where it looked; --model transformer --grid reads "
            "where each cross-attention head looked in every decoder layer (see "
            "AttentionCaptioner, CaptioningTransformer); unset: on for --model attention and "
            "--model transformer --grid (on the shapes data it raised the attention "
            "captioner's choice of a relation among three objects from 0.54 to 0.75, and "
            "with --location-summary the Transformer's from 0.37 to 0.77)"
        },
    )
    location_summary: bool | None = field(
        default=None,
        metadata={
            "help": "with --locations and --model transformer: every decoder layer also reads "
            "a gated running mean of the places its heads looked at over the words so far, "
            "so a later word can read where an earlier one was found; unset: on with "
            "--model transformer --grid and locations (without it the Transformer never "
            "learnt which way a relation goes)"
        },
    )
    coverage: bool | None = field(
        default=None,
        metadata={
            "help": "with --model transformer --grid: coverage in every decoder layer's "
            "cross-attention, each head's scores biased by how much it already looked at "
            "each cell at the earlier words, times a learned weight of the word's query "
            "(Tu et al. 2016, See et al. 2017), so it can turn to an object it has not named "
            "yet; unset: on with --model transformer --grid (on the shapes data, 3 seeds, it "
            "named fewer objects twice and raised object F1 from 0.956 / 0.947 to 0.964 / "
            "0.952, test / fresh scenes)"
        },
    )
    encoder_layers: int | None = field(
        default=None,
        metadata={
            "help": "encoder layers (self-attention among the grid cells, then feed-forward) "
            "before the decoder (--model transformer --grid); unset: 0 (1 did not teach it "
            "relation direction on the shapes data)",
            "bound": integer(0, 64, none=True),
        },
    )
    memory_norm: bool | None = field(
        default=None,
        metadata={
            "help": "layer-normalise the projected grid cells before the position embedding "
            "(--model transformer); unset: off (no gain in relations measured on the shapes "
            "data)",
        },
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
    monitor: str = field(
        default="auto",
        metadata={
            "help": "what picks the best epoch (best.npz) and stops early: val_metric "
            "(validation BLEU-4 of greedy captions), val_loss, train_loss; auto = val_metric "
            "when there is validation data",
            "choices": MONITORS,
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
        for name, choices in (("model", MODEL_KINDS), ("monitor", MONITORS)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.model == "transformer" and self.wordvec_dim % self.num_heads:
            raise UserError(
                f"--num-heads {self.num_heads} must divide --wordvec-dim {self.wordvec_dim} "
                "(each head takes an equal share of the model width)"
            )
        if self.locations and not self.uses_grid:
            raise UserError(
                f"--locations needs a model that reads the grid (--model attention, or "
                f"--model transformer --grid), got --model {self.model}"
                + (" without --grid" if self.model == "transformer" else "")
            )
        if self.location_summary and not (self.uses_locations and self.model == "transformer"):
            raise UserError(
                "--location-summary needs --model transformer --grid --locations, got "
                f"--model {self.model}" + ("" if self.uses_locations else " without --locations")
            )
        if self.coverage and not (self.model == "transformer" and self.uses_grid):
            raise UserError(
                f"--coverage needs --model transformer --grid, got --model {self.model}"
                + (" without --grid" if self.model == "transformer" else "")
            )
        if self.cell not in CELL_TYPES:
            raise UserError(f"cell must be one of {', '.join(CELL_TYPES)}, got {self.cell!r}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype must be float32 or float64, got {self.dtype!r}")

    @property
    def uses_grid(self) -> bool:
        """Whether the model reads the store's grid (attention always; transformer with grid)."""
        return self.model == "attention" or (self.model == "transformer" and self.grid)

    @property
    def uses_locations(self) -> bool:
        """``locations``, or the model's default when unset (see the field's help)."""
        if self.locations is not None:
            return bool(self.locations)
        return self.uses_grid

    @property
    def uses_location_summary(self) -> bool:
        """``location_summary``, or the model's default when unset (see the field's help)."""
        if self.location_summary is not None:
            return bool(self.location_summary)
        return self.model == "transformer" and self.uses_grid and self.uses_locations

    @property
    def uses_coverage(self) -> bool:
        """``coverage``, or the model's default when unset (see the field's help)."""
        if self.coverage is not None:
            return bool(self.coverage)
        return self.model == "transformer" and self.uses_grid

    @property
    def position_embedding(self) -> bool:
        """``position``, or the model's default when unset (see the field's help)."""
        if self.position is not None:
            return bool(self.position)
        return self.model == "transformer"
