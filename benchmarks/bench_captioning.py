"""Time the captioning model against a PyTorch model of the same math on the CPU.

At the cs231n COCO size (N=128 captions of 17 tokens, so T=16 steps; D=512 features,
W=256, H=512, V=1004) with 2 threads, in one process, this script times

* ``train step``: ``CaptioningRNN.loss`` (LSTM; loss and all gradients) against
  ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` + ``cross_entropy(ignore_index=<NULL>)``
  forward and ``backward()``, in float32 and float64; and (``step/packed``) against the same
  with ``pack_padded_sequence`` (each caption runs only its own length and gets scores only
  there, as captionlab's loss does);
* ``greedy``: 30 steps of greedy decoding (``CaptioningRNN.sample``, which folds
  ``W_embed @ Wx + b`` into one table per call) against a ``torch.nn.LSTMCell`` loop with
  the same weights; ``<END>`` is made impossible so both run all 30 steps;
* ``beam``: beam search (beam 5, 30 steps) in images per second, against greedy's;
* the projected time of one epoch over COCO's 400k training captions, from the step time;
* ``attention step``: ``AttentionCaptioner.loss`` (Show, Attend and Tell over an L-cell grid;
  loss and all gradients) against a PyTorch model of the same equations (``nn.LSTMCell`` on
  ``[embedding; beta * context]``, the additive attention written out, autograd), float32
  (:func:`attention_rows`).
* with ``--epoch-steps 300``: the time of that many training steps (loss, gradients and an
  Adam update of every parameter) at the demo's shapes (``--epoch-size``, N=128 captions of
  17 tokens, D=512, W=128, H=256, V=40), for the LSTM and the RNN: one epoch of the demo's
  8,000 scenes x 5 captions is ~310 such steps; and the demo's attention captioner (a 5 x 5
  grid of 256 components, K=128, cell locations).

Cases are interleaved repeat by repeat, with a pause whenever the library switches (OpenBLAS
and torch worker threads slow each other for a while after a switch); the minimum and the
median are printed with ratios ``numpy / torch`` (lower is better for numpy) against the
issue's targets. On a machine shared with other work the minimum is the better estimate of
the undisturbed time: compare ratios, not times. ``numpy`` is captionlab with its default
kernels (fused numba; ``CAPTIONLAB_KERNELS=numpy`` for the NumPy reference kernels).

    python benchmarks/bench_captioning.py            # 10 repeats
    python benchmarks/bench_captioning.py --quick    # 3 repeats, a quick check
    python benchmarks/bench_captioning.py --epoch-steps 300 --repeats 3   # + demo epochs
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from captionlab import nn
from captionlab.captioning import AttentionCaptioner, CaptioningRNN, beam_search
from captionlab.nn import optim

COCO_TRAIN_CAPTIONS = 400_000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before timing")
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    p.add_argument("--threads", type=int, default=2, help="BLAS and torch threads")
    p.add_argument("--pause", type=float, default=0.3, help="seconds to wait on library switch")
    p.add_argument("--size", default="128,16,512,256,512,1004", help="N,T,D,W,H,V")
    p.add_argument("--steps", type=int, default=30, help="decoding steps")
    p.add_argument("--beam", type=int, default=5, help="beam size")
    p.add_argument("--cell", default="lstm", choices=["lstm"], help="cell type (torch peer)")
    p.add_argument(
        "--attention-size", default="128,16,25,256,256,512,256,1004", help="N,T,L,D,W,H,K,V"
    )
    p.add_argument(
        "--epoch-steps", type=int, default=0, help="also time this many demo training steps"
    )
    p.add_argument("--epoch-size", default="128,17,512,128,256,40", help="N,T+1,D,W,H,V")
    p.add_argument("--skip-torch", action="store_true", help="only the --epoch-steps timing")
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="wall time (the measure), or process CPU time (with --threads 1 it shows the "
        "work done, whatever else the machine runs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    return args


def vocab(V: int) -> dict[str, int]:
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


class TorchCaptioner(torch.nn.Module):
    """The same math in PyTorch: h0 = proj(features), embed, LSTM, vocab projection."""

    def __init__(self, model: CaptioningRNN) -> None:
        super().__init__()
        p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.params.items()}
        V, W = p["W_embed"].shape
        D, H = p["W_proj"].shape
        self.proj = torch.nn.Linear(D, H)
        self.embed = torch.nn.Embedding(V, W)
        self.lstm = torch.nn.LSTM(W, H, batch_first=True)
        self.cell = torch.nn.LSTMCell(W, H)
        self.vocab = torch.nn.Linear(H, V)
        with torch.no_grad():
            self.proj.weight.copy_(p["W_proj"].T)
            self.proj.bias.copy_(p["b_proj"])
            self.embed.weight.copy_(p["W_embed"])
            # captionlab gates i, f, o, g; torch gates i, f, g, o
            i, f, o, g = p["Wx"].T.chunk(4)
            ih = torch.cat([i, f, g, o])
            i, f, o, g = p["Wh"].T.chunk(4)
            hh = torch.cat([i, f, g, o])
            i, f, o, g = p["b"].chunk(4)
            bias = torch.cat([i, f, g, o])
            for mod, suffix in ((self.lstm, "_l0"), (self.cell, "")):
                getattr(mod, f"weight_ih{suffix}").copy_(ih)
                getattr(mod, f"weight_hh{suffix}").copy_(hh)
                getattr(mod, f"bias_ih{suffix}").copy_(bias)
                getattr(mod, f"bias_hh{suffix}").zero_()
            self.vocab.weight.copy_(p["W_vocab"].T)
            self.vocab.bias.copy_(p["b_vocab"])
        self.to(p["W_embed"].dtype)

    def loss(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        N = features.shape[0]
        h0 = self.proj(features)[None]  # (1, N, H)
        x = self.embed(captions[:, :-1])  # (N, T, W)
        h, _ = self.lstm(x, (h0, torch.zeros_like(h0)))  # (N, T, H)
        scores = self.vocab(h)  # (N, T, V)
        target = captions[:, 1:]
        return (
            F.cross_entropy(
                scores.reshape(-1, scores.shape[-1]),
                target.reshape(-1),
                ignore_index=0,
                reduction="sum",
            )
            / N
        )

    def loss_packed(
        self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The same loss with PyTorch's packed sequences (each caption runs ``lengths``
        steps, scores only there): the peer for captionlab's own packing."""
        pack = torch.nn.utils.rnn.pack_padded_sequence
        N = features.shape[0]
        h0 = self.proj(features)[None]  # (1, N, H)
        x = pack(self.embed(captions[:, :-1]), lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(x, (h0, torch.zeros_like(h0)))
        target = pack(captions[:, 1:], lengths, batch_first=True, enforce_sorted=False).data
        return F.cross_entropy(self.vocab(h.data), target, reduction="sum") / N

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, steps: int) -> torch.Tensor:
        h = self.proj(features)
        c = torch.zeros_like(h)
        word = torch.full((features.shape[0],), 1, dtype=torch.long)
        out = []
        for _ in range(steps):
            h, c = self.cell(self.embed(word), (h, c))
            word = self.vocab(h).argmax(dim=1)
            out.append(word)
        return torch.stack(out, dim=1)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
