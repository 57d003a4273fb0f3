"""captionlab.captioning: the captioning model, its solver, decoding and checkpoints.

``from captionlab.captioning import CaptioningRNN, CaptioningSolver`` behaves as the cs231n
assignment-3 classes do (see DESIGN.md); ``CaptioningTransformer`` is the 2021+ assignment's.
Metrics live in :mod:`captionlab.captioning.metrics`.
"""

from captionlab.captioning.checkpoint import load_checkpoint, save_checkpoint
from captionlab.captioning.decode import (
    BeamResult,
    beam_search,
    caption_logprob,
    captions_to_text,
    greedy_decode,
    sample_temperature,
)
from captionlab.captioning.model import CaptioningRNN, ModelConfig
from captionlab.captioning.solver import CaptioningSolver, SolverOptions, TrainingDivergedError
from captionlab.captioning.transformer_model import CaptioningTransformer, TransformerConfig

__all__ = [
    "BeamResult",
    "CaptioningRNN",
    "CaptioningSolver",
    "CaptioningTransformer",
    "ModelConfig",
    "SolverOptions",
    "TrainingDivergedError",
    "TransformerConfig",
    "beam_search",
    "caption_logprob",
    "captions_to_text",
    "greedy_decode",
    "load_checkpoint",
    "sample_temperature",
    "save_checkpoint",
]
