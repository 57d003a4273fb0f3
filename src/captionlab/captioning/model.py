"""The image-captioning language model: CNN features -> recurrent net -> word scores.

The cs231n assignment-3 ``CaptioningRNN`` contract, exactly, plus a GRU cell.

Dimensions: ``N`` batch, ``T`` caption length, ``D`` feature size, ``W`` word-vector size,
``H`` hidden size, ``V`` vocabulary size.

The forward pass of :meth:`CaptioningRNN.loss`::

    h0     = features @ W_proj + b_proj                 # (N, H)
    x      = W_embed[captions[:, :-1]]                  # (N, T-1, W)
    h      = recurrence(x, h0; Wx, Wh, b[, bh])         # (N, T-1, H)
    scores = h @ W_vocab + b_vocab                      # (N, T-1, V)
    loss   = softmax cross-entropy of scores against captions[:, 1:], <NULL> masked,
             summed over time, averaged over N

The recurrence is ``rnn`` (``Wx`` is (W, H)), ``lstm`` (gates i, f, o, g in one
(W, 4H) / (H, 4H) matmul) or ``gru`` (gates r, z, n as in ``torch.nn.GRU``, (W, 3H) /
(H, 3H), and a recurrent bias ``bh`` (3H,) that the reset gate multiplies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from captionlab import nn
from captionlab.captioning._inputs import check_captions, longest_first
from captionlab.captioning.generate import DecodeState, greedy_decode

CELL_TYPES = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

# The order of the parameters in ``params`` (the GRU adds ``bh`` after ``b``).
PARAM_NAMES = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "bh", "W_vocab", "b_vocab")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`CaptioningRNN` apart from its weights."""

    input_dim: int = 512
    wordvec_dim: int = 128
    hidden_dim: int = 128
    cell_type: str = "rnn"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


