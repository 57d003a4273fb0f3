"""Time CaptioningTransformer's training step against a PyTorch model of the same math (CPU).

At the issue's size (N=128 captions of 17 tokens, so T=16 positions; a 5x5 grid, L=25, of
D=512 features; W=256, 4 heads, 2 layers, feed-forward 2048 as in the assignment; V=1004)
with 2 threads, in one process, this script times one ``loss`` with all gradients of
``CaptioningTransformer`` against :class:`TorchCaptioningTransformer` (``nn.Linear``,
``nn.Embedding``, the same sinusoidal table, ``nn.TransformerDecoder`` of post-norm
``nn.TransformerDecoderLayer``, ``nn.Linear`` to the vocabulary and ``cross_entropy`` at
the positions whose target is not ``<NULL>``) forward and ``backward()``, with the same
weights, in float32 (and float64 with ``--dtypes``), in training mode with dropout 0.1 and
with dropout 0.

It also times greedy decoding of ``--decode-words`` words (20) for the N images, in
float32: incrementally (``decode_start`` / ``decode_step`` with per-layer key/value caches,
the memory's keys and values computed once) against rerunning the whole prefix at every
step (``cache=False``, what the assignment's ``sample`` does), and the same prefix rerun in
torch for reference. All three must produce the same captions.

Cases are interleaved repeat by repeat, with a pause whenever the case switches; the
minimum over repeats is printed with the ratio ``numpy / torch`` (lower is better for
numpy), and for decoding the speed-up of the incremental path. On a shared machine the
numbers are noisy: compare ratios, not times.

    python benchmarks/bench_transformer.py            # 5 repeats
    python benchmarks/bench_transformer.py --quick    # 2 repeats, a quick check
    python benchmarks/bench_transformer.py --grid-defaults  # numpy with --grid's extras
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from captionlab import nn
from captionlab.captioning import CaptioningTransformer, greedy_decode


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case (minimum)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats before timing")
    p.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up")
    p.add_argument("--threads", type=int, default=2, help="BLAS and torch threads")
    p.add_argument("--pause", type=float, default=0.3, help="seconds to wait on library switch")
    p.add_argument(
        "--size", default="128,16,25,512,256,4,2,2048,1004", help="N,T,L,D,W,heads,layers,F,V"
    )
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32,float64")
    p.add_argument("--dropouts", default="0.1,0", help="comma-separated dropout rates")
    p.add_argument(
        "--decode-words", type=int, default=20, help="words of greedy decoding (0: skip)"
    )
    p.add_argument(
        "--grid-defaults",
        action="store_true",
        help="the numpy model as `train --model transformer --grid` builds it (cell "
        "position embedding, locations, location summary, coverage); the torch peer stays "
        "the plain math, so the ratio charges numpy for the extra work and the loss check "
        "is skipped",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 2, 1
    return args


def vocab(V: int) -> dict[str, int]:
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


def _copy_attention(attn: torch.nn.MultiheadAttention, p: dict, a: str) -> None:
    """Copy captionlab's ``{a}Wq .. {a}bo`` into a torch attention (under no_grad)."""
    attn.in_proj_weight.copy_(torch.cat([p[a + "Wq"].T, p[a + "Wk"].T, p[a + "Wv"].T]))
    attn.in_proj_bias.copy_(torch.cat([p[a + "bq"], p[a + "bk"], p[a + "bv"]]))
    attn.out_proj.weight.copy_(p[a + "Wo"].T)
    attn.out_proj.bias.copy_(p[a + "bo"])


def _copy_feedforward(mod: torch.nn.Module, p: dict, q: str, norms: tuple[int, ...]) -> None:
    """Copy ``{q}ffn.*`` and ``{q}normK.*`` into a torch encoder or decoder layer."""
    mod.linear1.weight.copy_(p[q + "ffn.W1"].T)
    mod.linear1.bias.copy_(p[q + "ffn.b1"])
    mod.linear2.weight.copy_(p[q + "ffn.W2"].T)
    mod.linear2.bias.copy_(p[q + "ffn.b2"])
    for k in norms:
        getattr(mod, f"norm{k}").weight.copy_(p[f"{q}norm{k}.gamma"])
        getattr(mod, f"norm{k}").bias.copy_(p[f"{q}norm{k}.beta"])


