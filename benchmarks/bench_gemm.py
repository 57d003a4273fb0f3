"""NumPy's BLAS (OpenBLAS), MKL called directly and torch's at the layers' matrix products.

The recurrent layers' time is their matrix products (see ``bench_layers.py``'s ``gemm``
column): per step the batch's hidden state times ``Wh`` (a short, wide product, M = N =
128 rows, ``h[:, t]`` read in place from the (N, T, H) buffer) and the gradient back through
it (``da[:, t] @ Wh.T``), and once per sequence the input projection, ``dx`` and the weight
gradients over all steps (tall products, some with a transposed operand), and the
captioner's vocabulary projection. This script times exactly those shapes and layouts with
NumPy's BLAS, with MKL's ``cblas_?gemm`` called through ctypes (when the ``mkl`` package is
installed: ``pip install mkl``; its ``libmkl_rt``) and with torch's, at each thread count
given, in one process,
alternating repeat by repeat, and prints GFLOP/s (from the minimum and the median time) and
the ratios mkl/numpy and mkl/torch and numpy/torch (times of the minimum; lower is better
for the first named).

Run it on a quiet machine and again while other programs keep the cores busy: the two runs
answer different questions. Quiet, it says how close each library comes to the others at
these shapes; busy, it says what a user's training run gets on a shared laptop or server.
On the 2-core development machine under load (load average 5), two threads ran the
per-step products at 3-6 GFLOP/s against 41-47 with one thread (8-14x slower: each product
waits for a core for its second thread), and torch's at 8-16 against 50-54 (see the README's
speed section). ``--clock process`` times CPU time of the process, which for one thread is
what a loaded machine leaves least noise in.

MKL's threads: ``--mkl-layer gnu`` (the default) runs MKL on GNU OpenMP, the runtime torch's
CPU build has already loaded, so the process keeps one OpenMP runtime; ``intel`` loads Intel's
``libiomp5`` beside it (two runtimes: it worked, without the "OMP: Error #15" abort, which
only two copies of one runtime raise); ``sequential`` runs MKL on the calling thread.
threadpoolctl sees the ctypes-loaded MKL, so ``threadpool_limits(n, user_api="blas")`` sets
its thread count with OpenBLAS's. What it showed (README, speed section): with one thread
(process CPU time, load 3-6) MKL took 0.87-0.91x OpenBLAS's time for the per-step backward
product, 0.88-1.18x for the forward (0.96-1.5x in float64) and 0.80-1.03x for the tall ones,
and 0.92-1.11x torch's (the same library): not the clear 10 % on the per-step products that
a 943 MB dependency would have to earn, so captionlab does not call it.

    python benchmarks/bench_gemm.py                     # threads 1 and 2, float32
    python benchmarks/bench_gemm.py --threads 1 --clock process --repeats 21
    python benchmarks/bench_gemm.py --dtype float64 --mkl-layer sequential
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

#: (M, K, N, layout, what): C (M, N) = A (M, K) @ B (K, N), the LSTM captioner's products at
#: the cs231n size (N=128 images, T=16 steps, D=256 input, H=512 hidden, V=1004 words).
#: layout: "nn" both C-ordered; "tn" A is a transposed view; "nt" B is; "sn" A is rows of a
#: (M, 16, K) buffer (``h[:, t]``), "st" that and B transposed (``da[:, t] @ Wh.T``).
SHAPES = (
    (128, 512, 2048, "sn", "per step: h[:, t] @ Wh, forward"),
    (128, 2048, 512, "st", "per step: da[:, t] @ Wh.T, backward"),
    (2048, 256, 2048, "nn", "all steps: x @ Wx"),
    (2048, 2048, 256, "nt", "all steps: da @ Wx.T (dx)"),
    (256, 2048, 2048, "tn", "all steps: x.T @ da (dWx)"),
    (512, 2048, 2048, "tn", "all steps: h.T @ da (dWh)"),
    (1400, 512, 1004, "nn", "vocabulary: h @ W_vocab (the loss's rows)"),
    (1400, 1004, 512, "nt", "vocabulary: dscores @ W_vocab.T"),
    (512, 1400, 1004, "tn", "vocabulary: h.T @ dscores (dW_vocab)"),
)


# CBLAS enums (cblas.h) and MKL's threading layers (mkl_service.h).
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
MKL_LAYERS = {"intel": 0, "sequential": 1, "gnu": 3}


class Mkl:
    """MKL's ``cblas_sgemm`` / ``cblas_dgemm`` through ctypes, on the threading layer given.

    Args:
        path: ``libmkl_rt`` (the ``mkl`` wheel puts it in the environment's ``lib`` folder).
        layer: a key of :data:`MKL_LAYERS`; set before any other MKL call.
    """

    def __init__(self, path: Path, layer: str) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.MKL_Set_Threading_Layer(MKL_LAYERS[layer])
        i, p = ctypes.c_int, ctypes.c_void_p
        self.gemm = {}
        for dtype, name, real in [
            (np.dtype(np.float32), "cblas_sgemm", ctypes.c_float),
            (np.dtype(np.float64), "cblas_dgemm", ctypes.c_double),
        ]:
            fn = getattr(self.lib, name)
            fn.argtypes = [i, i, i, i, i, i, real, p, i, p, i, real, p, i]
            fn.restype = None
            self.gemm[dtype] = fn

    @staticmethod
    def operand(x: np.ndarray) -> tuple[int, int]:
        """``(trans, leading dimension)`` of a 2-D array read in place as a row-major operand:
        rows of a larger buffer (``h[:, t]``) or a transposed view (``W.T``)."""
        item = x.itemsize
        if x.strides[1] == item:
            return NO_TRANS, x.strides[0] // item
        if x.strides[0] == item:
            return TRANS, x.strides[1] // item
        raise ValueError(f"an operand with strides {x.strides} is not a BLAS operand")

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out[...] = a @ b``: a (M, K), b (K, N), out (M, N) C-ordered, one dtype."""
        (M, K), N = a.shape, b.shape[1]
        (ta, lda), (tb, ldb) = self.operand(a), self.operand(b)
        assert out.flags.c_contiguous and out.shape == (M, N) and a.dtype == b.dtype == out.dtype
        self.gemm[a.dtype](
            ROW_MAJOR, ta, tb, M, N, K, 1.0,
            a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out.ctypes.data, N,
        )  # fmt: skip
        return out


def load_mkl(layer: str) -> Mkl | None:
    """MKL if the ``mkl`` package is installed in this environment, else None."""
    for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"):
        path = Path(sys.prefix) / "lib" / name
        if path.exists():
            return Mkl(path, layer)
    return None


def columns(a, b, mkl: Mkl | None) -> dict:
    """One product as a function per library, each writing its own output buffer."""
    M, N = a.shape[0], b.shape[1]
    out_np, out_mkl = np.empty((M, N), a.dtype), np.empty((M, N), a.dtype)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    out_t = torch.from_numpy(np.empty((M, N), a.dtype))
    fns = {"numpy": lambda: np.matmul(a, b, out=out_np)}
    if mkl is not None:
        fns["mkl"] = lambda: mkl.matmul(a, b, out_mkl)
    fns["torch"] = lambda: torch.matmul(at, bt, out=out_t).numpy()
    return fns


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=9, help="timed repeats (alternating)")
    p.add_argument("--inner", type=int, default=10, help="products per timed repeat")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="wall clock, or the process's CPU time (counts every thread's time)",
    )
    p.add_argument(
        "--mkl-layer",
        choices=list(MKL_LAYERS),
        default="gnu",
        help="MKL's threading layer: GNU OpenMP (torch's runtime), Intel OpenMP, or none",
    )
    return p.parse_args(argv)


