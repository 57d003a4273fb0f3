"""captionlab.captioning: the captioning models, their solver, decoding and checkpoints.

``from captionlab.captioning import CaptioningRNN, CaptioningSolver`` behaves as the cs231n
assignment-3 classes do (see DESIGN.md); ``AttentionCaptioner`` is the Show, Attend and Tell
model over a feature grid; ``CaptioningTransformer`` is the 2021+ assignment's. Metrics live
in :mod:`captionlab.captioning.metrics`.
"""

from captionlab.captioning.attention_model import AttentionCaptioner, AttentionConfig
from captionlab.captioning.checkpoint import load_checkpoint, save_checkpoint
from captionlab.captioning.generate import (
    BeamResult,
    DecodeState,
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
    "AttentionCaptioner",
    "AttentionConfig",
    "BeamResult",
    "CaptioningRNN",
    "CaptioningSolver",
    "CaptioningTransformer",
    "DecodeState",
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