class TorchCaptioningTransformer(torch.nn.Module):
    """The same math in PyTorch, with a :class:`CaptioningTransformer`'s weights.

    torch's ``in_proj_weight`` (3W, W) is ``[Wq; Wk; Wv]`` transposed (torch applies
    ``x @ W.T``); ``linearK.weight`` is ``ffn.WK`` transposed; ``normK.weight`` is gamma.
    """

    def __init__(self, model: CaptioningTransformer) -> None:
        super().__init__()
        c = model.config
        V = len(model.word_to_idx)
        D, W = c.input_dim, c.wordvec_dim
        p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.params.items()}
        self.proj = torch.nn.Linear(D, W)
        self.embed = torch.nn.Embedding(V, W)
        layer = torch.nn.TransformerDecoderLayer(
            W,
            c.num_heads,
            dim_feedforward=c.dim_feedforward,
            dropout=c.dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.decoder = torch.nn.TransformerDecoder(layer, c.num_layers)
        self.vocab = torch.nn.Linear(W, V)
        self.pos_drop = torch.nn.Dropout(c.dropout)
        self.cells = None  # the memory's position embedding (L, W), if the model has one
        if "W_pos" in p:
            self.cells = torch.nn.Parameter(p["W_pos"].clone())
        self.memory_norm = torch.nn.LayerNorm(W) if c.memory_norm else None
        self.encoder = None  # encoder layers over the memory, if the model has them
        if c.encoder_layers:
            enc = torch.nn.TransformerEncoderLayer(
                W, c.num_heads, dim_feedforward=c.dim_feedforward, dropout=c.dropout,
                activation="relu", batch_first=True, norm_first=False,
            )  # fmt: skip
            self.encoder = torch.nn.TransformerEncoder(
                enc, c.encoder_layers, enable_nested_tensor=False
            )
        pe = nn.sinusoidal_positional_encoding(c.max_length, W, model.dtype)
        self.register_buffer("pe", torch.from_numpy(pe))
        self.to(p["W_embed"].dtype)  # before copying: a float32 copy would round float64
        with torch.no_grad():
            self.proj.weight.copy_(p["W_proj"].T)
            self.proj.bias.copy_(p["b_proj"])
            self.embed.weight.copy_(p["W_embed"])
            if self.memory_norm is not None:
                self.memory_norm.weight.copy_(p["memory_norm.gamma"])
                self.memory_norm.bias.copy_(p["memory_norm.beta"])
            for i, mod in enumerate(self.encoder.layers if self.encoder is not None else ()):
                q = f"encoder.{i}."
                _copy_attention(mod.self_attn, p, q + "self_attn.")
                _copy_feedforward(mod, p, q, norms=(1, 2))
            for i, mod in enumerate(self.decoder.layers):
                q = f"layers.{i}."
                _copy_attention(mod.self_attn, p, q + "self_attn.")
                _copy_attention(mod.multihead_attn, p, q + "cross_attn.")
                _copy_feedforward(mod, p, q, norms=(1, 2, 3))
            self.vocab.weight.copy_(p["W_vocab"].T)
            self.vocab.bias.copy_(p["b_vocab"])

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, D) or (N, L, D) -> the memory the decoder attends to, (N, L, W)."""
        memory = self.proj(features)
        if memory.dim() == 2:
            memory = memory[:, None]  # (N, 1, W)
        if self.memory_norm is not None:
            memory = self.memory_norm(memory)
        if self.cells is not None:
            memory = memory + self.cells
        if self.encoder is not None:
            memory = self.encoder(memory)
        return memory

    def loss(self, features: torch.Tensor, captions: torch.Tensor, null: int = 0) -> torch.Tensor:
        """features (N, D) or (N, L, D), captions (N, T+1) -> the captionlab loss."""
        N = features.shape[0]
        memory = self.memory(features)
        words, target = captions[:, :-1], captions[:, 1:]
        T = words.shape[1]
        x = self.pos_drop(self.embed(words) + self.pe[:T])  # (N, T, W)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = may not attend
        x = self.decoder(x, memory, tgt_mask=causal)
        keep = target != null
        scores = self.vocab(x[keep])  # (M, V): only where a word is predicted
        return F.cross_entropy(scores, target[keep], reduction="sum") / N

    @torch.no_grad()
    def sample(self, features: torch.Tensor, max_length: int, start: int = 1) -> np.ndarray:
        """Greedy decoding by rerunning the whole prefix at every step (the assignment's
        ``sample``): features (N, D) or (N, L, D) -> (N, max_length) words."""
        memory = self.memory(features)
        words = torch.full((features.shape[0], 1), start, dtype=torch.long)
        for t in range(max_length):
            T = t + 1
            x = self.embed(words) + self.pe[:T]
            causal = torch.ones(T, T, dtype=torch.bool).triu(1)
            x = self.decoder(x, memory, tgt_mask=causal)
            nxt = self.vocab(x[:, -1]).argmax(dim=1)
            words = torch.cat([words, nxt[:, None]], dim=1)
        return words[:, 1:].numpy()


def make_captions(rng: np.random.Generator, N: int, T: int, V: int) -> np.ndarray:
    """(N, T+1) COCO-like captions: <START>, 7..T-1 words, <END>, <NULL> padding."""
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    for n, length in enumerate(rng.integers(min(8, T), T + 1, size=N)):
        captions[n, length] = 2
        captions[n, length + 1 :] = 0
    return captions


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_cases(cases: dict, args) -> dict[str, float]:
    """The minimum time of each case over the repeats, cases interleaved."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(args.warmup + args.repeats):
        for name, fn in cases.items():
            time.sleep(args.pause)
            t = timed(fn)
            if rep >= args.warmup:
                times[name].append(t)
    return {name: min(ts) for name, ts in times.items()}


