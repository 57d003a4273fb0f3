"""Time one AttentionCaptioner training step (loss and all gradients) against the LSTM's.

One process, cases interleaved repeat by repeat; the minimum and the median of each are
printed with the ratio ``attention / lstm`` (the peer: ``CaptioningRNN(cell_type="lstm")``
with the same N, T, W, H, V, fed the mean of the grid). Captions are full length (no
``<NULL>`` padding), so every step predicts a word. On a shared machine compare ratios,
not times.

    python benchmarks/bench_attention.py                       # N=128, T=16, L=25 and 100
    python benchmarks/bench_attention.py --grids 25 --dtype float64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from captionlab.captioning import AttentionCaptioner, CaptioningRNN


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="128,16,512,128,512,256,1004", help="N,T,D,W,H,K,V")
    p.add_argument("--grids", default="25,100", help="grid sizes L, comma-separated")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats before timing")
    return p.parse_args(argv)


def vocab(V: int) -> dict[str, int]:
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


def main(argv=None) -> int:
    args = parse_args(argv)
    N, T, D, W, H, K, V = (int(v) for v in args.size.split(","))
    grids = [int(v) for v in args.grids.split(",")]
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    cases = {}
    for L in grids:
        model = AttentionCaptioner(vocab(V), D, W, H, K, dtype=dtype, seed=0)
        A = rng.standard_normal((N, L, D)).astype(dtype)
        cases[f"attention L={L}"] = (model, A)
    lstm = CaptioningRNN(vocab(V), D, W, H, cell_type="lstm", dtype=dtype, seed=0)
    cases["lstm (peer)"] = (lstm, cases[next(iter(cases))][1].mean(axis=1))
    times: dict[str, list[float]] = {name: [] for name in cases}
    with threadpool_limits(args.threads):
        for r in range(args.warmup + args.repeats):
            for name, (model, feats) in cases.items():
                t0 = time.perf_counter()
                model.loss(feats, captions)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    peer = min(times["lstm (peer)"])
    print(
        f"N={N} T={T} D={D} W={W} H={H} K={K} V={V} {dtype.name}, {args.threads} BLAS "
        f"thread(s), {args.repeats} repeats"
    )
    print(f"{'case':<16} {'min ms':>8} {'median ms':>10} {'min / lstm':>11}")
    for name, ts in times.items():
        print(
            f"{name:<16} {1000 * min(ts):>8.1f} {1000 * statistics.median(ts):>10.1f} "
            f"{min(ts) / peer:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