class CaptioningRNN:
    """A recurrent captioning model over precomputed image features (cs231n contract).

    Args:
        word_to_idx: vocabulary, word -> index; must hold ``<NULL>``; ``<START>`` and
            ``<END>`` are needed by :meth:`sample`. ``V = len(word_to_idx)``.
        input_dim: ``D``, the size of an image feature vector.
        wordvec_dim: ``W``, the size of a word vector.
        hidden_dim: ``H``, the size of the hidden state.
        cell_type: ``'rnn'``, ``'lstm'`` or ``'gru'``.
        dtype: ``np.float32`` for training, ``np.float64`` for gradient checks.
        seed: ``None`` draws the initial weights from NumPy's global generator as cs231n
            does; an int draws them from a private generator (reproducible, no global state).

    Attributes:
        params: dict of parameter arrays, keyed by :data:`PARAM_NAMES` (``bh`` only for
            the GRU): ``W_embed`` (V, W), ``W_proj`` (D, H), ``b_proj`` (H,),
            ``Wx`` (W, G*H), ``Wh`` (H, G*H), ``b`` (G*H,), ``bh`` (3H,),
            ``W_vocab`` (H, V), ``b_vocab`` (V,), with G = 1, 4, 3 for rnn, lstm, gru.
    """

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        dtype=np.float32,
        seed: int | None = None,
    ) -> None:
        if cell_type not in CELL_TYPES:
            raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {cell_type!r}")
        if "<NULL>" not in word_to_idx:
            raise ValueError("word_to_idx must hold '<NULL>'")
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.params: dict[str, np.ndarray] = {}

        vocab_size = len(word_to_idx)
        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)

        randn = np.random.randn if seed is None else np.random.RandomState(seed).randn
        V, D, W, H, G = vocab_size, input_dim, wordvec_dim, hidden_dim, GATES[cell_type]
        # The cs231n initialisation, in the cs231n order of draws.
        self.params["W_embed"] = randn(V, W) / 100
        self.params["W_proj"] = randn(D, H) / np.sqrt(D)
        self.params["b_proj"] = np.zeros(H)
        self.params["Wx"] = randn(W, G * H) / np.sqrt(W)
        self.params["Wh"] = randn(H, G * H) / np.sqrt(H)
        self.params["b"] = np.zeros(G * H)
        if cell_type == "gru":
            self.params["bh"] = np.zeros(G * H)
        self.params["W_vocab"] = randn(H, V) / np.sqrt(H)
        self.params["b_vocab"] = np.zeros(V)
        for k, v in self.params.items():
            self.params[k] = v.astype(self.dtype)

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> ModelConfig:
        """The architecture, read from the parameter shapes."""
        D, H = self.params["W_proj"].shape
        return ModelConfig(
            input_dim=int(D),
            wordvec_dim=int(self.params["W_embed"].shape[1]),
            hidden_dim=int(H),
            cell_type=self.cell_type,
            dtype=self.dtype.name,
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each parameter must have, from :attr:`config` and ``V``."""
        return param_shapes(self.config, len(self.word_to_idx))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one image's features: ``(D,)``."""
        return (int(self.params["W_proj"].shape[0]),)

    # ------------------------------------------------------------------ checkpoints
    # What captionlab.captioning.checkpoint needs of every captioner class.
    def config_dict(self) -> dict:
        """The architecture as JSON-able values (a checkpoint's ``model`` field)."""
        return self.config.to_dict()

    @classmethod
    def shapes_for(cls, config: dict, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """The parameter shapes a model of ``config`` has, without building it (a
        checkpoint's arrays are checked against them first). Raises ValueError or TypeError
        when ``config`` is malformed."""
        return param_shapes(_model_config(config), vocab_size)

    @classmethod
    def from_config(cls, word_to_idx: dict[str, int], config: dict, seed: int = 0) -> CaptioningRNN:
        """A model of the architecture ``config``, initialised from ``seed`` (weights to be
        loaded over it, or trained)."""
        c = _model_config(config)
        return cls(
            word_to_idx, input_dim=c.input_dim, wordvec_dim=c.wordvec_dim,
            hidden_dim=c.hidden_dim, cell_type=c.cell_type, dtype=np.dtype(c.dtype), seed=seed,
        )  # fmt: skip

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CaptioningRNN(cell_type={c.cell_type!r}, V={len(self.word_to_idx)}, "
            f"D={c.input_dim}, W={c.wordvec_dim}, H={c.hidden_dim}, dtype={c.dtype})"
        )

    # ------------------------------------------------------------------ training loss
    def _check_features(self, features: np.ndarray) -> np.ndarray:
        D = self.params["W_proj"].shape[0]
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != D:
            raise ValueError(f"features must be (N, {D}), got {features.shape}")
        return features.astype(self.dtype, copy=False)

    def loss(
        self,
        features: np.ndarray,
        captions: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        feature_grad: bool = False,
    ) -> tuple[float, dict]:
        """Training loss and gradients (cs231n contract).

        Args:
            features: image features, (N, D).
            captions: ground-truth captions, (N, T) integers in [0, V); the model reads
                ``captions[:, :-1]`` and predicts ``captions[:, 1:]``; ``<NULL>`` targets
                are masked out.
            mask: (N, T-1) bool, which targets count, instead of "not ``<NULL>``" (one
                ``True`` gives the gradient of one word's log-probability, as explanations
                of a word need).
            feature_grad: also return the gradient with respect to ``features``.

        Returns:
            ``(loss, grads)``: the scalar loss (summed over time, averaged over N) and a
            dict of gradients keyed and shaped like :attr:`params`, plus ``"features"``
            (N, D) when ``feature_grad`` is set.
        """
        features = self._check_features(features)
        captions = check_captions(captions, features.shape[0])
        captions_in = captions[:, :-1]  # (N, T-1)
        captions_out = captions[:, 1:]  # (N, T-1)
        if mask is None:
            mask = captions_out != self._null  # (N, T-1)
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != captions_out.shape:
                raise ValueError(f"mask must be {captions_out.shape}, got {mask.shape}")
        p = self.params
        N, Tm1 = captions_in.shape
        V = p["W_embed"].shape[0]
        # Each caption runs only up to its last counted word: the rows are sorted longest
        # first, so the recurrence computes a shrinking prefix of rows at each step and no
        # product of the padding (PyTorch's packed sequences; the same loss and gradients).
        lengths, order = longest_first(mask)
        if order is not None:
            features, captions_in = features[order], captions_in[order]
            captions_out, mask = captions_out[order], mask[order]
        packed = nn.Lengths.of(lengths, N, Tm1)  # None: every caption runs every step

        h0, cache_proj = nn.affine_forward(features, p["W_proj"], p["b_proj"])  # (N, H)
        # The recurrence's input projection x @ Wx of the embedded words x = W_embed[words].
        # When the vocabulary has fewer words than the batch has positions, fold the two
        # into a table, (W_embed @ Wx)[words]: a GEMM over V rows instead of N*(T-1), and in
        # the backward the gradient is scattered into V rows before its two GEMMs. The same
        # math either way (the tests compare both with the layer-by-layer cs231n model).
        fold = V < N * Tm1
        if fold:
            table = p["W_embed"] @ p["Wx"]  # (V, G*H)
            xa, cache_embed = nn.word_embedding_forward(captions_in, table)  # (N, T-1, G*H)
        else:
            x, cache_embed = nn.word_embedding_forward(captions_in, p["W_embed"])  # (N,T-1,W)
            x2 = x.reshape(N * Tm1, -1)
            if packed is None:
                xa = x @ p["Wx"]  # (N, T-1, G*H)
            else:  # only the steps that run; the recurrence reads nothing else
                xa = np.zeros((N, Tm1, p["Wx"].shape[1]), dtype=x.dtype)
                xa.reshape(N * Tm1, -1)[packed.index] = x2[packed.index] @ p["Wx"]
        if self.cell_type == "rnn":
            h, cache_rnn = nn.rnn_recurrence_forward(xa, h0, p["Wh"], p["b"], packed)
        elif self.cell_type == "lstm":
            h, cache_rnn = nn.lstm_recurrence_forward(xa, h0, p["Wh"], p["b"], packed)
        else:
            h, cache_rnn = nn.gru_recurrence_forward(xa, h0, p["Wh"], p["b"], p["bh"], packed)
        # h: (N, T-1, H)
        # Word scores only where a word is predicted: <NULL> targets (the padding, often a
        # third of the positions) cost nothing in the loss, so their scores, softmax and
        # gradients are skipped. The same math as temporal_affine + temporal_softmax_loss
        # over all positions (the tests compare the two).
        H = h.shape[2]
        rows = np.flatnonzero(mask.reshape(-1))  # (M,) positions that count
        h_rows = h.reshape(N * Tm1, H)[rows]  # (M, H)
        scores, cache_scores = nn.affine_forward(h_rows, p["W_vocab"], p["b_vocab"])  # (M, V)
        targets = captions_out.reshape(-1)[rows]  # (M,)
        # temporal_softmax_loss averages over its first axis (1 here): divide by N after
        loss, dscores = nn.temporal_softmax_loss(
            scores[None], targets[None], np.ones((1, rows.size), dtype=bool)
        )  # dscores (1, M, V)
        loss /= N

        grads: dict[str, np.ndarray] = {}
        scale = np.asarray(1.0 / N, dtype=self.dtype)
        dscores = dscores[0]
        dscores *= scale  # (M, V), now the gradient of the loss averaged over N
        if rows.size:
            dh_rows, grads["W_vocab"], grads["b_vocab"] = nn.affine_backward(dscores, cache_scores)
        else:  # nothing to predict (all targets <NULL>)
            dh_rows, grads["W_vocab"], grads["b_vocab"] = h_rows, p["W_vocab"] * 0, p["b_vocab"] * 0
        dh = np.zeros((N * Tm1, H), dtype=h.dtype)
        dh[rows] = dh_rows
        dh = dh.reshape(N, Tm1, H)  # (N, T-1, H)
        if self.cell_type == "rnn":
            dxa, dh0, grads["Wh"], grads["b"] = nn.rnn_recurrence_backward(dh, cache_rnn)
        elif self.cell_type == "lstm":
            dxa, dh0, grads["Wh"], grads["b"] = nn.lstm_recurrence_backward(dh, cache_rnn)
        else:
            dxa, dh0, grads["Wh"], grads["b"], grads["bh"] = nn.gru_recurrence_backward(
                dh, cache_rnn
            )
        G = dxa.shape[2]
        if fold:
            dtable = nn.word_embedding_backward(dxa, cache_embed)  # (V, G*H)
            grads["Wx"] = p["W_embed"].T @ dtable  # (W, G*H)
            grads["W_embed"] = dtable @ p["Wx"].T  # (V, W)
        else:
            dxa2 = dxa.reshape(N * Tm1, G)
            if packed is None:
                grads["Wx"] = x2.T @ dxa2  # (W, G*H)
                dx = dxa2 @ p["Wx"].T  # (N*(T-1), W)
            else:  # dxa is zero past each caption's length: only the real steps' rows
                grads["Wx"] = packed.rows_product(x, dxa)  # (W, G*H)
                dx = np.zeros_like(x2)
                dx[packed.index] = dxa2[packed.index] @ p["Wx"].T
            grads["W_embed"] = nn.word_embedding_backward(dx.reshape(x.shape), cache_embed)
        dfeatures, grads["W_proj"], grads["b_proj"] = nn.affine_backward(dh0, cache_proj)
        if feature_grad:
            if order is not None:  # back to the caller's row order
                dfeatures[order] = dfeatures.copy()
            grads["features"] = dfeatures
        return float(loss), grads

    # ------------------------------------------------------------------ test-time
    def initial_state(self, features: np.ndarray) -> np.ndarray:
        """``h0 = features @ W_proj + b_proj``: features (N, D) -> (N, H)."""
        features = self._check_features(features)
        return features @ self.params["W_proj"] + self.params["b_proj"]

    def decode_start(
        self, features: np.ndarray, max_length: int = 30, fold: bool | None = None
    ) -> DecodeState:
        """The decoding state of N images (see :mod:`captionlab.captioning.generate`).

        Every step feeds back one word, whose input pre-activation ``W_embed[word] @ Wx + b``
        does not depend on time. With ``fold`` it is folded once per call into a table
        ``(V, G*H)``, so each step looks a row up and computes only ``h @ Wh``; the table
        costs ``V`` rows of ``x @ Wx``, so by default (``fold=None``) it is built when the
        call feeds back at least ``V`` words (``N * max_length >= V``). ``fold=False``
        steps with the ``captionlab.nn`` step functions themselves (the reference).

        Args:
            features: image features, (N, D).
            max_length: the most words the call generates (only sizes the decision).
            fold: build the input table (see above).

        Returns:
            a state with rows ``h`` (N, H) and, for the LSTM, ``c`` (N, H).
        """
        h0 = self.initial_state(features)  # (N, H)
        rows = {"h": h0}
        if self.cell_type == "lstm":
            rows["c"] = np.zeros_like(h0)
        p = self.params
        if fold is None:  # the table pays off once it replaces at least V input rows
            fold = h0.shape[0] * max_length >= p["W_embed"].shape[0]
        shared = {}
        if fold:
            # Hoisted out of the time loop: the input pre-activation of every word.
            shared["table"] = p["W_embed"] @ p["Wx"] + p["b"]  # (V, G*H)
        return DecodeState(rows, shared)

    def decode_step(
        self, words: np.ndarray, state: DecodeState
    ) -> tuple[np.ndarray, DecodeState, None]:
        """Feed back ``words`` (M,): word scores (M, V), the next state, no attention."""
        p = self.params
        h, c = state.rows["h"], state.rows.get("c")
        table = state.shared.get("table")
        if table is not None:
            h, c = cell_step_from_input(self.cell_type, table[words], h, c, p["Wh"], p.get("bh"))
        else:
            x = p["W_embed"][words]  # (M, W)
            if self.cell_type == "rnn":
                h = nn.rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])[0]
            elif self.cell_type == "lstm":
                h, c, _ = nn.lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
            else:
                h = nn.gru_step_forward(x, h, p["Wx"], p["Wh"], p["b"], p["bh"])[0]
        scores = h @ p["W_vocab"]  # (M, V)
        scores += p["b_vocab"]
        rows = {"h": h} if c is None else {"h": h, "c": c}
        return scores, DecodeState(rows, state.shared), None

    def sample(self, features: np.ndarray, max_length: int = 30) -> np.ndarray:
        """Greedy decoding from ``<START>`` (cs231n ``sample``).

        Args:
            features: image features, (N, D).
            max_length: ``T``, the number of words generated at most.

        Returns:
            captions (N, max_length) int32: the chosen word at each step (``<START>`` is not
            included); each caption stops at its first ``<END>`` (kept) and is padded with
            ``<NULL>`` after it.
        """
        return greedy_decode(self, features, max_length=max_length)