def bench_decoding(args, feats64: np.ndarray, V: int, D: int, W, heads, layers, Ff) -> None:
    """Greedy decoding, float32: incremental vs the prefix rerun (numpy and torch)."""
    L = args.decode_words
    model = CaptioningTransformer(
        vocab(V), D, W, heads, layers, max_length=max(L, 1), dropout=0.0,
        dtype=np.float32, seed=0, dim_feedforward=Ff,
    ).eval()  # fmt: skip
    model.params["b_vocab"][2] = -1e3  # no <END>: every caption runs all L steps
    tmodel = TorchCaptioningTransformer(model).eval()
    feats = feats64.astype(np.float32)
    tfeats = torch.from_numpy(feats)
    fast = greedy_decode(model, feats, max_length=L)
    slow = greedy_decode(model, feats, max_length=L, cache=False)
    ref = tmodel.sample(tfeats, L)
    assert np.array_equal(fast, slow), "incremental and recomputed captions differ"
    agree = float(np.mean(fast == ref))  # float32 rounding may flip a near tie
    assert agree > 0.95, agree
    best = time_cases(
        {
            "incremental": lambda: greedy_decode(model, feats, max_length=L),
            "prefix": lambda: greedy_decode(model, feats, max_length=L, cache=False),
            "torch prefix": lambda: tmodel.sample(tfeats, L),
        },
        args,
    )
    print(f"\ngreedy decoding of {L} words, {feats.shape[0]} images, float32 (ms)")
    print(f"{'incremental':>14s}{'prefix':>10s}{'torch prefix':>14s}{'speed-up':>10s}")
    print(
        f"{best['incremental'] * 1e3:14.1f}{best['prefix'] * 1e3:10.1f}"
        f"{best['torch prefix'] * 1e3:14.1f}{best['prefix'] / best['incremental']:10.2f}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    N, T, L, D, W, heads, layers, Ff, V = (int(x) for x in args.size.split(","))
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    captions = make_captions(rng, N, T, V)
    feats64 = rng.standard_normal((N, L, D))
    print(
        f"transformer benchmark: N={N}, T={T}, L={L}, D={D}, W={W}, heads={heads}, "
        f"layers={layers}, F={Ff}, V={V}, threads={args.threads}, repeats={args.repeats} "
        f"(minimum), torch {torch.__version__}"
    )
    print(f"\n{'case':28s}{'numpy ms':>10s}{'torch ms':>10s}{'ratio':>8s}")
    with threadpool_limits(args.threads):
        for dtype in args.dtypes.split(","):
            for dropout in (float(x) for x in args.dropouts.split(",")):
                model = CaptioningTransformer(
                    vocab(V), D, W, heads, layers, max_length=T, dropout=dropout,
                    dtype=np.dtype(dtype), seed=0, dim_feedforward=Ff,
                )  # fmt: skip
                tmodel = TorchCaptioningTransformer(model).train()
                if args.grid_defaults:  # the same weights plus the grid's extras
                    model = CaptioningTransformer(
                        vocab(V), D, W, heads, layers, max_length=T, dropout=dropout,
                        dtype=np.dtype(dtype), seed=0, dim_feedforward=Ff, grid=True,
                        num_cells=L, locations=True, location_summary=True, coverage=True,
                    )  # fmt: skip
                feats = feats64.astype(dtype)
                tfeats, tcaps = torch.from_numpy(feats), torch.from_numpy(captions)

                # the two models compute the same loss (a check that the peer is fair)
                np_loss = model.eval().loss(feats, captions)[0]
                tmodel.eval()
                with torch.no_grad():
                    t_loss = float(tmodel.loss(tfeats, tcaps))
                if not args.grid_defaults:
                    assert abs(np_loss - t_loss) < 1e-4 * abs(t_loss), (np_loss, t_loss)
                model.train()
                tmodel.train()

                def np_step(model=model, feats=feats):
                    model.loss(feats, captions)

                def torch_step(tmodel=tmodel, tfeats=tfeats, tcaps=tcaps):
                    tmodel.zero_grad(set_to_none=True)
                    tmodel.loss(tfeats, tcaps).backward()

                best = time_cases({"numpy": np_step, "torch": torch_step}, args)
                t_np, t_torch = best["numpy"], best["torch"]
                label = f"step {dtype} dropout {dropout:g}" + (
                    " +grid" if args.grid_defaults else ""
                )
                print(f"{label:28s}{t_np * 1e3:10.1f}{t_torch * 1e3:10.1f}{t_np / t_torch:8.2f}")
        if args.decode_words:
            bench_decoding(args, feats64, V, D, W, heads, layers, Ff)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
