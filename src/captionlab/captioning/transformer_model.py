"""The Transformer captioner of cs231n assignment 3 (2021 and later), in NumPy with
hand-written backward passes, attending to the spatial grid of image features.

Dimensions: ``N`` batch, ``T`` caption length, ``D`` feature size, ``L`` grid cells (1 for
pooled features), ``W`` word-vector size (the model width, ``E`` in :mod:`captionlab.nn.
transformer`), ``h`` heads, ``F`` feed-forward size, ``V`` vocabulary size.

The forward pass of :meth:`CaptioningTransformer.loss`::

    memory = features @ W_proj + b_proj            # (N, L, W): one token per grid cell,
                                                   # or (N, 1, W) for pooled (N, D) features
    memory = LN(memory)                            # only with memory_norm: the cells'
                                                   # content at a fixed scale
    memory = memory + W_pos                        # (L, W), only with num_cells = L: a
                                                   # learned position embedding per cell
    memory = EncoderLayer_e(memory)                # e = 0 .. encoder_layers-1, post-norm:
             # m = LN1(m + Drop(SelfAttn(m)));  m = LN2(m + Drop(FFN(m)))
             # (torch.nn.TransformerEncoderLayer): each cell sees the others
    x      = W_embed[captions[:, :-1]]             # (N, T-1, W)
    x      = Dropout(x + PE[:T-1])                 # sinusoidal positional encoding
    x      = DecoderLayer_l(x, memory, causal)     # l = 0 .. num_layers-1, post-norm:
             # x = LN1(x + Drop(SelfAttn(x)));  x = LN2(x + Drop(CrossAttn(x, memory)))
             # x = LN3(x + Drop(FFN(x)))        (torch.nn.TransformerDecoderLayer)
             # with locations, P (L, 2) the cells' centres and alpha_i (N, T', L) head
             # i's cross-attention weights: x = LN2(x + Drop(CrossAttn(x, memory)
             #     + [alpha_1 @ P | ... | alpha_h @ P] @ W_loc_l))   (W_loc_l (2h, W))
             # with location_summary also + [S_1 | ... | S_h] @ W_sum_l, S_i (N, T', 2)
             # head i's gated causal mean of the places looked at so far, the gates
             # sigmoid(x1 @ w_gate_l + b_gate_l) (N, T', h), x1 the cross-attention's input
             # with coverage, head i's weights are alpha_i = softmax(Z_i + g_i C_i), Z_i its
             # plain scores, C_i[t] = sum_{s<t} softmax(Z_i[s]) (N, T', L) what it looked at
             # before word t, g_i = c_i + q_i u_i / sqrt(d) (N, T') with c_cov_l (h,) and
             # u_cov_l (W,) (head i's u_i in its d columns); the loc reads this alpha
    scores = x @ W_vocab + b_vocab                 # (N, T-1, V)
    loss   = softmax cross-entropy of scores against captions[:, 1:], <NULL> masked,
             summed over time, averaged over N     (as CaptioningRNN)

The causal mask lets word ``t`` attend to words ``0..t`` only, so one pass trains every
position at once (teacher forcing).

Decoding (:meth:`CaptioningTransformer.decode_start` / :meth:`~CaptioningTransformer.
decode_step`, the interface of :mod:`captionlab.captioning.generate`) is incremental: a word
at position ``t`` needs, in every layer, the keys and values of words ``0..t-1`` (which do
not change once computed, the mask being causal) and of the image memory (which do not
depend on the words). So ``decode_start`` projects the memory and its per-layer keys and
values once, and each step runs the layers on the one new position, appending its keys and
values to a per-row cache::

    x_t     = W_embed[w_t] + PE[t]                          # (M, W), one position per row
    for each layer l:
        q, k, v  = x_t @ [Wq | Wk | Wv] + b                 # (M, W) each, split in h heads
        K_l, V_l = [K_l ; k], [V_l ; v]                     # the cache, (M, h, t+1, d)
        x_t = LN1(x_t + Attn(q, K_l, V_l) @ Wo + bo)        # no mask: the cache is the past
        x_t = LN2(x_t + Attn(x_t @ Wq' + bq', Kmem_l, Vmem_l) @ Wo' + bo')
        x_t = LN3(x_t + FFN(x_t))
    scores  = x_t @ W_vocab + b_vocab                       # (M, V)

(with locations, ``LN2``'s sum also holds ``[alpha_1 @ P | ... | alpha_h @ P] @ W_loc``,
``alpha_i`` (M, L) head ``i``'s weights over the memory; with location_summary also
``[S_1 | ... | S_h] @ W_sum`` from two running sums per row and layer, ``sum g_s m_s``
(M, h, 2) and ``sum g_s`` (M, h); with coverage, the heads' scores biased by a running
sum of their plain weights over the earlier words, (M, h, L) per row and layer) which is
exactly position ``t`` of
the teacher-forced pass (the tests compare the two, and
``decode_start(..., cache=False)`` reruns the whole prefix at every step, as the
assignment's ``sample`` does). Decoding never drops out, whatever the mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from captionlab import nn
from captionlab.captioning._inputs import check_captions
from captionlab.captioning.generate import DecodeState, greedy_decode
from captionlab.nn.attention import cell_locations, is_square_grid


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a :class:`CaptioningTransformer` apart from its weights.

    ``grid`` says which features the model is meant for (what :attr:`CaptioningTransformer.
    feature_shape` reports, so the solver, checkpoints and ``captionlab evaluate`` feed it
    the right kind): a grid of cells (N, L, D) or pooled vectors (N, D). ``num_cells``
    (grids only) fixes L and adds a learned position embedding per cell. ``memory_norm``
    layer-normalises the projected memory; ``encoder_layers`` encoder layers run over it
    before the decoder; ``locations`` (grids only) makes every decoder layer read the places
    its cross-attention heads looked at, and ``location_summary`` (with ``locations``) a
    gated running mean of the places looked at so far; ``coverage`` biases every decoder
    layer's cross-attention by what its heads looked at before. They default to the
    architecture of files written before they existed (off, 0, off, off, off).
    """

    input_dim: int = 512
    wordvec_dim: int = 256
    num_heads: int = 4
    num_layers: int = 2
    max_length: int = 50
    dropout: float = 0.1
    dim_feedforward: int = 2048
    dtype: str = "float32"
    grid: bool = False
    num_cells: int | None = None
    memory_norm: bool = False
    encoder_layers: int = 0
    locations: bool = False
    location_summary: bool = False
    coverage: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def transformer_param_shapes(config: TransformerConfig, vocab_size: int) -> dict[str, tuple]:
    """The shape of every parameter of a model with ``config`` and ``V = vocab_size``:
    ``W_embed`` (V, W), ``W_proj`` (D, W), ``b_proj`` (W,), ``W_pos`` (L, W) (only with
    ``num_cells = L``), ``memory_norm.gamma`` and ``memory_norm.beta`` (W,) (only with
    ``memory_norm``), ``encoder.{e}.{key}`` for each key of
    :data:`captionlab.nn.ENCODER_LAYER_KEYS`, ``layers.{l}.{key}`` for each key of
    :data:`captionlab.nn.DECODER_LAYER_KEYS` (and ``layers.{l}.cross_attn.W_loc`` (2h, W)
    with ``locations``; ``layers.{l}.cross_attn.w_gate`` (W, h), ``.b_gate`` (h,) and
    ``.W_sum`` (2h, W) with ``location_summary``; ``layers.{l}.cross_attn.c_cov`` (h,) and
    ``.u_cov`` (W,) with ``coverage``), ``W_vocab`` (W, V), ``b_vocab`` (V,)."""
    V, D, W = vocab_size, config.input_dim, config.wordvec_dim
    shapes: dict[str, tuple] = {"W_embed": (V, W), "W_proj": (D, W), "b_proj": (W,)}
    if config.num_cells is not None:
        shapes["W_pos"] = (config.num_cells, W)
    if config.memory_norm:
        shapes["memory_norm.gamma"], shapes["memory_norm.beta"] = (W,), (W,)
    encoder = nn.encoder_layer_param_shapes(W, config.dim_feedforward)
    for i in range(config.encoder_layers):
        shapes.update({f"encoder.{i}.{key}": shape for key, shape in encoder.items()})
    layer = nn.decoder_layer_param_shapes(
        W,
        config.dim_feedforward,
        config.num_heads if config.locations else 0,
        config.locations and config.location_summary,
        config.num_heads if config.coverage else 0,
    )
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
        grid: the model is meant for grids (N, L, D) rather than pooled (N, D) features
            (:attr:`feature_shape`); without ``num_cells``, :meth:`loss` and decoding take
            either.
        num_cells: ``L`` (with ``grid``): a learned position embedding ``W_pos`` (L, W),
            starting at 0, is added to the memory, one row per cell, so that the decoder can
            tell the cells apart by place (attention alone treats the memory as a set:
            without it left and right are indistinguishable); features must then be grids
            of exactly L cells.
        memory_norm: layer-normalise the projected memory ``features @ W_proj + b_proj``
            (before the position embedding), so that every cell's token has the same scale
            whatever its features' norm.
        encoder_layers: post-norm encoder layers (self-attention among the memory's tokens,
            then a feed-forward block, ``F`` wide) between the memory and the decoder, so
            that each cell's token can carry where the other objects are.
        locations: (with ``grid``; the grid must be square, s*s cells) every decoder layer's
            cross-attention block also adds where each of its heads looked, the heads'
            ``alpha_i @ P`` side by side (N, T, 2h), ``P`` (L, 2) the cells' centres (x, y)
            in [-1, 1] (:func:`captionlab.nn.attention.cell_locations`), times
            ``layers.{l}.cross_attn.W_loc`` (2h, W): the decoder reads the place of what it
            attends to as two numbers per head instead of having to learn it from ``W_pos``
            through the values.
        location_summary: (with ``locations``) every decoder layer also adds, at each word,
            a gated mean of the places its heads looked at over the words so far,
            ``S_t = sum_{s<=t} g_s (alpha_s @ P) / sum_{s<=t} g_s`` per head, gates
            ``g = sigmoid(x1 @ w_gate + b_gate)`` (one per head, from the cross-attention's
            input), times ``layers.{l}.cross_attn.W_sum`` (2h, W): a later word (a relation)
            can read where an earlier one (the subject) was found, which the plain location
            read, one word's own look, does not carry forward.
        coverage: every decoder layer's cross-attention head ``i`` biases its scores by how
            much it already looked at each cell at the earlier words,
            ``alpha_i = softmax(Z_i + g_i C_i)``, ``C_i[t] = sum_{s<t} softmax(Z_i[s])``,
            ``g_i = c_i + q_i u_i / sqrt(d)`` (:func:`captionlab.nn.
            coverage_attention_forward`), with a learned scalar per head
            ``layers.{l}.cross_attn.c_cov`` (h,) and query direction ``.u_cov`` (W,), both
            starting at 0 (the plain model): a head can learn to turn away from an object it
            has described (or back to it), word by word.

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
        grid: bool = False,
        num_cells: int | None = None,
        memory_norm: bool = False,
        encoder_layers: int = 0,
        locations: bool = False,
        location_summary: bool = False,
        coverage: bool = False,
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
        if num_cells is not None and (not grid or int(num_cells) != num_cells or num_cells < 1):
            raise ValueError(f"num_cells must be None or an int >= 1 with grid, got {num_cells!r}")
        if int(encoder_layers) != encoder_layers or encoder_layers < 0:
            raise ValueError(f"encoder_layers must be an int >= 0, got {encoder_layers!r}")
        if locations and not grid:
            raise ValueError("locations (the cells' places) needs a grid model (grid=True)")
        if locations and num_cells is not None:
            cell_locations(int(num_cells))  # ValueError unless the grid is square
        if location_summary and not locations:
            raise ValueError("location_summary (a running mean of the places) needs locations")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.num_heads = int(num_heads)
        self.num_layers = int(num_layers)
        self.max_length = int(max_length)
        self.dropout = float(dropout)
        self.grid = bool(grid)
        self.memory_norm = bool(memory_norm)
        self.encoder_layers = int(encoder_layers)
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
            grid=self.grid,
            num_cells=None if num_cells is None else int(num_cells),
            memory_norm=self.memory_norm,
            encoder_layers=self.encoder_layers,
            locations=bool(locations),
            location_summary=bool(location_summary),
            coverage=bool(coverage),
        )
        self.params: dict[str, np.ndarray] = {}
        for name, shape in transformer_param_shapes(config, len(word_to_idx)).items():
            if name.endswith("gamma"):
                value = np.ones(shape)
            elif len(shape) == 1 or name == "W_pos":  # biases, LayerNorm shifts, positions
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
            grid=self.grid,
            num_cells=self.num_cells,
            memory_norm=self.memory_norm,
            encoder_layers=self.encoder_layers,
            locations=self.locations,
            location_summary=self.location_summary,
            coverage=self.coverage,
        )

    @property
    def locations(self) -> bool:
        """Whether the decoder layers read the places they attend to (``cross_attn.W_loc``)."""
        return f"layers.0.{nn.DECODER_LOCATION_KEY}" in self.params

    @property
    def location_summary(self) -> bool:
        """Whether the decoder layers read a running mean of the places they attended to
        (``cross_attn.W_sum``)."""
        return f"layers.0.{nn.DECODER_SUMMARY_KEYS[-1]}" in self.params

    @property
    def coverage(self) -> bool:
        """Whether the decoder layers' cross-attention is biased by coverage
        (``cross_attn.c_cov`` and ``u_cov``)."""
        return f"layers.0.{nn.DECODER_COVERAGE_KEYS[0]}" in self.params

    @property
    def num_cells(self) -> int | None:
        """``L`` of a model with a position embedding per cell, else ``None``."""
        W_pos = self.params.get("W_pos")
        return None if W_pos is None else int(W_pos.shape[0])

    def expected_shapes(self) -> dict[str, tuple]:
        """The shape each parameter must have, from :attr:`config` and ``V``."""
        return transformer_param_shapes(self.config, len(self.word_to_idx))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CaptioningTransformer(V={len(self.word_to_idx)}, D={c.input_dim}, "
            f"W={c.wordvec_dim}, heads={c.num_heads}, layers={c.num_layers}, "
            f"F={c.dim_feedforward}, dropout={c.dropout}, dtype={c.dtype}, grid={c.grid}, "
            f"L={c.num_cells}, memory_norm={c.memory_norm}, encoder_layers={c.encoder_layers}, "
            f"locations={c.locations}, location_summary={c.location_summary}, "
            f"coverage={c.coverage})"
        )

    @property
    def feature_shape(self) -> tuple[int | None, ...]:
        """The shape of one image's features: ``(L, D)`` for a grid model with a position
        embedding, ``(None, D)`` (a grid of any number of cells) for one without, else
        ``(D,)``."""
        D = int(self.params["W_proj"].shape[0])
        return (self.num_cells, D) if self.grid else (D,)

    # ------------------------------------------------------------------ checkpoints
    # What captionlab.captioning.checkpoint needs of every captioner class.
    def config_dict(self) -> dict:
        """The architecture as JSON-able values (a checkpoint's ``model`` field)."""
        return self.config.to_dict()

    @classmethod
    def shapes_for(cls, config: dict, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """The parameter shapes a model of ``config`` has, without building it. Raises
        ValueError or TypeError when ``config`` is malformed."""
        return transformer_param_shapes(_transformer_config(config), vocab_size)

    @classmethod
    def from_config(
        cls, word_to_idx: dict[str, int], config: dict, seed: int = 0
    ) -> CaptioningTransformer:
        """A model of the architecture ``config``, initialised from ``seed`` (weights to be
        loaded over it, or trained)."""
        c = _transformer_config(config)
        return cls(
            word_to_idx, c.input_dim, c.wordvec_dim, c.num_heads, c.num_layers, c.max_length,
            c.dropout, np.dtype(c.dtype), seed=seed, dim_feedforward=c.dim_feedforward,
            grid=c.grid, num_cells=c.num_cells, memory_norm=c.memory_norm,
            encoder_layers=c.encoder_layers, locations=c.locations,
            location_summary=c.location_summary, coverage=c.coverage,
        )  # fmt: skip

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
        keys = nn.decoder_layer_keys(self.locations, self.location_summary, self.coverage)
        return {key: self.params[prefix + key] for key in keys}

    def _encoder_params(self, i: int) -> dict[str, np.ndarray]:
        prefix = f"encoder.{i}."
        return {key: self.params[prefix + key] for key in nn.ENCODER_LAYER_KEYS}

    # ------------------------------------------------------------------ forward / backward
    def _check_features(self, features: np.ndarray) -> np.ndarray:
        D = self.params["W_proj"].shape[0]
        features = np.asarray(features)
        if features.ndim not in (2, 3) or features.shape[-1] != D:
            raise ValueError(
                f"features must be pooled (N, {D}) or a grid (N, L, {D}), got {features.shape}"
            )
        L = self.num_cells
        if L is not None and (features.ndim != 3 or features.shape[1] != L):
            raise ValueError(
                f"features must be a grid (N, {L}, {D}) (the model's num_cells = {L}), "
                f"got {features.shape}"
            )
        if self.locations:
            if features.ndim != 3 or not is_square_grid(features.shape[1]):
                raise ValueError(
                    f"features must be a square grid of s*s cells (N, s*s, {D}) (the model "
                    f"reads the cells' places, locations=True), got {features.shape}"
                )
        return features.astype(self.dtype, copy=False)

    def _check_captions(self, captions: np.ndarray, N: int) -> np.ndarray:
        captions = check_captions(captions, N)
        if captions.shape[1] - 1 > self.max_length:
            raise ValueError(
                f"captions must have T - 1 <= max_length = {self.max_length} input words, "
                f"got T = {captions.shape[1]}"
            )
        return captions

    def _encode(
        self, features: np.ndarray, p_drop: float = 0.0, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple]:
        """The image memory the decoder attends to (the module docstring's first lines):
        checked features (N, D) or (N, L, D) -> ``(memory (N, L, W), cache)`` (L = 1 for
        pooled features); ``p_drop`` and ``rng`` are the encoder layers' dropout."""
        p = self.params
        N, D = features.shape[0], features.shape[-1]
        features2 = features.reshape(-1, D)  # (N*L, D)
        memory = features2 @ p["W_proj"]  # (N*L, W)
        memory += p["b_proj"]
        memory = memory.reshape(N, -1, memory.shape[1])  # (N, L, W)
        c_norm = None
        if self.memory_norm:
            memory, c_norm = nn.layernorm_forward(
                memory, p["memory_norm.gamma"], p["memory_norm.beta"]
            )  # (N, L, W)
        if "W_pos" in p:
            memory += p["W_pos"]  # (L, W): each cell's place
        c_encoder = []
        for i in range(self.encoder_layers):
            memory, c = nn.encoder_layer_forward(
                memory, self._encoder_params(i), self.num_heads, p_drop, rng
            )  # (N, L, W)
            c_encoder.append(c)
        return memory, (features.shape, features2, c_norm, c_encoder)

    def _encode_backward(
        self, dmemory: np.ndarray, cache: tuple, grads: dict, feature_grad: bool, hold: bool
    ) -> np.ndarray | None:
        """Backward of :meth:`_encode`: dmemory (N, L, W) -> the parameters' gradients,
        written into ``grads``, and dfeatures (the features' shape) if ``feature_grad``;
        ``hold`` as :meth:`loss`'s ``hold_attention``."""
        features_shape, features2, c_norm, c_encoder = cache
        for i in reversed(range(self.encoder_layers)):
            dmemory, dlayer = nn.encoder_layer_backward(dmemory, c_encoder[i], hold)  # (N, L, W)
            for key, g in dlayer.items():
                grads[f"encoder.{i}.{key}"] = g
        N, L, W = dmemory.shape
        if self.num_cells is not None:
            grads["W_pos"] = dmemory.sum(axis=0)  # (L, W): added to every image's memory
        if self.memory_norm:
            dmemory, grads["memory_norm.gamma"], grads["memory_norm.beta"] = nn.layernorm_backward(
                dmemory, c_norm, hold
            )
        dmemory = dmemory.reshape(N * L, W)
        grads["W_proj"] = features2.T @ dmemory  # (D, W)
        grads["b_proj"] = dmemory.sum(axis=0)  # (W,)
        if not feature_grad:  # skip the (N*L, W) x (W, D) GEMM nobody asked for
            return None
        return (dmemory @ self.params["W_proj"].T).reshape(features_shape)

    def _forward(
        self, features: np.ndarray, words: np.ndarray, p_drop: float | None = None
    ) -> tuple[np.ndarray, tuple]:
        """Teacher-forced decoder states.

        Args:
            features: checked features, (N, D) or (N, L, D).
            words: the input words, (N, T') integers with T' <= max_length.
            p_drop: the dropout probability (default: the model's in training mode, else 0).

        Returns:
            ``(x, cache)`` with x (N, T', W), the last decoder layer's output.
        """
        p = self.params
        if p_drop is None:
            p_drop = self.dropout if self.training else 0.0
        rng = self._rng if p_drop else None
        memory, c_memory = self._encode(features, p_drop, rng)  # (N, L, W)
        x, c_embed = nn.word_embedding_forward(words, p["W_embed"])  # (N, T', W)
        x, c_pos = nn.positional_encoding_forward(x, p_drop, rng)  # (N, T', W)
        T = words.shape[1]
        causal = np.tril(np.ones((T, T), dtype=bool))  # word t sees words 0..t
        P = cell_locations(memory.shape[1], self.dtype) if self.locations else None  # (L, 2)
        summary, coverage = self.location_summary, self.coverage
        c_layers = []
        for i in range(self.num_layers):
            params = self._layer_params(i)
            x, c = nn.decoder_layer_forward(
                x, memory, params, self.num_heads, causal, p_drop, rng, P, summary, coverage
            )  # (N, T', W)
            c_layers.append(c)
        return x, (c_memory, c_embed, c_pos, c_layers)

    def _backward(
        self, dx: np.ndarray, cache: tuple, feature_grad: bool, hold: bool = False
    ) -> tuple[dict, np.ndarray | None]:
        """Backward of :meth:`_forward`: dx (N, T', W) -> (grads without the output
        projection, dfeatures of the features' shape or ``None`` unless ``feature_grad``);
        ``hold`` as :meth:`loss`'s ``hold_attention``."""
        c_memory, c_embed, c_pos, c_layers = cache
        grads: dict[str, np.ndarray] = {}
        dmemory = None
        for i in reversed(range(self.num_layers)):
            dx, dmem, dlayer = nn.decoder_layer_backward(dx, c_layers[i], hold)
            dmemory = dmem if dmemory is None else dmemory + dmem  # (N, L, W)
            for key, g in dlayer.items():
                grads[f"layers.{i}.{key}"] = g
        dx = nn.positional_encoding_backward(dx, c_pos)
        grads["W_embed"] = nn.word_embedding_backward(dx, c_embed)
        return grads, self._encode_backward(dmemory, c_memory, grads, feature_grad, hold)

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
        hold_attention: bool = False,
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
            hold_attention: take every gradient with the attention weights (self-,
                cross- and encoder attention, with their coverage and the places read)
                and the layer norms' row scales held constant: nothing flows back through
                the scores or a norm's variance (conservative propagation, Ali et al.
                2022). For explanations ("given where it looked, what made it say the
                word"); not for training.

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
        grads, dfeatures = self._backward(
            dx.reshape(N, Tm1, W), cache, feature_grad, hold_attention
        )
        grads["W_vocab"], grads["b_vocab"] = dW_vocab, db_vocab
        grads = {name: grads[name] for name in p}
        if feature_grad:
            grads["features"] = dfeatures
        return float(loss), grads

    # ------------------------------------------------------------------ decoding
    def decode_start(
        self, features: np.ndarray, max_length: int = 30, cache: bool = True
    ) -> DecodeState:
        """The decoding state of N images (see :mod:`captionlab.captioning.generate`).

        With ``cache`` (the default) the memory's keys and values of every layer are
        computed here, once per call, and kept in ``shared`` (per image; rows index them
        by ``image``); each row carries its own self-attention cache, one position longer
        after every step. ``cache=False`` keeps only the words so far and reruns the whole
        prefix at every step (the assignment's ``sample``; the reference the tests and
        benchmark compare against).

        Args:
            features: image features, pooled (N, D) or a grid (N, L, D).
            max_length: the most words the call generates; at most :attr:`max_length`
                (the positional encoding's length).
            cache: decode incrementally (see above).

        Returns:
            a state with rows ``image`` (N,) and, per layer ``l``, ``k{l}`` (N, h, d, 0)
            and ``v{l}`` (N, h, 0, d) (and with location_summary the running sums
            ``sum_gm{l}`` (N, h, 2) and ``sum_g{l}`` (N, h), zero; with coverage the running
            sum of each head's plain weights ``cov{l}`` (N, h, L), zero) (with ``cache``) or
            ``prefix`` (N, 0) (without).
        """
        if not 1 <= max_length <= self.max_length:
            raise ValueError(
                f"max_length must be in [1, {self.max_length}] (the model's max_length, the "
                f"positions it encodes), got {max_length}"
            )
        features = self._check_features(features)
        N = features.shape[0]
        rows: dict[str, np.ndarray] = {"image": np.arange(N)}
        if not cache:
            rows["prefix"] = np.empty((N, 0), dtype=np.int64)
            return DecodeState(rows, {"features": features})
        memory, _ = self._encode(features)  # (N, L, W), dropout off
        L, W = memory.shape[1:]
        h = self.num_heads
        d = W // h
        # Positions 0 .. max_length-1 of the positional encoding, once per call.
        shared: dict = {"pe": nn.sinusoidal_positional_encoding(max_length, W, self.dtype)}
        if self.locations:
            shared["P"] = cell_locations(L, self.dtype)  # (L, 2)
        for i in range(self.num_layers):
            lp = self._layer_params(i)
            # the self-attention's q, k, v from one GEMM per step, as in training
            lp["self_attn.Wqkv"] = np.concatenate(
                [lp["self_attn.Wq"], lp["self_attn.Wk"], lp["self_attn.Wv"]], axis=1
            )  # (W, 3W)
            lp["self_attn.bqkv"] = np.concatenate(
                [lp["self_attn.bq"], lp["self_attn.bk"], lp["self_attn.bv"]]
            )
            shared[f"layer{i}"] = lp
            Wkv = np.concatenate([lp["cross_attn.Wk"], lp["cross_attn.Wv"]], axis=1)  # (W, 2W)
            bkv = np.concatenate([lp["cross_attn.bk"], lp["cross_attn.bv"]])
            kv = (memory.reshape(N * L, W) @ Wkv + bkv).reshape(N, L, 2, h, d)
            # keys (N, h, d, L) and values (N, h, L, d): a query row (1, d) multiplies them
            # as they are
            shared[f"mem_k{i}"] = np.ascontiguousarray(kv[:, :, 0].transpose(0, 2, 3, 1))
            shared[f"mem_v{i}"] = np.ascontiguousarray(kv[:, :, 1].transpose(0, 2, 1, 3))
            rows[f"k{i}"] = np.empty((N, h, d, 0), dtype=self.dtype)
            rows[f"v{i}"] = np.empty((N, h, 0, d), dtype=self.dtype)
            if self.location_summary:  # the running sums sum g_s m_s and sum g_s
                rows[f"sum_gm{i}"] = np.zeros((N, h, 2), dtype=self.dtype)
                rows[f"sum_g{i}"] = np.zeros((N, h), dtype=self.dtype)
            if self.coverage:  # sum over the earlier words of each head's plain weights
                rows[f"cov{i}"] = np.zeros((N, h, L), dtype=self.dtype)
        return DecodeState(rows, shared)

    def decode_step(
        self, words: np.ndarray, state: DecodeState
    ) -> tuple[np.ndarray, DecodeState, np.ndarray | None]:
        """Feed back ``words`` (M,) at the next position of every row.

        Returns:
            ``(scores, state, attention)``: word scores (M, V) (logits), the state one
            position longer, and the cross-attention of the last layer to the L image
            tokens, averaged over the heads, (M, L) (``None`` for pooled features, a single
            token).
        """
        words = np.asarray(words)
        if "prefix" in state.rows:
            return self._recompute_step(words, state)
        p = self.params
        t = state.rows["k0"].shape[3]  # the position of this step
        if t >= len(state.shared["pe"]):
            raise ValueError(f"the state was started for {len(state.shared['pe'])} steps")
        x = p["W_embed"][words] + state.shared["pe"][t]  # (M, W)
        image = state.rows["image"]
        rows = {"image": image}
        attention = None
        for i in range(self.num_layers):
            sums = None
            if self.location_summary:
                sums = (state.rows[f"sum_gm{i}"], state.rows[f"sum_g{i}"])
            x, rows[f"k{i}"], rows[f"v{i}"], alpha, sums, cov = _decoder_layer_step(
                x,
                state.rows[f"k{i}"],
                state.rows[f"v{i}"],
                _MemoryRows(state.shared[f"mem_k{i}"], state.shared[f"mem_v{i}"], image),
                state.shared[f"layer{i}"],
                self.num_heads,
                state.shared.get("P"),
                sums,
                state.rows.get(f"cov{i}"),
            )
            if sums is not None:
                rows[f"sum_gm{i}"], rows[f"sum_g{i}"] = sums
            if cov is not None:
                rows[f"cov{i}"] = cov
            attention = alpha
        scores = x @ p["W_vocab"]  # (M, V)
        scores += p["b_vocab"]
        if attention.shape[-1] == 1:  # one pooled token: nothing to show
            attention = None
        else:
            attention = attention.mean(axis=1)  # (M, L), averaged over the heads
        return scores, DecodeState(rows, state.shared), attention

    def _recompute_step(self, words: np.ndarray, state: DecodeState):
        """:meth:`decode_step` without a cache: the whole prefix again (dropout off)."""
        prefix = np.concatenate([state.rows["prefix"], words[:, None]], axis=1)  # (M, t+1)
        image = state.rows["image"]
        features = state.shared["features"][image]
        x, cache = self._forward(features, prefix, p_drop=0.0)  # (M, t+1, W)
        scores = x[:, -1] @ self.params["W_vocab"] + self.params["b_vocab"]  # (M, V)
        attention = None
        if features.ndim == 3 and features.shape[1] > 1:
            _, weights = nn.decoder_layer_attention(cache[-1][-1])  # (M, h, t+1, L)
            attention = weights[:, :, -1].mean(axis=1)  # (M, L)
        return scores, DecodeState({"image": image, "prefix": prefix}, state.shared), attention

    def sample(self, features: np.ndarray, max_length: int = 30) -> np.ndarray:
        """Greedy decoding from ``<START>`` (cs231n ``sample``), incremental.

        Args:
            features: image features, pooled (N, D) or a grid (N, L, D).
            max_length: the number of words generated at most.

        Returns:
            captions (N, max_length) int32 without ``<START>``; each stops at its first
            ``<END>`` (kept) and is ``<NULL>`` after it.
        """
        return greedy_decode(self, features, max_length=max_length)


class _MemoryRows:
    """The memory keys (N, h, d, L) and values (N, h, L, d) of one layer, seen by the rows
    ``image`` (M,) that index them: :meth:`attend` mixes them without copying them when the
    rows are the images in order (greedy decoding, caption scoring) or each image ``B`` times
    in a row (beam search), and gathers them otherwise (rows dropped or reordered)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, image: np.ndarray) -> None:
        self.keys, self.values, self.image = keys, values, image

    def attend(
        self, q: np.ndarray, coverage: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q (M, h, d), scaled -> ``(y (M, h, d), weights (M, h, L), plain (M, h, L))``;
        with ``coverage = (g (M, h), C (M, h, L))`` the weights are
        ``softmax(scores + g C)`` and ``plain`` is ``softmax(scores)``, else both are the
        plain weights."""
        M, h, d = q.shape
        N = self.keys.shape[0]
        image = self.image
        if M % N == 0 and np.array_equal(image, np.repeat(np.arange(N), M // N)):
            B = M // N  # B rows per image, image by image: (N, h, B, d) @ (N, h, d, L)
            qg = q.reshape(N, B, h, d).transpose(0, 2, 1, 3)
            scores = (qg @ self.keys).transpose(0, 2, 1, 3).reshape(M, h, -1)  # (M, h, L)
            plain, weights = _coverage_weights(scores, coverage)
            wg = weights.reshape(N, B, h, -1).transpose(0, 2, 1, 3)  # (N, h, B, L)
            y = (wg @ self.values).transpose(0, 2, 1, 3).reshape(M, h, d)
            return y, weights, plain
        keys, values = self.keys[image], self.values[image]  # (M, h, d, L), (M, h, L, d)
        plain, weights = _coverage_weights((q[:, :, None] @ keys)[:, :, 0], coverage)
        return (weights[:, :, None] @ values)[:, :, 0], weights, plain


def _coverage_weights(
    scores: np.ndarray, coverage: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """scores (M, h, L) -> ``(softmax(scores), softmax(scores + g C))`` with
    ``coverage = (g (M, h), C (M, h, L))``; the plain weights twice without it."""
    plain = nn.masked_softmax(scores)  # (M, h, L)
    if coverage is None:
        return plain, plain
    g, C = coverage
    return plain, nn.masked_softmax(scores + g[..., None] * C)


def _decoder_layer_step(
    x: np.ndarray,
    cache_k: np.ndarray,
    cache_v: np.ndarray,
    memory: _MemoryRows,
    p: dict[str, np.ndarray],
    num_heads: int,
    P: np.ndarray | None = None,
    sums: tuple[np.ndarray, np.ndarray] | None = None,
    coverage: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple | None, np.ndarray | None]:
    """One decoder layer (:func:`captionlab.nn.decoder_layer_forward`, dropout 0) at one new
    position of M rows, given the keys (M, h, d, t) and values (M, h, t, d) of the t earlier
    positions. ``p`` holds the layer's parameters plus ``self_attn.Wqkv`` (W, 3W) and
    ``self_attn.bqkv`` (3W,), the three projections side by side; with the cells' places
    ``P`` (L, 2), also ``cross_attn.W_loc`` (2h, W); with the running sums ``sums`` of
    the t earlier positions, ``(sum g_s m_s (M, h, 2), sum g_s (M, h))`` (location summary),
    also ``cross_attn.w_gate``, ``cross_attn.b_gate`` and ``cross_attn.W_sum``; with
    ``coverage`` (M, h, L), the sum of each head's plain cross-attention weights over the t
    earlier positions, also ``cross_attn.c_cov`` (h,) and ``cross_attn.u_cov`` (W,).

    Returns:
        ``(out (M, W), keys (M, h, d, t+1), values (M, h, t+1, d), cross-attention weights
        (M, h, L), sums over the t+1 positions or None, coverage over the t+1 positions or
        None)``.
    """
    M, W = x.shape
    h = num_heads
    d = W // h
    t = cache_k.shape[3]
    scale = x.dtype.type(1 / np.sqrt(d))
    qkv = x @ p["self_attn.Wqkv"]  # (M, 3W)
    qkv += p["self_attn.bqkv"]
    qkv = qkv.reshape(M, 3, h, d)
    keys = np.empty((M, h, d, t + 1), dtype=x.dtype)
    keys[..., :t] = cache_k
    keys[..., t] = qkv[:, 1]
    values = np.empty((M, h, t + 1, d), dtype=x.dtype)
    values[:, :, :t] = cache_v
    values[:, :, t] = qkv[:, 2]
    q = qkv[:, 0, :, None] * scale  # (M, h, 1, d)
    weights = nn.masked_softmax(q @ keys)  # (M, h, 1, t+1): the cache is the past, no mask
    y = (weights @ values).reshape(M, W)  # heads side by side
    sa = y @ p["self_attn.Wo"] + p["self_attn.bo"]
    h1, _ = nn.layernorm_forward(x + sa, p["norm1.gamma"], p["norm1.beta"])  # (M, W)

    q = (h1 @ p["cross_attn.Wq"] + p["cross_attn.bq"]).reshape(M, h, d) * scale
    cov = None
    if coverage is not None:  # g = c + q . u (q scaled already), per row and head
        g = np.einsum("mhd,hd->mh", q, p["cross_attn.u_cov"].reshape(h, d))
        cov = (g + p["cross_attn.c_cov"], coverage)
    y, alpha, plain = memory.attend(q, cov)  # (M, h, d), (M, h, L), (M, h, L)
    if coverage is not None:
        coverage = coverage + plain  # what each head has looked at, this word included
    ca = y.reshape(M, W) @ p["cross_attn.Wo"] + p["cross_attn.bo"]
    if P is not None:  # where each head looked, (x, y) per head side by side
        m = alpha @ P  # (M, h, 2)
        ca += m.reshape(M, 2 * h) @ p[nn.DECODER_LOCATION_KEY]
        if sums is not None:  # the gated running mean of the places looked at so far
            g = nn.sigmoid(h1 @ p["cross_attn.w_gate"] + p["cross_attn.b_gate"])  # (M, h)
            sums = (sums[0] + g[..., None] * m, sums[1] + g)
            ca += (sums[0] / sums[1][..., None]).reshape(M, 2 * h) @ p["cross_attn.W_sum"]
    h2, _ = nn.layernorm_forward(h1 + ca, p["norm2.gamma"], p["norm2.beta"])

    ff, _ = nn.feedforward_forward(h2, p["ffn.W1"], p["ffn.b1"], p["ffn.W2"], p["ffn.b2"])
    out, _ = nn.layernorm_forward(h2 + ff, p["norm3.gamma"], p["norm3.beta"])
    return out, keys, values, alpha, sums, coverage


def _transformer_config(config: dict) -> TransformerConfig:
    """A :class:`TransformerConfig` from a dict of its fields (a checkpoint's ``model``);
    ValueError names what is wrong."""
    names = set(TransformerConfig.__dataclass_fields__)
    # absent in files written before position embeddings, memory norms, encoders, locations
    required = names - {
        "num_cells",
        "memory_norm",
        "encoder_layers",
        "locations",
        "location_summary",
        "coverage",
    }
    missing, unknown = required - set(config), set(config) - names
    if missing or unknown:
        raise ValueError(f"model fields must be {sorted(names)}; missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")  # fmt: skip
    c = TransformerConfig(
        input_dim=int(config["input_dim"]), wordvec_dim=int(config["wordvec_dim"]),
        num_heads=int(config["num_heads"]), num_layers=int(config["num_layers"]),
        max_length=int(config["max_length"]), dropout=float(config["dropout"]),
        dim_feedforward=int(config["dim_feedforward"]), dtype=str(config["dtype"]),
        grid=bool(config["grid"]),
        num_cells=None if config.get("num_cells") is None else int(config["num_cells"]),
        memory_norm=bool(config.get("memory_norm", False)),
        encoder_layers=int(config.get("encoder_layers", 0)),
        locations=bool(config.get("locations", False)),
        location_summary=bool(config.get("location_summary", False)),
        coverage=bool(config.get("coverage", False)),
    )  # fmt: skip
    if min(c.input_dim, c.wordvec_dim, c.num_heads, c.num_layers, c.max_length) < 1:
        raise ValueError(f"sizes must be >= 1, got {c}")
    if c.dim_feedforward < 1 or c.wordvec_dim % c.num_heads:
        raise ValueError(f"dim_feedforward must be >= 1 and num_heads divide wordvec_dim, got {c}")
    if not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    if np.dtype(c.dtype).kind != "f":
        raise ValueError(f"dtype must be a floating type, got {c.dtype!r}")
    if not isinstance(config["grid"], bool):
        raise ValueError(f"grid must be true or false, got {config['grid']!r}")
    if c.num_cells is not None and (c.num_cells < 1 or not c.grid):
        raise ValueError(f"num_cells must be None or >= 1 with grid, got {c.num_cells}")
    if not isinstance(config.get("memory_norm", False), bool):
        raise ValueError(f"memory_norm must be true or false, got {config['memory_norm']!r}")
    if c.encoder_layers < 0 or c.encoder_layers != config.get("encoder_layers", 0):
        raise ValueError(f"encoder_layers must be an int >= 0, got {config['encoder_layers']!r}")
    if not isinstance(config.get("locations", False), bool):
        raise ValueError(f"locations must be true or false, got {config['locations']!r}")
    if c.locations and not c.grid:
        raise ValueError("locations must be false for a model without grid")
    if c.locations and c.num_cells is not None:
        cell_locations(c.num_cells)  # ValueError unless the grid is square
    if not isinstance(config.get("location_summary", False), bool):
        raise ValueError(
            f"location_summary must be true or false, got {config['location_summary']!r}"
        )
    if c.location_summary and not c.locations:
        raise ValueError("location_summary must be false for a model without locations")
    if not isinstance(config.get("coverage", False), bool):
        raise ValueError(f"coverage must be true or false, got {config['coverage']!r}")
    return c
