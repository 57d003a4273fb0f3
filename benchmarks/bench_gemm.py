"""NumPy's BLAS (OpenBLAS) against torch's at the matrix products the layers run, 1 and 2 threads.

The recurrent layers' time is their matrix products (see ``bench_layers.py``'s ``gemm``
column): per step the batch's hidden state times ``Wh`` (a short, wide product, M = N =
128 rows), and once per sequence the input projection and the weight gradients over all
steps (tall products). This script times exactly those shapes, float32, with NumPy's BLAS
and with torch's, at each thread count given, in one process, alternating repeat by repeat,
and prints the minimum and median GFLOP/s and the ratio numpy/torch (time; lower is better).

Run it on a quiet machine and again while other programs keep the cores busy: the two runs
answer different questions. Quiet, it says how close OpenBLAS comes to MKL at these shapes;
busy, it says what a user's training run gets on a shared laptop or server. On the 2-core
development machine under load (load average 5), two threads ran the per-step products at
3-6 GFLOP/s against 41-47 with one thread (8-14x slower: each product waits for a core for
its second thread), and torch's at 8-16 against 50-54 (see the README's speed section).

    python benchmarks/bench_gemm.py                     # threads 1 and 2, 7 repeats
    python benchmarks/bench_gemm.py --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

#: (M, K, N, what): C (M, N) = A (M, K) @ B (K, N), the LSTM captioner's products at the
#: cs231n size (N=128 images, T=16 steps, D=256 input, H=512 hidden, V=1004 words).
SHAPES = (
    (128, 512, 2048, "per step: h @ Wh, forward"),
    (128, 2048, 512, "per step: dgates @ Wh.T, backward"),
    (2048, 256, 2048, "all steps: x @ Wx"),
    (512, 2048, 2048, "all steps: h.T @ dgates (dWh)"),
    (2048, 512, 1004, "all steps: h @ W_vocab"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (alternating)")
    p.add_argument("--inner", type=int, default=10, help="products per timed repeat")
    return p.parse_args(argv)


def time_pair(a, b, at, bt, repeats: int, inner: int) -> dict[str, list[float]]:
    """Seconds per product, per repeat, for numpy and torch, alternating."""
    out: dict[str, list[float]] = {"numpy": [], "torch": []}
    runs = {"numpy": lambda: a @ b, "torch": lambda: at @ bt}
    for fn in runs.values():  # warm up both pools
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append((time.perf_counter() - start) / inner)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    results: dict = {}
    print(f"numpy {np.__version__}, torch {torch.__version__}, float32; GFLOP/s min / median")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            print(f"\n{threads} thread(s)")
            print(f"{'M x K x N':>18}  {'numpy':>13}  {'torch':>13}  numpy/torch  what")
            for M, K, N, what in SHAPES:
                a = rng.standard_normal((M, K), dtype=np.float32)
                b = rng.standard_normal((K, N), dtype=np.float32)
                at, bt = torch.from_numpy(a), torch.from_numpy(b)
                np.testing.assert_allclose(a @ b, (at @ bt).numpy(), rtol=1e-3, atol=1e-2)
                t = time_pair(a, b, at, bt, args.repeats, args.inner)
                gf = 2 * M * K * N / 1e9
                cell = {k: (gf / min(v), gf / statistics.median(v)) for k, v in t.items()}
                ratio = min(t["numpy"]) / min(t["torch"])
                results[f"{threads}:{M}x{K}x{N}"] = {"gflops": cell, "ratio_min": ratio}
                print(
                    f"{f'{M} x {K} x {N}':>18}  "
                    + "  ".join(f"{cell[k][0]:5.0f} / {cell[k][1]:5.0f}" for k in cell)
                    + f"  {ratio:11.2f}  {what}"
                )
    return results


if __name__ == "__main__":
    main()
