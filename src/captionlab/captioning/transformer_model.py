"""The Transformer captioner of cs231n assignment 3 (2021 and later), in NumPy with
hand-written backward passes, attending to the spatial grid of image features.

Dimensions: ``N`` batch, ``T`` caption length, ``D`` feature size, ``L`` grid cells (1 for
pooled features), ``W`` word-vector size (the model width, ``E`` in :mod:`captionlab.nn.
transformer`), ``h`` heads, ``F`` feed-forward size, ``V`` vocabulary size.

The forward pass of :meth:`CaptioningTransformer.loss`::

    memory = features @ W_proj + b_proj            # (N, L, W): one token per grid cell,
                                                   # or (N, 1, W) for pooled (N, D) features
    x      = W_embed[captions[:, :-1]]             # (N, T-1, W)
    x      = Dropout(x + PE[:T-1])                 # sinusoidal positional encoding
    x      = DecoderLayer_l(x, memory, causal)     # l = 0 .. num_layers-1, post-norm:
             # x = LN1(x + Drop(SelfAttn(x)));  x = LN2(x + Drop(CrossAttn(x, memory)))
             # x = LN3(x + Drop(FFN(x)))        (torch.nn.TransformerDecoderLayer)
    scores = x @ W_vocab + b_vocab                 # (N, T-1, V)
    loss   = softmax cross-entropy of scores against captions[:, 1:], <NULL> masked,
             summed over time, averaged over N     (as CaptioningRNN)

The causal mask lets word ``t`` attend to words ``0..t`` only, so one pass trains every
position at once (teacher forcing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from captionlab import nn


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a :class:`CaptioningTransformer` apart from its weights."""

    input_dim: int = 512
    wordvec_dim: int = 256
    num_heads: int = 4
    num_layers: int = 2
    max_length: int = 50
    dropout: float = 0.1
    dim_feedforward: int = 2048
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


def transformer_param_shapes(config: TransformerConfig, vocab_size: int) -> dict[str, tuple]:
    """The shape of every parameter of a model with ``config`` and ``V = vocab_size``:
    ``W_embed`` (V, W), ``W_proj`` (D, W), ``b_proj`` (W,), ``layers.{l}.{key}`` for each
    key of :data:`captionlab.nn.DECODER_LAYER_KEYS`, ``W_vocab`` (W, V), ``b_vocab`` (V,)."""
    V, D, W = vocab_size, config.input_dim, config.wordvec_dim
    shapes: dict[str, tuple] = {"W_embed": (V, W), "W_proj": (D, W), "b_proj": (W,)}
    layer = nn.decoder_layer_param_shapes(W, config.dim_feedforward)
    for i in range(config.num_layers):
        shapes.update({f"layers.{i}.{key}": shape for key, shape in layer.items()})
    shapes["W_vocab"], shapes["b_vocab"] = (W, V), (V,)
    return shapes


