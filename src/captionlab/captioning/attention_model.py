"""Show, Attend and Tell: an LSTM captioner with soft additive attention over a feature grid.

Xu et al. 2015, the soft-attention model, with the gate ``beta`` and the doubly stochastic
penalty. Dimensions: ``N`` batch, ``T`` caption length (the model reads ``captions[:, :-1]``
and predicts ``captions[:, 1:]``, ``T - 1`` steps), ``L`` grid cells, ``D`` cell-feature
size, ``W`` word-vector size, ``H`` hidden size, ``K`` attention size, ``V`` vocabulary.

The forward pass of :meth:`AttentionCaptioner.loss`, ``A`` the grid (N, L, D), for steps
``t = 1 .. T-1`` with ``x_t = W_embed[captions[:, t-1]]``::

    A       = A + W_pos   (only with num_cells = L: a learned position embedding per cell)
    P       = the cells' centres (L, 2), x and y in [-1, 1]            (only with locations)
    a_mean  = mean over the L cells of A                            (N, D)
    h_0     = a_mean @ W_h0 + b_h0,   c_0 = a_mean @ W_c0 + b_c0     (N, H)
    A_proj  = A @ W_att_a                                            (N, L, K)  once
    e_t     = tanh(A_proj + h_{t-1} @ W_att_h + b_att) @ w_att        (N, L)
           + P @ (h_{t-1} @ W_loc_q + b_loc_q)                      (N, L)     with locations
    alpha_t = softmax over the L cells of e_t                        (N, L)
    beta_t  = sigmoid(h_{t-1} @ W_beta + b_beta)                     (N, 1)     a scalar gate
    z_t     = beta_t * sum_l alpha_tl A_l                            (N, D)
    a_t     = x_t @ Wx + z_t @ Wz + h_{t-1} @ Wh + b                 (N, 4H)    gates i, f, o, g
              + (alpha_t @ P) @ W_loc_z                              (N, 4H)    with locations
    h_t, c_t = LSTM(a_t, c_{t-1})                                    (N, H)     as nn.lstm
    scores_t = h_t @ W_vocab + b_vocab                               (N, V)
    loss    = (1/N) sum_{n,t: mask} -log softmax(scores_nt)[captions[n, t]]
              + lambda * (1/N) sum_n sum_l (1 - sum_{t: captions[n, t] != <NULL>} alpha_ntl)^2

With ``locations`` the model knows where each cell is, in two ways no content feature gives
it: the query moves the attention along a direction in the image (``P @ q_loc`` is a ramp
whose slope the hidden state sets: "the object furthest right"), and the LSTM reads where it
looked (``alpha_t @ P``, the attention's centre). A phrase "a A left of a B" needs both: B is
found from A's place, and the relation word from the two places. Additive attention alone
can only add the query to each cell's projection before the ``tanh``; it cannot scale a
cell's place by the query.

The word loss is cs231n's (summed over time, averaged over the batch, ``<NULL>`` targets
masked, or the positions a caller's ``mask`` keeps). The doubly stochastic penalty (lambda =
``attention_penalty``) sums each cell's attention over the steps whose target is not
``<NULL>`` (the steps that predict a word or ``<END>``; a caller's ``mask`` does not change
it) and pushes every cell towards a total of one.

Fast path: what does not change over time is hoisted out of the step loop: ``A @ W_att_a``
once per image; the words' contribution to the gates, ``x @ Wx + b``, for all steps as one
GEMM; ``h_{t-1}``'s three projections (``Wh``, ``W_att_h``, ``W_beta``) as one GEMM per step
(and one per step backwards); after the backward loop, every weight gradient as one GEMM
over all steps, and the grid's gradient through the context as one batched GEMM. The tests
hold a readable per-step reference that this must equal.

Decoding (:meth:`AttentionCaptioner.decode_start` / :meth:`~AttentionCaptioner.decode_step`,
the interface of :mod:`captionlab.captioning.generate`) hoists the same way: per call, the
grid's projection ``A @ W_att_a``, the fused ``[Wh | W_att_h | W_beta]`` and the table
``W_embed @ Wx + b`` of every word's gate input; per step only ``h`` (M, H) is multiplied.
Beams index their image's grid (``img`` (M,)) instead of copying it; when the rows are the
images' beams in order (as beam search keeps them), the attention runs as a batched product
over images without gathering the grid at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from captionlab import nn
from captionlab.captioning._inputs import check_captions, longest_first
from captionlab.captioning.generate import DecodeState, greedy_decode
from captionlab.nn.attention import (
    additive_scores,
    additive_scores_backward,
    cell_locations,
    is_square_grid,
)
from captionlab.nn.functional import masked_softmax, masked_softmax_backward, sigmoid
from captionlab.nn.lstm import lstm_gates_backward, lstm_gates_forward

# The order of the parameters in ``params``.
PARAM_NAMES = (
    "W_embed",
    "W_h0",
    "b_h0",
    "W_c0",
    "b_c0",
    "W_att_a",
    "W_att_h",
    "b_att",
    "w_att",
    "W_beta",
    "b_beta",
    "Wx",
    "Wz",
    "Wh",
    "b",
    "W_vocab",
    "b_vocab",
    "W_pos",
    "W_loc_q",
    "b_loc_q",
    "W_loc_z",
)


@dataclass(frozen=True)
class AttentionConfig:
    """Everything needed to rebuild an :class:`AttentionCaptioner` apart from its weights."""

    input_dim: int = 512
    wordvec_dim: int = 128
    hidden_dim: int = 128
    attention_dim: int = 128
    attention_penalty: float = 1.0
    num_cells: int | None = None
    dtype: str = "float32"
    locations: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def attention_param_shapes(config: AttentionConfig, vocab_size: int) -> dict[str, tuple]:
    """The shape of every parameter of a model with ``config`` and ``V = vocab_size``."""
    V, D, W = vocab_size, config.input_dim, config.wordvec_dim
    H, K = config.hidden_dim, config.attention_dim
    shapes = {
        "W_embed": (V, W),
        "W_h0": (D, H),
        "b_h0": (H,),
        "W_c0": (D, H),
        "b_c0": (H,),
        "W_att_a": (D, K),
        "W_att_h": (H, K),
        "b_att": (K,),
        "w_att": (K,),
        "W_beta": (H, 1),
        "b_beta": (1,),
        "Wx": (W, 4 * H),
        "Wz": (D, 4 * H),
        "Wh": (H, 4 * H),
        "b": (4 * H,),
        "W_vocab": (H, V),
        "b_vocab": (V,),
    }
    if config.num_cells is not None:
        shapes["W_pos"] = (config.num_cells, D)
    if config.locations:
        shapes["W_loc_q"], shapes["b_loc_q"], shapes["W_loc_z"] = (H, 2), (2,), (2, 4 * H)
    return shapes


def _attention_config(config: dict) -> AttentionConfig:
    """An :class:`AttentionConfig` from a dict of its fields (a checkpoint's ``model``);
    ValueError names what is wrong."""
    names = set(AttentionConfig.__dataclass_fields__)
    required = names - {"num_cells", "locations"}  # absent in files written before them
    missing, unknown = required - set(config), set(config) - names
    if missing or unknown:
        raise ValueError(f"model fields must be {sorted(names)}; missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")  # fmt: skip
    cells = config.get("num_cells")
    c = AttentionConfig(
        input_dim=int(config["input_dim"]), wordvec_dim=int(config["wordvec_dim"]),
        hidden_dim=int(config["hidden_dim"]), attention_dim=int(config["attention_dim"]),
        attention_penalty=float(config["attention_penalty"]),
        num_cells=None if cells is None else int(cells), dtype=str(config["dtype"]),
        locations=bool(config.get("locations", False)),
    )  # fmt: skip
    if min(c.input_dim, c.wordvec_dim, c.hidden_dim, c.attention_dim) < 1:
        raise ValueError(f"sizes must be >= 1, got {c}")
    if c.num_cells is not None and c.num_cells < 1:
        raise ValueError(f"num_cells must be None or >= 1, got {c.num_cells}")
    if np.dtype(c.dtype).kind != "f":
        raise ValueError(f"dtype must be a floating type, got {c.dtype!r}")
    if not isinstance(config.get("locations", False), bool):
        raise ValueError(f"locations must be true or false, got {config['locations']!r}")
    return c


class AttentionCaptioner:
    """A Show, Attend and Tell captioner over a grid of image features (N, L, D).

    Args:
        word_to_idx: vocabulary, word -> index; must hold ``<NULL>``. ``V = len(word_to_idx)``.
        input_dim: ``D``, the size of one grid cell's feature vector.
        wordvec_dim: ``W``, the size of a word vector.
        hidden_dim: ``H``, the size of the LSTM state.
        attention_dim: ``K``, the size of the additive attention's hidden layer.
        dtype: ``np.float32`` for training, ``np.float64`` for gradient checks.
        seed: ``None`` draws the initial weights from NumPy's global generator (as
            CaptioningRNN does); an int draws them from a private generator.
        attention_penalty: ``lambda``, the weight of the doubly stochastic penalty (0: off).
        num_cells: ``L``; when given, a learned position embedding ``W_pos`` (L, D) is added
            to every image's grid, so the context tells the LSTM where it looked (the grid's
            vectors alone know their row and column only partly, docs/feature_probe.md), and
            the model takes grids of exactly ``L`` cells. None: no position embedding.
        locations: the attention and the LSTM also use each cell's place (see the module
            docstring; the grid must be square, ``L = s * s`` row-major cells).

    Attributes:
        params: dict of parameter arrays, keyed by :data:`PARAM_NAMES`:

            * ``W_embed`` (V, W): word vectors.
            * ``W_h0`` (D, H), ``b_h0`` (H,): initial hidden state from the mean cell.
            * ``W_c0`` (D, H), ``b_c0`` (H,): initial cell state from the mean cell.
            * ``W_att_a`` (D, K): the grid's projection (``Wa``), applied once per image.
            * ``W_att_h`` (H, K), ``b_att`` (K,): the query's projection and the bias.
            * ``w_att`` (K,): the attention's scoring vector.
            * ``W_beta`` (H, 1), ``b_beta`` (1,): the context gate beta (a scalar per step).
            * ``Wx`` (W, 4H): word -> gates i, f, o, g.
            * ``Wz`` (D, 4H): context -> gates.
            * ``Wh`` (H, 4H), ``b`` (4H,): hidden state -> gates, and the gates' bias.
            * ``W_vocab`` (H, V), ``b_vocab`` (V,): hidden state -> word scores.
            * ``W_pos`` (L, D): the position embedding (only with ``num_cells``; starts at 0).
            * ``W_loc_q`` (H, 2), ``b_loc_q`` (2,): the query's slope over the cells'
              places; ``W_loc_z`` (2, 4H): the attention's centre -> gates (only with
              ``locations``).
    """

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        attention_dim: int = 128,
        dtype=np.float32,
        seed: int | None = None,
        *,
        attention_penalty: float = 1.0,
        num_cells: int | None = None,
        locations: bool = False,
    ) -> None:
        if "<NULL>" not in word_to_idx:
            raise ValueError("word_to_idx must hold '<NULL>'")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        if not np.isfinite(attention_penalty) or attention_penalty < 0:
            raise ValueError(f"attention_penalty must be >= 0, got {attention_penalty!r}")
        self.attention_penalty = float(attention_penalty)
        if num_cells is not None and (int(num_cells) != num_cells or num_cells < 1):
            raise ValueError(f"num_cells must be None or an int >= 1, got {num_cells!r}")
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self._null = word_to_idx["<NULL>"]

        randn = np.random.randn if seed is None else np.random.RandomState(seed).randn
        V, D, W = len(word_to_idx), input_dim, wordvec_dim
        H, K = hidden_dim, attention_dim
        p: dict[str, np.ndarray] = {}
        p["W_embed"] = randn(V, W) / 100
        p["W_h0"] = randn(D, H) / np.sqrt(D)
        p["b_h0"] = np.zeros(H)
        p["W_c0"] = randn(D, H) / np.sqrt(D)
        p["b_c0"] = np.zeros(H)
        p["W_att_a"] = randn(D, K) / np.sqrt(D)
        p["W_att_h"] = randn(H, K) / np.sqrt(H)
        p["b_att"] = np.zeros(K)
        p["w_att"] = randn(K) / np.sqrt(K)
        p["W_beta"] = randn(H, 1) / np.sqrt(H)
        p["b_beta"] = np.zeros(1)
        p["Wx"] = randn(W, 4 * H) / np.sqrt(W)
        p["Wz"] = randn(D, 4 * H) / np.sqrt(D)
        p["Wh"] = randn(H, 4 * H) / np.sqrt(H)
        p["b"] = np.zeros(4 * H)
        p["W_vocab"] = randn(H, V) / np.sqrt(H)
        p["b_vocab"] = np.zeros(V)
        if num_cells is not None:
            p["W_pos"] = np.zeros((int(num_cells), D))
        if locations:
            p["W_loc_q"] = randn(H, 2) / np.sqrt(H)
            p["b_loc_q"] = np.zeros(2)
            p["W_loc_z"] = randn(2, 4 * H) / np.sqrt(2)
        self.params = {k: p[k].astype(self.dtype) for k in PARAM_NAMES if k in p}

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> AttentionConfig:
        """The architecture, read from the parameter shapes."""
        D, K = self.params["W_att_a"].shape
        return AttentionConfig(
            input_dim=int(D),
            wordvec_dim=int(self.params["W_embed"].shape[1]),
            hidden_dim=int(self.params["W_h0"].shape[1]),
            attention_dim=int(K),
            attention_penalty=self.attention_penalty,
            num_cells=self.num_cells,
            dtype=self.dtype.name,
            locations=self.locations,
        )

    @property
    def locations(self) -> bool:
        """Whether the model uses the cells' places (``W_loc_q``, ``W_loc_z``)."""
        return "W_loc_q" in self.params

    @property
    def num_cells(self) -> int | None:
        """L of the position embedding, or None without one."""
        W_pos = self.params.get("W_pos")
        return None if W_pos is None else int(W_pos.shape[0])

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each parameter must have, from :attr:`config` and ``V``."""
        return attention_param_shapes(self.config, len(self.word_to_idx))

    @property
    def feature_shape(self) -> tuple[int | None, int]:
        """The shape of one image's grid: ``(L, D)``, with ``L = None`` (any number of
        cells) unless the model has a position embedding."""
        return (self.num_cells, int(self.params["W_att_a"].shape[0]))

    # ------------------------------------------------------------------ checkpoints
    # What captionlab.captioning.checkpoint needs of every captioner class.
    def config_dict(self) -> dict:
        """The architecture as JSON-able values (a checkpoint's ``model`` field)."""
        return self.config.to_dict()

    @classmethod
    def shapes_for(cls, config: dict, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """The parameter shapes of a model of ``config`` (checked against a checkpoint's
        arrays before any model is built); ValueError or TypeError when it is malformed."""
        return attention_param_shapes(_attention_config(config), vocab_size)

    @classmethod
    def from_config(
        cls, word_to_idx: dict[str, int], config: dict, seed: int = 0
    ) -> AttentionCaptioner:
        """A model of the architecture ``config``, initialised from ``seed`` (weights to be
        loaded over it, or trained)."""
        c = _attention_config(config)
        return cls(
            word_to_idx, input_dim=c.input_dim, wordvec_dim=c.wordvec_dim,
            hidden_dim=c.hidden_dim, attention_dim=c.attention_dim, dtype=np.dtype(c.dtype),
            seed=seed, attention_penalty=c.attention_penalty, num_cells=c.num_cells,
            locations=c.locations,
        )  # fmt: skip

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AttentionCaptioner(V={len(self.word_to_idx)}, D={c.input_dim}, "
            f"W={c.wordvec_dim}, H={c.hidden_dim}, K={c.attention_dim}, "
            f"lambda={c.attention_penalty}, L={c.num_cells}, locations={c.locations}, "
            f"dtype={c.dtype})"
        )

    # ------------------------------------------------------------------ checks
    def _check_features(self, features: np.ndarray) -> np.ndarray:
        D = self.params["W_att_a"].shape[0]
        features = np.asarray(features)
        if features.ndim != 3 or features.shape[2] != D or features.shape[1] < 1:
            raise ValueError(f"features must be a grid (N, L, {D}), got {features.shape}")
        L = self.num_cells
        if L is not None and features.shape[1] != L:
            raise ValueError(
                f"features must be a grid of L={L} cells (the position embedding's), "
                f"got {features.shape}"
            )
        if self.locations:
            if not is_square_grid(features.shape[1]):
                raise ValueError(
                    "features must be a square grid of s*s cells (the model uses the cells' "
                    f"places), got {features.shape}"
                )
        return features.astype(self.dtype, copy=False)

    def _hcat(self) -> np.ndarray:
        """h_{t-1}'s projections fused: ``[Wh | W_att_h | W_beta (| W_loc_q)]``
        (H, 4H + K + 1 (+ 2)): one GEMM per step for all of them."""
        p = self.params
        parts = [p["Wh"], p["W_att_h"], p["W_beta"]]
        if self.locations:
            parts.append(p["W_loc_q"])
        return np.concatenate(parts, axis=1)

    def _grid(self, features: np.ndarray) -> np.ndarray:
        """The checked grid (N, L, D), plus the position embedding when the model has one."""
        A = self._check_features(features)
        W_pos = self.params.get("W_pos")
        return A if W_pos is None else A + W_pos

    # ------------------------------------------------------------------ training loss
    def loss(
        self,
        features: np.ndarray,
        captions: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        feature_grad: bool = False,
        hold_attention: bool = False,
    ) -> tuple[float, dict]:
        """Training loss and gradients (the CaptioningRNN contract, on a grid).

        Args:
            features: the image grid, (N, L, D).
            captions: ground-truth captions, (N, T) integers in [0, V); the model reads
                ``captions[:, :-1]`` and predicts ``captions[:, 1:]``.
            mask: None (the word loss counts the non-``<NULL>`` targets) or boolean
                (N, T-1): the target positions the word loss counts. The attention penalty
                always uses the ``<NULL>`` mask.
            feature_grad: also return the gradient of the loss with respect to
                ``features``, under the key ``"features"``.
            hold_attention: take every gradient with the attention weights ``alpha_t``
                held constant: nothing flows back through the scores ``e_t`` (the
                attention's weights, its query and the cells' projection get none), only
                through what the model read, ``z_t``, its centre and the initial state.
                For explanations ("given where it looked, what made it say the word";
                conservative propagation, Ali et al. 2022); not for training.

        Returns:
            ``(loss, grads)``: the scalar loss (word loss summed over time and averaged over
            N, plus the attention penalty) and a dict of gradients keyed and shaped like
            :attr:`params` (and ``"features"`` (N, L, D) if asked for).
        """
        A = self._grid(features)
        N = A.shape[0]
        captions = check_captions(captions, N)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]  # (N, T-1) each
        null_mask = captions_out != self._null  # (N, T-1)
        if mask is None:
            mask = null_mask
        else:
            mask = np.asarray(mask)
            if mask.shape != captions_out.shape or mask.dtype != bool:
                raise ValueError(
                    f"mask must be boolean (N, T-1) = {captions_out.shape}, "
                    f"got {mask.dtype} {mask.shape}"
                )
        # Each caption runs only up to the last step anything reads (its last counted word,
        # or its last word when the attention penalty is on): the rows are sorted longest
        # first and every step computes a shrinking prefix of them (as CaptioningRNN does).
        lengths, order = longest_first(mask | null_mask if self.attention_penalty else mask)
        if order is not None:
            A, captions_in, captions_out = A[order], captions_in[order], captions_out[order]
            mask, null_mask = mask[order], null_mask[order]
        counts = nn.Lengths(lengths, N, mask.shape[1]).counts  # (T,) rows that run each step
        cache = self._forward(A, captions_in, counts)
        loss, dhs = self._word_loss(cache, captions_out, mask)
        penalty, dalpha = self._penalty(cache["alphas"], null_mask)
        grads = self._backward(
            cache, dhs, dalpha, captions_in, counts, feature_grad, hold_attention
        )
        if feature_grad and order is not None:  # back to the caller's row order
            grads["features"][order] = grads["features"].copy()
        return float(loss + penalty), grads

    def _forward(
        self, A: np.ndarray, captions_in: np.ndarray, counts: np.ndarray | None = None
    ) -> dict:
        """Teacher-forced forward pass over ``captions_in`` (N, T); internally time-major.

        Step ``t`` runs the first ``counts[t]`` rows (non-increasing; ``None``: all N); the
        other rows' states and attention are 0 there.

        Returns the cache: ``hs`` (T+1, N, H) with ``hs[0] = h_0``, ``cs`` likewise,
        ``alphas`` (T, N, L), ``betas`` (T, N), ``ctx`` (T, N, D) the unweighted contexts,
        ``zs`` (T, N, D), ``gates`` (T, N, 4H), ``tanh_c`` (T, N, H), ``th`` (T, N, L, K),
        with locations ``locs`` (T, N, 2) the attention's centres and ``P`` (L, 2), plus the
        inputs and the hoisted products.
        """
        p = self.params
        N, L, D = A.shape
        T = captions_in.shape[1]
        H, K = p["W_h0"].shape[1], p["W_att_a"].shape[1]
        dtype = self.dtype
        if counts is None:
            counts = np.full(T, N)
        a_mean = A.mean(axis=1)  # (N, D)
        # Hoisted: the grid's projection, once per image.
        A_proj = (A.reshape(N * L, D) @ p["W_att_a"]).reshape(N, L, K)  # (N, L, K)
        # Hoisted: the words' contribution to the gates (bias included) for all steps.
        x = p["W_embed"][captions_in.T]  # (T, N, W)
        gates = (x.reshape(T * N, -1) @ p["Wx"]).reshape(T, N, 4 * H)  # (T, N, 4H)
        gates += p["b"]
        # h_{t-1}'s projections, fused: [Wh | W_att_h | W_beta (| W_loc_q)] (H, 4H + K + 1 (+2)).
        W_hcat = self._hcat()
        ib = 4 * H + K  # the beta column; the location query's two follow it
        P = cell_locations(L, dtype) if self.locations else None  # (L, 2)
        # Zeros where a row has stopped: the hoisted products after the loop read them.
        locs = np.zeros((T, N, 2), dtype=dtype) if P is not None else None
        hs = np.zeros((T + 1, N, H), dtype=dtype)
        cs = np.zeros((T + 1, N, H), dtype=dtype)
        hs[0] = a_mean @ p["W_h0"] + p["b_h0"]
        cs[0] = a_mean @ p["W_c0"] + p["b_c0"]
        tanh_c = np.zeros((T, N, H), dtype=dtype)
        th = np.zeros((T, N, L, K), dtype=dtype)
        alphas = np.zeros((T, N, L), dtype=dtype)
        betas = np.zeros((T, N), dtype=dtype)
        ctx = np.zeros((T, N, D), dtype=dtype)
        zs = np.zeros((T, N, D), dtype=dtype)
        for t in range(T):
            n = counts[t]  # the rows still running: a prefix
            hp = hs[t, :n] @ W_hcat  # (n, 4H + K + 1 (+ 2))
            q = hp[:, 4 * H : ib] + p["b_att"]  # (n, K)
            _, e = additive_scores(A_proj[:n], q, p["w_att"], out=th[t, :n])  # (n, L)
            if P is not None:
                e += (hp[:, ib + 1 :] + p["b_loc_q"]) @ P.T  # (n, L): a ramp over the places
            alphas[t, :n] = masked_softmax(e)
            np.matmul(alphas[t, :n, None, :], A[:n], out=ctx[t, :n, None, :])  # (n, D)
            sigmoid(hp[:, ib] + p["b_beta"], out=betas[t, :n])  # (n,)
            np.multiply(ctx[t, :n], betas[t, :n, None], out=zs[t, :n])  # (n, D)
            at = gates[t, :n]  # (n, 4H): x_t @ Wx + b so far
            at += hp[:, : 4 * H]
            at += zs[t, :n] @ p["Wz"]
            if P is not None:
                np.matmul(alphas[t, :n], P, out=locs[t, :n])  # (n, 2) where it looked
                at += locs[t, :n] @ p["W_loc_z"]
            hs[t + 1, :n], cs[t + 1, :n], gate_views = lstm_gates_forward(at, cs[t, :n])
            tanh_c[t, :n] = gate_views[4]
        return {
            "A": A, "a_mean": a_mean, "x": x, "W_hcat": W_hcat, "hs": hs, "cs": cs,
            "gates": gates, "tanh_c": tanh_c, "th": th, "alphas": alphas, "betas": betas,
            "ctx": ctx, "zs": zs, "P": P, "locs": locs,
        }  # fmt: skip

    def _word_loss(
        self, cache: dict, captions_out: np.ndarray, mask: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Masked softmax loss of the word scores; returns it and dL/dh (T, N, H)."""
        p = self.params
        hs = cache["hs"]
        T1, N, H = hs.shape
        T = T1 - 1
        # Scores only where the loss counts (as CaptioningRNN does), rows time-major.
        rows = np.flatnonzero(mask.T.reshape(-1))  # (M,)
        h_rows = hs[1:].reshape(T * N, H)[rows]  # (M, H)
        scores, cache_scores = nn.affine_forward(h_rows, p["W_vocab"], p["b_vocab"])  # (M, V)
        targets = captions_out.T.reshape(-1)[rows]  # (M,)
        loss, dscores = nn.temporal_softmax_loss(
            scores[None], targets[None], np.ones((1, rows.size), dtype=bool)
        )  # dscores (1, M, V); the loss averages over its first axis (1): divide by N
        scale = np.asarray(1.0 / N, dtype=self.dtype)
        dhs = np.zeros((T * N, H), dtype=self.dtype)
        if rows.size:
            dh_rows, dW_vocab, db_vocab = nn.affine_backward(dscores[0], cache_scores)
            dhs[rows] = dh_rows * scale
        else:
            dW_vocab, db_vocab = np.zeros_like(p["W_vocab"]), np.zeros_like(p["b_vocab"])
        cache["dW_vocab"], cache["db_vocab"] = dW_vocab * scale, db_vocab * scale
        return loss / N, dhs.reshape(T, N, H)

    def _penalty(self, alphas: np.ndarray, null_mask: np.ndarray) -> tuple[float, np.ndarray]:
        """Doubly stochastic penalty of alphas (T, N, L) over the non-<NULL> steps
        (null_mask (N, T)); returns it and its gradient (T, N, L)."""
        N = alphas.shape[1]
        lam = self.attention_penalty
        if lam == 0:
            return 0.0, np.zeros_like(alphas)
        m = null_mask.T.astype(self.dtype)  # (T, N)
        total = np.einsum("tn,tnl->nl", m, alphas)  # (N, L) attention each cell received
        gap = 1 - total  # (N, L)
        penalty = lam * float(np.sum(gap * gap)) / N
        dalpha = (-2 * lam / N) * gap[None] * m[:, :, None]  # (T, N, L)
        return penalty, dalpha.astype(self.dtype, copy=False)

    def _backward(
        self,
        cache: dict,
        dhs: np.ndarray,
        dalpha_pen: np.ndarray,
        captions_in: np.ndarray,
        counts: np.ndarray,
        feature_grad: bool,
        hold_attention: bool = False,
    ) -> dict[str, np.ndarray]:
        """Backward through time; weight gradients as single GEMMs after the loop.
        Step ``t`` runs the first ``counts[t]`` rows (as the forward did); the other rows'
        gradients are 0 there. ``hold_attention``: the alphas are constants (no gradient
        through the scores)."""
        p = self.params
        A, hs, cs, gates = cache["A"], cache["hs"], cache["cs"], cache["gates"]
        tanh_c, th, alphas, betas, ctx = (
            cache[k] for k in ("tanh_c", "th", "alphas", "betas", "ctx")
        )
        T, N, H = dhs.shape
        _, L, D = A.shape
        K = p["W_att_a"].shape[1]
        dtype = self.dtype
        W_hcatT = cache["W_hcat"].T  # (4H + K + 1 (+ 2), H)
        WzT = p["Wz"].T  # (4H, D)
        w_att = p["w_att"]
        ib = 4 * H + K
        P = cache["P"]  # (L, 2) or None
        W_loc_zT = p["W_loc_z"].T if P is not None else None  # (4H, 2)
        # Per-step gradients kept for the GEMMs after the loop:
        # dhp = [da | dq | dbeta_pre (| dq_loc)].
        # Zeros where a row has stopped: the hoisted products after the loop read them.
        dhp = np.zeros((T, N, W_hcatT.shape[0]), dtype=dtype)
        de = np.zeros((T, N, L), dtype=dtype)
        dctx = np.zeros((T, N, D), dtype=dtype)
        dA_proj = np.zeros((N, L, K), dtype=dtype)
        # The gradients reaching h_t and c_t from step t + 1; rows that have not started
        # (counts grow as t falls) keep their zeros.
        dh_next = np.zeros((N, H), dtype=dtype)
        dc_next = np.zeros((N, H), dtype=dtype)
        for t in range(T - 1, -1, -1):
            n = counts[t]
            at = gates[t, :n]
            gate_views = (at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :])
            da, dc_next[:n] = lstm_gates_backward(
                dhs[t, :n] + dh_next[:n], dc_next[:n], cs[t, :n], (*gate_views, tanh_c[t, :n])
            )  # (n, 4H), (n, H)
            dhp[t, :n, : 4 * H] = da
            dz = da @ WzT  # (n, D)
            beta = betas[t, :n]  # (n,)
            dbeta = np.einsum("nd,nd->n", dz, ctx[t, :n])  # (n,)
            dhp[t, :n, ib] = dbeta * beta * (1 - beta)  # through the sigmoid
            np.multiply(dz, beta[:, None], out=dctx[t, :n])  # (n, D)
            if not hold_attention:  # held, the alphas are constants: no gradient to scores
                dalpha = np.matmul(A[:n], dctx[t, :n, :, None])[:, :, 0]  # (n, L)
                dalpha += dalpha_pen[t, :n]
                if P is not None:
                    dalpha += (da @ W_loc_zT) @ P.T  # through the centre alpha @ P
                de[t, :n] = masked_softmax_backward(dalpha, alphas[t, :n])  # (n, L)
                if P is not None:
                    np.matmul(de[t, :n], P, out=dhp[t, :n, ib + 1 :])  # dq_loc (n, 2)
                dpre = additive_scores_backward(de[t, :n], th[t, :n], w_att)  # (n, L, K)
                dA_proj[:n] += dpre
                dpre.sum(axis=1, out=dhp[t, :n, 4 * H : ib])  # dq (n, K)
            np.matmul(dhp[t, :n], W_hcatT, out=dh_next[:n])  # (n, H)
        dh0, dc0 = dh_next, dc_next

        grads: dict[str, np.ndarray] = {}
        # Hoisted: every weight gradient as one GEMM over the T*N rows.
        dhp2 = dhp.reshape(T * N, -1)
        dW_hcat = hs[:T].reshape(T * N, H).T @ dhp2  # (H, 4H + K + 1 (+ 2)); hs[t] = h_{t-1}
        grads["Wh"] = dW_hcat[:, : 4 * H]
        grads["W_att_h"] = dW_hcat[:, 4 * H : ib]
        grads["W_beta"] = dW_hcat[:, ib : ib + 1]
        dsum = dhp2.sum(axis=0)  # (4H + K + 1 (+ 2),)
        grads["b"], grads["b_att"], grads["b_beta"] = (
            dsum[: 4 * H],
            dsum[4 * H : ib],
            dsum[ib : ib + 1],
        )
        da2 = np.ascontiguousarray(dhp2[:, : 4 * H])  # (T*N, 4H)
        if P is not None:
            grads["W_loc_q"], grads["b_loc_q"] = dW_hcat[:, ib + 1 :], dsum[ib + 1 :]
            grads["W_loc_z"] = cache["locs"].reshape(T * N, 2).T @ da2  # (2, 4H)
        x = cache["x"]
        grads["Wx"] = x.reshape(T * N, -1).T @ da2  # (W, 4H)
        grads["Wz"] = cache["zs"].reshape(T * N, D).T @ da2  # (D, 4H)
        dx = (da2 @ p["Wx"].T).reshape(T, N, -1)  # (T, N, W)
        grads["W_embed"] = nn.word_embedding_backward(
            dx.transpose(1, 0, 2), (captions_in, p["W_embed"])
        )
        grads["w_att"] = np.tensordot(de, th, axes=([0, 1, 2], [0, 1, 2]))  # (K,)
        grads["W_att_a"] = A.reshape(N * L, D).T @ dA_proj.reshape(N * L, K)  # (D, K)
        a_mean = cache["a_mean"]
        grads["W_h0"], grads["b_h0"] = a_mean.T @ dh0, dh0.sum(axis=0)
        grads["W_c0"], grads["b_c0"] = a_mean.T @ dc0, dc0.sum(axis=0)
        grads["W_vocab"], grads["b_vocab"] = cache["dW_vocab"], cache["db_vocab"]
        has_pos = "W_pos" in p
        if feature_grad or has_pos:
            # Through the contexts, as one batched GEMM: dA_n = alphas_n^T (L, T) @ dctx_n.
            dA = np.matmul(alphas.transpose(1, 2, 0), dctx.transpose(1, 0, 2))  # (N, L, D)
            dA += (dA_proj.reshape(N * L, K) @ p["W_att_a"].T).reshape(N, L, D)
            da_mean = dh0 @ p["W_h0"].T + dc0 @ p["W_c0"].T  # (N, D)
            dA += da_mean[:, None, :] / L
            if has_pos:
                grads["W_pos"] = dA.sum(axis=0)  # (L, D): A + W_pos, summed over images
            if feature_grad:
                grads["features"] = dA
        order = [k for k in PARAM_NAMES if k in p] + (["features"] if feature_grad else [])
        return {k: grads[k] for k in order}

    # ------------------------------------------------------------------ test-time
    def decode_start(
        self, features: np.ndarray, max_length: int = 30, fold: bool | None = None
    ) -> DecodeState:
        """The decoding state of N images (see :mod:`captionlab.captioning.generate`).

        Hoisted once per call: the grid's projection ``A @ W_att_a + b_att`` (N, L, K), the
        fused ``[Wh | W_att_h | W_beta]``, and (with ``fold``) every word's gate input
        ``W_embed @ Wx + b`` as a table (V, 4H), built by default when the call feeds back
        at least V words (``N * max_length >= V``), as :class:`CaptioningRNN` does.

        Args:
            features: the image grids, (N, L, D).
            max_length: the most words the call generates (only sizes the decision).
            fold: build the word table (see above).

        Returns:
            a state with rows ``h``, ``c`` (N, H) and ``img`` (N,), each row's image; shared
            ``A`` (N, L, D) and ``A_proj`` (N, L, K) that rows index by ``img``.
        """
        p = self.params
        A = self._grid(features)  # (N, L, D)
        N, L, D = A.shape
        K = p["W_att_a"].shape[1]
        a_mean = A.mean(axis=1)  # (N, D)
        A_proj = (A.reshape(N * L, D) @ p["W_att_a"]).reshape(N, L, K)  # (N, L, K), once
        A_proj += p["b_att"]
        shared = {"A": A, "A_proj": A_proj, "W_hcat": self._hcat()}
        if self.locations:
            shared["P"] = cell_locations(L, self.dtype)
        if fold is None:  # the table pays off once it replaces at least V input rows
            fold = N * max_length >= p["W_embed"].shape[0]
        if fold:
            shared["table"] = p["W_embed"] @ p["Wx"] + p["b"]  # (V, 4H)
        rows = {
            "h": a_mean @ p["W_h0"] + p["b_h0"],
            "c": a_mean @ p["W_c0"] + p["b_c0"],
            "img": np.arange(N),
        }
        return DecodeState(rows, shared)

    def decode_step(
        self, words: np.ndarray, state: DecodeState
    ) -> tuple[np.ndarray, DecodeState, np.ndarray]:
        """Feed back ``words`` (M,): word scores (M, V), the next state, and the attention
        (M, L) the step gave each cell (the step's ``alpha_t``)."""
        p = self.params
        h, c, img = state.rows["h"], state.rows["c"], state.rows["img"]
        A, A_proj = state.shared["A"], state.shared["A_proj"]
        M, H = h.shape
        Ni, L, D = A.shape
        K = A_proj.shape[2]
        hp = h @ state.shared["W_hcat"]  # (M, 4H + K + 1 (+ 2))
        ib = 4 * H + K
        q = hp[:, 4 * H : ib]  # (M, K); b_att is in A_proj
        P = state.shared.get("P")  # (L, 2) with locations
        grouped = M % Ni == 0 and np.array_equal(img, np.repeat(np.arange(Ni), M // Ni))
        if grouped:  # rows are each image's B beams in order: attend per image, no gather
            B = M // Ni
            th = A_proj[:, None] + q.reshape(Ni, B, 1, K)  # (Ni, B, L, K)
            np.tanh(th, out=th)
            e = (th @ p["w_att"]).reshape(M, L)  # (M, L)
        else:
            th = A_proj[img]  # (M, L, K) gathered
            th += q[:, None, :]
            np.tanh(th, out=th)
            e = th @ p["w_att"]  # (M, L)
        if P is not None:
            e += (hp[:, ib + 1 :] + p["b_loc_q"]) @ P.T  # a ramp over the places
        alpha = nn.masked_softmax(e)  # (M, L)
        if grouped:
            ctx = np.matmul(alpha.reshape(Ni, M // Ni, L), A).reshape(M, D)  # (M, D)
        else:
            ctx = np.matmul(alpha[:, None, :], A[img])[:, 0]  # (M, D)
        beta = sigmoid(hp[:, ib : ib + 1] + p["b_beta"])  # (M, 1)
        table = state.shared.get("table")
        a = table[words] if table is not None else p["W_embed"][words] @ p["Wx"] + p["b"]
        a += hp[:, : 4 * H]
        a += (ctx * beta) @ p["Wz"]  # (M, 4H)
        if P is not None:
            a += (alpha @ P) @ p["W_loc_z"]
        h, c, _ = lstm_gates_forward(a, c)
        scores = h @ p["W_vocab"]  # (M, V)
        scores += p["b_vocab"]
        return scores, DecodeState({"h": h, "c": c, "img": img}, state.shared), alpha

    def sample(self, features: np.ndarray, max_length: int = 30) -> tuple[np.ndarray, np.ndarray]:
        """Greedy captions and where each word looked.

        Args:
            features: the image grids, (N, L, D).
            max_length: the number of words generated at most.

        Returns:
            ``(captions, alphas)``: captions (N, max_length) int32 without ``<START>``, each
            stopping at its first ``<END>`` (kept) and ``<NULL>`` after it; alphas
            (N, max_length, L), the attention of every word (rows sum to 1), zero after
            ``<END>``.
        """
        captions, alphas = greedy_decode(self, features, max_length=max_length,
                                         return_attention=True)  # fmt: skip
        if alphas is None:  # nothing decoded (N = 0)
            alphas = np.zeros((len(captions), max_length, 0), dtype=self.dtype)
        return captions, alphas