def operands(M: int, K: int, N: int, layout: str, dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    """A (M, K) and B (K, N) in the layout the layers use (see :data:`SHAPES`)."""

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    if layout[0] == "s":
        a = normal(M, 16, K)[:, 3]  # rows of the (N, T, H) buffer, step t = 3
    elif layout[0] == "t":
        a = normal(K, M).T
    else:
        a = normal(M, K)
    b = normal(N, K).T if layout[1] == "t" else normal(K, N)
    return a, b


def time_columns(fns: dict, repeats: int, inner: int, clock) -> dict[str, list[float]]:
    """Seconds per product, per repeat, for each function, alternating."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm up every pool
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            for _ in range(inner):
                fn()
            out[name].append((clock() - start) / inner)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    mkl = load_mkl(args.mkl_layer)
    has_mkl = mkl is not None
    libs = [
        f"{i['internal_api']} {i['version']} ({i.get('threading_layer', '-')})"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    print(
        f"numpy {np.__version__}, torch {torch.__version__}, {dtype}, {args.clock} clock; "
        f"BLAS in the process: {', '.join(libs)}; load average "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    if not has_mkl:
        print("(no mkl column: the mkl package is not installed; pip install mkl)")
    print("GFLOP/s from the min / median time; ratios of the min times")
    results: dict = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            cols = ["numpy", "mkl", "torch"] if has_mkl else ["numpy", "torch"]
            print(f"\n{threads} thread(s)")
            head = "".join(f"{c:>14}" for c in cols)
            ratios = "  mkl/np mkl/tch np/tch" if has_mkl else "  np/tch"
            print(f"{'M x K x N':>17} lay{head}{ratios}  what")
            for M, K, N, layout, what in SHAPES:
                a, b = operands(M, K, N, layout, dtype, rng)
                fns = columns(a, b, mkl)
                ref = fns["numpy"]().astype(np.float64)
                tol = 1e-4 if dtype == np.float32 else 1e-10
                for name in cols[1:]:
                    np.testing.assert_allclose(
                        fns[name](), ref, rtol=tol, atol=tol * np.abs(ref).max(), err_msg=name
                    )
                t = time_columns(fns, args.repeats, args.inner, clock)
                gf = 2 * M * K * N / 1e9
                best = {k: min(v) for k, v in t.items()}
                cell = {k: (gf / best[k], gf / statistics.median(v)) for k, v in t.items()}
                r = {"numpy/torch": best["numpy"] / best["torch"]}
                if has_mkl:
                    r = {
                        "mkl/numpy": best["mkl"] / best["numpy"],
                        "mkl/torch": best["mkl"] / best["torch"],
                        **r,
                    }
                results[f"{threads}:{M}x{K}x{N}:{layout}"] = {"gflops": cell, "ratios": r}
                print(
                    f"{f'{M} x {K} x {N}':>17} {layout:>3}"
                    + "".join(f"{cell[k][0]:6.0f} /{cell[k][1]:5.0f}" for k in cols)
                    + "".join(f"{v:7.2f}" for v in r.values())
                    + f"  {what}"
                )
    print("\nload average at the end: " + " ".join(f"{v:.1f}" for v in os.getloadavg()))
    return results


if __name__ == "__main__":
    main()