class CaptioningTransformer:
    """A Transformer decoder captioner over precomputed image features (cs231n names).

    Args:
        word_to_idx: vocabulary, word -> index; must hold ``<NULL>``. ``V = len(word_to_idx)``.
        input_dim: ``D``, the size of an image feature vector (or of one grid cell).
        wordvec_dim: ``W``, the model width; ``num_heads`` must divide it.
        num_heads: ``h``, attention heads per layer.
        num_layers: decoder layers.
        max_length: the longest input sequence (``T - 1`` for captions of length T).
        dropout: the probability of dropping, in training mode, at the positional encoding
            and at the six places of every decoder layer.
        dtype: ``np.float32`` for training, ``np.float64`` for gradient checks.
        seed: ``None`` draws the initial weights (and the seed of the dropout masks) from
            NumPy's global generator as cs231n does; an int uses a private generator.
        dim_feedforward: ``F``, the hidden size of the feed-forward blocks (2048 in the
            assignment, whose decoder layer it does not override).

    Attributes:
        params: dict of parameter arrays, shapes from :func:`transformer_param_shapes`;
            weights drawn from N(0, 0.02**2), biases 0, LayerNorm gains 1 (the assignment's
            ``_init_weights``).
        training: whether dropout is on (:meth:`train`, the default, or :meth:`eval`).
    """

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int,
        wordvec_dim: int,
        num_heads: int = 4,
        num_layers: int = 2,
        max_length: int = 50,
        dropout: float = 0.1,
        dtype=np.float32,
        seed: int | None = None,
        *,
        dim_feedforward: int = 2048,
    ) -> None:
        if "<NULL>" not in word_to_idx:
            raise ValueError("word_to_idx must hold '<NULL>'")
        if num_heads < 1 or wordvec_dim % num_heads:
            raise ValueError(f"num_heads must divide wordvec_dim = {wordvec_dim}, got {num_heads}")
        if num_layers < 1 or max_length < 1 or dim_feedforward < 1:
            raise ValueError(
                "num_layers, max_length and dim_feedforward must be >= 1, got "
                f"{num_layers}, {max_length}, {dim_feedforward}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.num_heads = int(num_heads)
        self.num_layers = int(num_layers)
        self.max_length = int(max_length)
        self.dropout = float(dropout)
        self.training = True
        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)

        rs = np.random if seed is None else np.random.RandomState(seed)
        config = TransformerConfig(
            input_dim=int(input_dim),
            wordvec_dim=int(wordvec_dim),
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            max_length=self.max_length,
            dropout=self.dropout,
            dim_feedforward=int(dim_feedforward),
            dtype=self.dtype.name,
        )
        self.params: dict[str, np.ndarray] = {}
        for name, shape in transformer_param_shapes(config, len(word_to_idx)).items():
            if name.endswith("gamma"):
                value = np.ones(shape)
            elif len(shape) == 1:  # biases and LayerNorm shifts
                value = np.zeros(shape)
            else:
                value = 0.02 * rs.randn(*shape)
            self.params[name] = value.astype(self.dtype)
        self._rng = np.random.default_rng(rs.randint(2**31 - 1))  # the dropout masks

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> TransformerConfig:
        """The architecture, read from the parameter shapes and the settings."""
        D, W = self.params["W_proj"].shape
        return TransformerConfig(
            input_dim=int(D),
            wordvec_dim=int(W),
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            max_length=self.max_length,
            dropout=self.dropout,
            dim_feedforward=int(self.params["layers.0.ffn.W1"].shape[1]),
            dtype=self.dtype.name,
        )

    def expected_shapes(self) -> dict[str, tuple]:
        """The shape each parameter must have, from :attr:`config` and ``V``."""
        return transformer_param_shapes(self.config, len(self.word_to_idx))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CaptioningTransformer(V={len(self.word_to_idx)}, D={c.input_dim}, "
            f"W={c.wordvec_dim}, heads={c.num_heads}, layers={c.num_layers}, "
            f"F={c.dim_feedforward}, dropout={c.dropout}, dtype={c.dtype})"
        )

    def train(self) -> CaptioningTransformer:
        """Training mode: dropout on (the default, as in torch)."""
        self.training = True
        return self

    def eval(self) -> CaptioningTransformer:
        """Evaluation mode: dropout off."""
        self.training = False
        return self

    def _layer_params(self, i: int) -> dict[str, np.ndarray]:
        prefix = f"layers.{i}."
        return {key: self.params[prefix + key] for key in nn.DECODER_LAYER_KEYS}

    # ------------------------------------------------------------------ forward / backward
    def _check_features(self, features: np.ndarray) -> np.ndarray:
        D = self.params["W_proj"].shape[0]
        features = np.asarray(features)
        if features.ndim not in (2, 3) or features.shape[-1] != D:
            raise ValueError(
                f"features must be pooled (N, {D}) or a grid (N, L, {D}), got {features.shape}"
            )
        return features.astype(self.dtype, copy=False)

    def _check_captions(self, captions: np.ndarray, N: int) -> np.ndarray:
        captions = np.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != N:
            raise ValueError(f"captions must be (N, T) with N={N}, got {captions.shape}")
        if captions.shape[1] < 2:
            raise ValueError(f"captions need T >= 2 tokens, got T={captions.shape[1]}")
        if captions.shape[1] - 1 > self.max_length:
            raise ValueError(
                f"captions must have T - 1 <= max_length = {self.max_length} input words, "
                f"got T = {captions.shape[1]}"
            )
        return captions

    def _forward(self, features: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Teacher-forced decoder states.

        Args:
            features: checked features, (N, D) or (N, L, D).
            words: the input words, (N, T') integers with T' <= max_length.

        Returns:
            ``(x, cache)`` with x (N, T', W), the last decoder layer's output.
        """
        p = self.params
        p_drop = self.dropout if self.training else 0.0
        rng = self._rng if p_drop else None
        N, D = features.shape[0], features.shape[-1]
        L = 1 if features.ndim == 2 else features.shape[1]
        features2 = features.reshape(N * L, D)  # (N*L, D)
        memory = (features2 @ p["W_proj"] + p["b_proj"]).reshape(N, L, -1)  # (N, L, W)
        x, c_embed = nn.word_embedding_forward(words, p["W_embed"])  # (N, T', W)
        x, c_pos = nn.positional_encoding_forward(x, p_drop, rng)  # (N, T', W)
        T = words.shape[1]
        causal = np.tril(np.ones((T, T), dtype=bool))  # word t sees words 0..t
        c_layers = []
        for i in range(self.num_layers):
            x, c = nn.decoder_layer_forward(
                x, memory, self._layer_params(i), self.num_heads, causal, p_drop, rng
            )  # (N, T', W)
            c_layers.append(c)
        return x, (features.shape, features2, p["W_proj"], c_embed, c_pos, c_layers)

    def _backward(
        self, dx: np.ndarray, cache: tuple, feature_grad: bool
    ) -> tuple[dict, np.ndarray | None]:
        """Backward of :meth:`_forward`: dx (N, T', W) -> (grads without the output
        projection, dfeatures of the features' shape or ``None`` unless ``feature_grad``)."""
        features_shape, features2, W_proj, c_embed, c_pos, c_layers = cache
        grads: dict[str, np.ndarray] = {}
        dmemory = None
        for i in reversed(range(self.num_layers)):
            dx, dmem, dlayer = nn.decoder_layer_backward(dx, c_layers[i])
            dmemory = dmem if dmemory is None else dmemory + dmem  # (N, L, W)
            for key, g in dlayer.items():
                grads[f"layers.{i}.{key}"] = g
        dx = nn.positional_encoding_backward(dx, c_pos)
        grads["W_embed"] = nn.word_embedding_backward(dx, c_embed)
        N, L, W = dmemory.shape
        dmemory = dmemory.reshape(N * L, W)
        grads["W_proj"] = features2.T @ dmemory  # (D, W)
        grads["b_proj"] = dmemory.sum(axis=0)  # (W,)
        if not feature_grad:  # skip the (N*L, W) x (W, D) GEMM nobody asked for
            return grads, None
        return grads, (dmemory @ W_proj.T).reshape(features_shape)

    def _teacher_forced_scores(self, features: np.ndarray, captions: np.ndarray) -> np.ndarray:
        """Word scores (N, T-1, V) for every position of ``captions[:, :-1]`` (for tests
        and inspection; uses the current train/eval mode)."""
        features = self._check_features(features)
        captions = self._check_captions(captions, features.shape[0])
        x, _ = self._forward(features, captions[:, :-1])
        return x @ self.params["W_vocab"] + self.params["b_vocab"]

    def loss(
        self,
        features: np.ndarray,
        captions: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        feature_grad: bool = False,
    ) -> tuple[float, dict]:
        """Training loss and gradients (the cs231n captioning contract).

        Args:
            features: image features, pooled (N, D) or a grid (N, L, D).
            captions: ground-truth captions, (N, T) integers in [0, V); the model reads
                ``captions[:, :-1]`` and predicts ``captions[:, 1:]``; ``<NULL>`` targets
                are masked out. ``T - 1 <= max_length``.
            mask: optional boolean (N, T-1): which targets count, replacing the
                ``<NULL>``-derived mask.
            feature_grad: also return the gradient of the loss with respect to
                ``features`` as ``grads["features"]`` (features' shape, the model's dtype).

        Returns:
            ``(loss, grads)``: the scalar loss (summed over time, averaged over N) and a
            dict of gradients keyed and shaped like :attr:`params` (plus ``features``).
        """
        features = self._check_features(features)
        N = features.shape[0]
        captions = self._check_captions(captions, N)
        captions_in = captions[:, :-1]  # (N, T-1)
        captions_out = captions[:, 1:]  # (N, T-1)
        if mask is None:
            mask = captions_out != self._null  # (N, T-1)
        else:
            mask = np.asarray(mask)
            if mask.shape != captions_out.shape:
                raise ValueError(f"mask must be (N, T-1) = {captions_out.shape}, got {mask.shape}")
            mask = mask.astype(bool)
        p = self.params
        x, cache = self._forward(features, captions_in)  # (N, T-1, W)

        # Word scores only where a word is predicted, as CaptioningRNN.loss does.
        _, Tm1, W = x.shape
        rows = np.flatnonzero(mask.reshape(-1))  # (M,) positions that count
        x_rows = x.reshape(N * Tm1, W)[rows]  # (M, W)
        scores, c_scores = nn.affine_forward(x_rows, p["W_vocab"], p["b_vocab"])  # (M, V)
        targets = captions_out.reshape(-1)[rows]  # (M,)
        # temporal_softmax_loss averages over its first axis (1 here): divide by N after
        loss, dscores = nn.temporal_softmax_loss(
            scores[None], targets[None], np.ones((1, rows.size), dtype=bool)
        )  # dscores (1, M, V)
        loss /= N

        scale = np.asarray(1.0 / N, dtype=self.dtype)
        if rows.size:
            dx_rows, dW_vocab, db_vocab = nn.affine_backward(dscores[0] * scale, c_scores)
        else:  # nothing to predict
            dx_rows, dW_vocab, db_vocab = x_rows, np.zeros_like(p["W_vocab"]), p["b_vocab"] * 0
        dx = np.zeros((N * Tm1, W), dtype=x.dtype)
        dx[rows] = dx_rows
        grads, dfeatures = self._backward(dx.reshape(N, Tm1, W), cache, feature_grad)
        grads["W_vocab"], grads["b_vocab"] = dW_vocab, db_vocab
        grads = {name: grads[name] for name in p}
        if feature_grad:
            grads["features"] = dfeatures
        return float(loss), grads
