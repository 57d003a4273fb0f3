"""captionlab.nn: NumPy layers with hand-written backward passes (cs231n assignment 3 names).

Dimensions everywhere: ``N`` batch, ``T`` time, ``D`` input size, ``H`` hidden size,
``V`` vocabulary, ``W`` word-vector size. Each layer is a pure ``*_forward`` returning
``(out, cache)`` and a ``*_backward`` returning gradients in the order of the forward's
inputs. Layers keep the dtype they are given (float32 or float64).

Modules: :mod:`~captionlab.nn.functional` (stable sigmoid, log-softmax, masked softmax),
:mod:`~captionlab.nn.layers` (affine, word embedding, temporal affine, temporal softmax
loss), :mod:`~captionlab.nn.rnn`, :mod:`~captionlab.nn.lstm` (gates i, f, o, g),
:mod:`~captionlab.nn.gru` (gates r, z, n as torch), :mod:`~captionlab.nn.attention`
(additive attention over ``L`` grid cells, scaled dot-product attention),
:mod:`~captionlab.nn.transformer` (layer norm, dropout, positional encoding, multi-head
attention, feed-forward, decoder layer, and the cs231n classes ``PositionalEncoding`` and
``MultiHeadAttention``), :mod:`~captionlab.nn.gradcheck`, :mod:`~captionlab.nn.optim`,
:mod:`~captionlab.nn.kernels` (the element-wise work between the matrix products: fused
numba kernels by default, the NumPy reference with ``CAPTIONLAB_KERNELS=numpy`` or
``with nn.use_kernels("numpy"): ...``), :mod:`~captionlab.nn.memory` (freed memory kept
for reuse, set on import: ``CAPTIONLAB_MALLOC=system`` opts out).
"""

from captionlab.nn import optim
from captionlab.nn.attention import (
    additive_attention_backward,
    additive_attention_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from captionlab.nn.functional import (
    Lengths,
    log_softmax,
    masked_softmax,
    masked_softmax_backward,
    sigmoid,
)
from captionlab.nn.gradcheck import (
    check_layers,
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    rel_error,
)
from captionlab.nn.gru import (
    gru_backward,
    gru_cell_forward,
    gru_forward,
    gru_recurrence_backward,
    gru_recurrence_forward,
    gru_step_backward,
    gru_step_forward,
)
from captionlab.nn.kernels import kernels_in_use, set_kernels, use_kernels
from captionlab.nn.layers import (
    affine_backward,
    affine_forward,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)
from captionlab.nn.lstm import (
    lstm_backward,
    lstm_cell_forward,
    lstm_forward,
    lstm_recurrence_backward,
    lstm_recurrence_forward,
    lstm_step_backward,
    lstm_step_forward,
)
from captionlab.nn.memory import memory_policy, retain_freed_memory
from captionlab.nn.rnn import (
    rnn_backward,
    rnn_cell_forward,
    rnn_forward,
    rnn_recurrence_backward,
    rnn_recurrence_forward,
    rnn_step_backward,
    rnn_step_forward,
)
from captionlab.nn.transformer import (
    DECODER_COVERAGE_KEYS,
    DECODER_LAYER_KEYS,
    DECODER_LOCATION_KEY,
    DECODER_SUMMARY_KEYS,
    ENCODER_LAYER_KEYS,
    MultiHeadAttention,
    PositionalEncoding,
    coverage_attention_backward,
    coverage_attention_forward,
    decoder_layer_attention,
    decoder_layer_backward,
    decoder_layer_forward,
    decoder_layer_keys,
    decoder_layer_param_shapes,
    dropout_backward,
    dropout_forward,
    encoder_layer_backward,
    encoder_layer_forward,
    encoder_layer_param_shapes,
    feedforward_backward,
    feedforward_forward,
    layernorm_backward,
    layernorm_forward,
    multihead_attention_backward,
    multihead_attention_forward,
    positional_encoding_backward,
    positional_encoding_forward,
    sinusoidal_positional_encoding,
)

__all__ = [
    "DECODER_COVERAGE_KEYS",
    "DECODER_LAYER_KEYS",
    "DECODER_LOCATION_KEY",
    "DECODER_SUMMARY_KEYS",
    "ENCODER_LAYER_KEYS",
    "Lengths",
    "MultiHeadAttention",
    "PositionalEncoding",
    "additive_attention_backward",
    "additive_attention_forward",
    "affine_backward",
    "affine_forward",
    "check_layers",
    "coverage_attention_backward",
    "coverage_attention_forward",
    "decoder_layer_attention",
    "decoder_layer_backward",
    "decoder_layer_forward",
    "decoder_layer_keys",
    "decoder_layer_param_shapes",
    "dropout_backward",
    "dropout_forward",
    "encoder_layer_backward",
    "encoder_layer_forward",
    "encoder_layer_param_shapes",
    "eval_numerical_gradient",
    "eval_numerical_gradient_array",
    "feedforward_backward",
    "feedforward_forward",
    "gru_backward",
    "gru_cell_forward",
    "gru_forward",
    "gru_recurrence_backward",
    "gru_recurrence_forward",
    "gru_step_backward",
    "gru_step_forward",
    "kernels_in_use",
    "layernorm_backward",
    "layernorm_forward",
    "log_softmax",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_forward",
    "lstm_recurrence_backward",
    "lstm_recurrence_forward",
    "lstm_step_backward",
    "lstm_step_forward",
    "masked_softmax",
    "masked_softmax_backward",
    "memory_policy",
    "multihead_attention_backward",
    "multihead_attention_forward",
    "optim",
    "positional_encoding_backward",
    "positional_encoding_forward",
    "rel_error",
    "retain_freed_memory",
    "rnn_backward",
    "rnn_cell_forward",
    "rnn_forward",
    "rnn_recurrence_backward",
    "rnn_recurrence_forward",
    "rnn_step_backward",
    "rnn_step_forward",
    "scaled_dot_product_attention_backward",
    "scaled_dot_product_attention_forward",
    "set_kernels",
    "sigmoid",
    "sinusoidal_positional_encoding",
    "temporal_affine_backward",
    "temporal_affine_forward",
    "temporal_softmax_loss",
    "use_kernels",
    "word_embedding_backward",
    "word_embedding_forward",
]

retain_freed_memory()  # see captionlab.nn.memory; CAPTIONLAB_MALLOC=system leaves malloc alone