def cell_step_from_input(
    cell_type: str,
    xa: np.ndarray,
    prev_h: np.ndarray,
    prev_c: np.ndarray | None,
    Wh: np.ndarray,
    bh: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One recurrent step given the input pre-activation ``xa = x @ Wx + b``.

    Dispatches to ``captionlab.nn``'s ``rnn_cell_forward`` / ``lstm_cell_forward`` /
    ``gru_cell_forward``, the very functions the step layers use after computing
    ``x @ Wx + b``, so decoding has no second copy of the recurrence.

    Args:
        cell_type: ``'rnn'``, ``'lstm'`` or ``'gru'``.
        xa: input pre-activation (M, G*H).
        prev_h: (M, H).
        prev_c: (M, H) for the LSTM, else ignored.
        Wh: (H, G*H).
        bh: (3H,), the GRU's recurrent bias.

    Returns:
        ``(next_h, next_c)``, each (M, H); ``next_c`` is ``None`` except for the LSTM.
    """
    if cell_type == "rnn":
        return nn.rnn_cell_forward(xa, prev_h, Wh), None
    if cell_type == "lstm":
        next_h, next_c, _ = nn.lstm_cell_forward(xa, prev_h, prev_c, Wh)
        return next_h, next_c
    return nn.gru_cell_forward(xa, prev_h, Wh, bh)[0], None


def _model_config(config: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a dict of its fields; ValueError names what is wrong."""
    names = {"input_dim", "wordvec_dim", "hidden_dim", "cell_type", "dtype"}
    missing, unknown = names - set(config), set(config) - names
    if missing or unknown:
        raise ValueError(f"model fields must be {sorted(names)}; missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")  # fmt: skip
    c = ModelConfig(
        input_dim=int(config["input_dim"]), wordvec_dim=int(config["wordvec_dim"]),
        hidden_dim=int(config["hidden_dim"]), cell_type=str(config["cell_type"]),
        dtype=str(config["dtype"]),
    )  # fmt: skip
    if c.cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {c.cell_type!r}")
    if min(c.input_dim, c.wordvec_dim, c.hidden_dim) < 1:
        raise ValueError(f"sizes must be >= 1, got {c}")
    if np.dtype(c.dtype).kind != "f":
        raise ValueError(f"dtype must be a floating type, got {c.dtype!r}")
    return c


def param_shapes(config: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of a model with ``config`` and ``V = vocab_size``."""
    V, D, W, H = vocab_size, config.input_dim, config.wordvec_dim, config.hidden_dim
    G = GATES[config.cell_type]
    shapes = {
        "W_embed": (V, W),
        "W_proj": (D, H),
        "b_proj": (H,),
        "Wx": (W, G * H),
        "Wh": (H, G * H),
        "b": (G * H,),
        "W_vocab": (H, V),
        "b_vocab": (V,),
    }
    if config.cell_type == "gru":
        shapes["bh"] = (G * H,)
    return shapes