CLOCK = [time.perf_counter]  # set from --clock in main()


def timed(fn) -> float:
    clock = CLOCK[0]
    t0 = clock()
    fn()
    return clock() - t0


def demo_epoch(args) -> None:
    """Time ``--epoch-steps`` training steps (loss, gradients, Adam) at the demo's shapes."""
    N, T1, D, W, H, V = (int(x) for x in args.epoch_size.split(","))
    rng = np.random.default_rng(1)
    captions = rng.integers(4, V, size=(N, T1))
    captions[:, 0] = 1
    for n, L in enumerate(rng.integers(6, T1 - 1, size=N)):
        captions[n, L] = 2
        captions[n, L + 1 :] = 0
    feats = rng.standard_normal((N, D)).astype(np.float32)
    kernels = nn.kernels_in_use() if hasattr(nn, "kernels_in_use") else "numpy (before)"
    print(
        f"\ndemo training steps: {args.epoch_steps} x (loss + gradients + Adam), N={N}, "
        f"T={T1 - 1}, D={D}, W={W}, H={H}, V={V}, float32, kernels {kernels}, "
        f"{args.threads} threads, {args.clock} clock, min / median of {args.repeats}"
    )
    L, DA, K = 25, 256, 128  # the demo's grid: 5 x 5 cells of 256 PCA components; K
    grid = rng.standard_normal((N, L, DA)).astype(np.float32)
    for cell in ("lstm", "rnn", "attention"):
        if cell == "attention":  # the demo's attention captioner (with cell locations)
            model = AttentionCaptioner(
                vocab(V), DA, W, H, K, dtype=np.float32, seed=0, locations=True
            )
            inputs = grid
        else:
            model = CaptioningRNN(
                vocab(V), input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, seed=0
            )
            inputs = feats
        configs = {k: {"learning_rate": 5e-3} for k in model.params}

        def steps(model=model, configs=configs, inputs=inputs):
            for _ in range(args.epoch_steps):
                _, grads = model.loss(inputs, captions)
                for k, dw in grads.items():
                    model.params[k], configs[k] = optim.adam(model.params[k], dw, configs[k])

        model.loss(inputs, captions)  # warm-up (compiles or loads the kernels)
        ts = [timed(steps) for _ in range(args.repeats)]
        print(
            f"  {cell}: {min(ts):.2f} s / {statistics.median(ts):.2f} s "
            f"({min(ts) / args.epoch_steps * 1e3:.1f} ms per step)",
            flush=True,
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    CLOCK[0] = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    if hasattr(nn, "kernels"):
        nn.kernels.set_num_threads(args.threads)
    if not args.skip_torch:
        with threadpool_limits(args.threads):
            versus_torch(args)
    if args.epoch_steps:
        with threadpool_limits(args.threads):
            demo_epoch(args)


def versus_torch(args) -> None:
    N, T, D, W, H, V = (int(x) for x in args.size.split(","))
    rng = np.random.default_rng(0)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    lengths = rng.integers(8, T + 1, size=N)  # COCO-like: some padding at the end
    for n, L in enumerate(lengths):
        captions[n, L] = 2
        captions[n, L + 1 :] = 0
    feats64 = rng.standard_normal((N, D))

    print(
        f"captioning benchmark: N={N}, T={T}, D={D}, W={W}, H={H}, V={V}, cell={args.cell}, "
        f"threads={args.threads}, repeats={args.repeats} (min / median), {args.clock} clock, "
        f"torch {torch.__version__}, malloc {getattr(nn, 'memory_policy', lambda: 'system')()}"
    )
    results: dict[str, dict[str, list[float]]] = {}
    for dtype in (np.float32, np.float64):
        model = CaptioningRNN(
            vocab(V),
            input_dim=D,
            wordvec_dim=W,
            hidden_dim=H,
            cell_type=args.cell,
            dtype=dtype,
            seed=0,
        )
        model.params["b_vocab"][2] = -1e4  # no <END>: every decoder runs all steps
        tmodel = TorchCaptioner(model)
        feats = feats64.astype(dtype)
        tfeats, tcaps = torch.from_numpy(feats), torch.from_numpy(captions)
        tlengths = torch.from_numpy(lengths)  # words predicted, <END> included

        def np_step(model=model, feats=feats):
            model.loss(feats, captions)

        def torch_step(tmodel=tmodel, tfeats=tfeats, tcaps=tcaps):
            tmodel.zero_grad(set_to_none=True)
            tmodel.loss(tfeats, tcaps).backward()

        def torch_packed_step(tmodel=tmodel, tfeats=tfeats, tcaps=tcaps, tlengths=tlengths):
            tmodel.zero_grad(set_to_none=True)
            tmodel.loss_packed(tfeats, tcaps, tlengths).backward()

        def np_greedy(model=model, feats=feats):
            model.sample(feats, max_length=args.steps)

        def torch_greedy(tmodel=tmodel, tfeats=tfeats):
            tmodel.greedy(tfeats, args.steps)

        def np_beam(model=model, feats=feats):
            beam_search(model, feats, beam_size=args.beam, max_length=args.steps)

        # the two models compute the same loss (a check that the peer is fair)
        np_loss = model.loss(feats, captions)[0]
        with torch.no_grad():
            t_loss = float(tmodel.loss(tfeats, tcaps))
            tp_loss = float(tmodel.loss_packed(tfeats, tcaps, tlengths))
        assert abs(np_loss - t_loss) < 1e-3 * abs(t_loss), (np_loss, t_loss)
        assert abs(np_loss - tp_loss) < 1e-3 * abs(tp_loss), (np_loss, tp_loss)

        cases = {
            "step numpy": np_step,
            "step torch": torch_step,
            "packed torch": torch_packed_step,
            "greedy numpy": np_greedy,
            "greedy torch": torch_greedy,
        }
        if dtype == np.float32:
            cases["beam numpy"] = np_beam
        times: dict[str, list[float]] = {k: [] for k in cases}
        last_lib = None
        for rep in range(args.warmup + args.repeats):
            for name, fn in cases.items():
                lib = name.split()[1]
                if lib != last_lib:
                    time.sleep(args.pause)
                    last_lib = lib
                t = timed(fn)
                if rep >= args.warmup:
                    times[name].append(t)
        results[np.dtype(dtype).name] = times

    print(
        f"\n{'':20s}{'numpy min/med ms':>18s}{'torch min/med ms':>18s}{'ratio min':>10s}"
        f"{'ratio med':>10s}{'target':>9s}"
    )
    rows = (("step", "step", "step", {"float32": 0.85, "float64": 0.7}),
            ("step", "packed", "step/packed", {}),
            ("greedy", "greedy", "greedy", {"float32": 0.7, "float64": 0.7}))  # fmt: skip
    for case, peer, label, targets in rows:
        for dt in ("float32", "float64"):
            r = results[dt]
            a, b = r[f"{case} numpy"], r[f"{peer} torch"]
            lo, med = min(a) / min(b), statistics.median(a) / statistics.median(b)
            target = targets.get(dt)
            verdict = (
                f"{'<= ' + str(target):>9s}  {'met' if lo <= target else 'MISSED'} (by min)"
                if target is not None
                else f"{'-':>9s}"
            )
            print(
                f"{label + ' ' + dt:20s}{min(a) * 1e3:8.1f} /{statistics.median(a) * 1e3:7.1f}"
                f"{min(b) * 1e3:10.1f} /{statistics.median(b) * 1e3:7.1f}{lo:10.2f}{med:10.2f}"
                + verdict
            )
    r = results["float32"]
    greedy_ips = N / min(r["greedy numpy"])
    beam_ips = N / min(r["beam numpy"])
    frac = beam_ips / greedy_ips
    print(
        f"\nbeam {args.beam}, {args.steps} steps (float32): {beam_ips:.0f} images/s; greedy "
        f"{greedy_ips:.0f} images/s; beam/greedy = {frac:.2f} (target >= 0.33: "
        f"{'met' if frac >= 1 / 3 else 'MISSED'})"
    )
    for dt in ("float32", "float64"):
        steps = COCO_TRAIN_CAPTIONS / N
        t_np = steps * min(results[dt]["step numpy"])
        t_torch = steps * min(results[dt]["step torch"])
        print(
            f"projected epoch over {COCO_TRAIN_CAPTIONS:,} captions ({dt}): numpy "
            f"{t_np / 60:.1f} min, torch {t_torch / 60:.1f} min (loss+gradients only)"
        )
    attention_rows(args)


class TorchAttentionCaptioner(torch.nn.Module):
    """Show, Attend and Tell in PyTorch with the weights of an :class:`AttentionCaptioner`:
    the equations of ``captionlab.captioning.attention_model``, one ``nn.LSTMCell`` step on
    ``[x_t; z_t]`` per word, autograd for the backward pass."""

    def __init__(self, model: AttentionCaptioner) -> None:
        super().__init__()
        p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.params.items()}
        self.lam = model.attention_penalty
        self.w = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.clone()) for k, v in p.items() if k[0] in "Wbw"}
        )
        W, H = p["Wx"].shape[0], p["Wh"].shape[0]
        D = p["Wz"].shape[0]
        self.cell = torch.nn.LSTMCell(W + D, H)
        with torch.no_grad():  # captionlab gates i, f, o, g; torch's i, f, g, o
            i, f, o, g = torch.cat([p["Wx"], p["Wz"]]).T.chunk(4)
            self.cell.weight_ih.copy_(torch.cat([i, f, g, o]))
            i, f, o, g = p["Wh"].T.chunk(4)
            self.cell.weight_hh.copy_(torch.cat([i, f, g, o]))
            i, f, o, g = p["b"].chunk(4)
            self.cell.bias_ih.copy_(torch.cat([i, f, g, o]))
            self.cell.bias_hh.zero_()
        self.to(p["W_embed"].dtype)

    def loss(self, A: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        w = self.w
        N = A.shape[0]
        a_mean = A.mean(dim=1)  # (N, D)
        h = a_mean @ w["W_h0"] + w["b_h0"]
        c = a_mean @ w["W_c0"] + w["b_c0"]
        A_proj = A @ w["W_att_a"]  # (N, L, K), once
        x = w["W_embed"][captions[:, :-1]]  # (N, T, W)
        hs, alphas = [], []
        for t in range(x.shape[1]):
            e = torch.tanh(A_proj + (h @ w["W_att_h"] + w["b_att"])[:, None]) @ w["w_att"]
            alpha = torch.softmax(e, dim=1)  # (N, L)
            z = torch.sigmoid(h @ w["W_beta"] + w["b_beta"]) * torch.bmm(alpha[:, None], A)[:, 0]
            h, c = self.cell(torch.cat([x[:, t], z], dim=1), (h, c))
            hs.append(h)
            alphas.append(alpha)
        scores = torch.stack(hs, dim=1) @ w["W_vocab"] + w["b_vocab"]  # (N, T, V)
        target = captions[:, 1:]
        words = F.cross_entropy(
            scores.reshape(-1, scores.shape[-1]), target.reshape(-1), ignore_index=0,
            reduction="sum",
        )  # fmt: skip
        keep = (target != 0).to(A.dtype)[:, :, None]  # (N, T, 1)
        gap = 1 - (torch.stack(alphas, dim=1) * keep).sum(dim=1)  # (N, L)
        return (words + self.lam * (gap * gap).sum()) / N


def attention_rows(args: argparse.Namespace) -> dict[str, float]:
    """The attention captioner's training step against its PyTorch peer, float32, in the
    same process, interleaved; prints the row and returns the medians."""
    N, T, L, D, W, H, K, V = (int(x) for x in args.attention_size.split(","))
    rng = np.random.default_rng(1)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    for n, length in enumerate(rng.integers(8, T + 1, size=N)):
        captions[n, length] = 2
        captions[n, length + 1 :] = 0
    A = rng.standard_normal((N, L, D)).astype(np.float32)
    model = AttentionCaptioner(vocab(V), D, W, H, K, dtype=np.float32, seed=0)
    tmodel = TorchAttentionCaptioner(model)
    tA, tcaps = torch.from_numpy(A), torch.from_numpy(captions)
    np_loss = model.loss(A, captions)[0]
    with torch.no_grad():
        t_loss = float(tmodel.loss(tA, tcaps))
    assert abs(np_loss - t_loss) < 1e-3 * abs(t_loss), (np_loss, t_loss)  # a fair peer

    def torch_step():
        tmodel.zero_grad(set_to_none=True)
        tmodel.loss(tA, tcaps).backward()

    cases = {"numpy": lambda: model.loss(A, captions), "torch": torch_step}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with threadpool_limits(args.threads):
        for rep in range(args.warmup + args.repeats):
            for name, fn in cases.items():
                time.sleep(args.pause)
                t = timed(fn)
                if rep >= args.warmup:
                    times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["numpy"] / med["torch"]
    ratio_min = min(times["numpy"]) / min(times["torch"])
    print(
        f"\nattention step float32 (N={N}, T={T}, L={L}, D={D}, W={W}, H={H}, K={K}, V={V}): "
        f"numpy {med['numpy'] * 1e3:.1f} ms, torch {med['torch'] * 1e3:.1f} ms (medians); "
        f"ratio {ratio:.2f} (minima {ratio_min:.2f}), target <= 1.0: "
        f"{'met' if ratio <= 1.0 else 'MISSED'}"
    )
    return {"numpy": med["numpy"], "torch": med["torch"], "ratio": ratio, "ratio_min": ratio_min}


if __name__ == "__main__":
    main()
