"""Time captionlab's RNN/LSTM/GRU against the per-step reference and torch.nn on the CPU.

At the cs231n captioning size (N=128, T=16, D=256, H=512 by default), in float32 and
float64, for forward and forward+backward, this script times

* ``fast``  -- captionlab.nn's sequence functions with the fused numba kernels (default),
* ``npk``   -- the same functions with the NumPy reference kernels (``--numpy-kernels``),
* ``ref``   -- the straightforward per-step loop over the step functions (tests/nn),
* ``torch`` -- torch.nn.RNN/LSTM/GRU (batch_first, one layer) on the CPU,
* ``gemm``  -- only the matrix products the fast path does (same shapes, same loop): the
  floor the fast path could reach if its element-wise gate arithmetic cost nothing,

in one process, interleaved repeat by repeat (fast, then torch, then the others), with a
pause whenever it switches library (OpenBLAS and torch worker threads slow each other for
about 0.1 s after a switch). It prints the minimum and the median of each, the ratios
fast/torch of both against the issue's targets, and fast's GFLOP/s against a plain GEMM
measured in the same run. On a machine shared with other work the minimum is the better
estimate of the undisturbed time, and the median says how disturbed the run was; compare
ratios, not times.

Why numba for the kernels: it compiles one loop per step that reads and writes each gate
buffer once, vectorised, on all cores; NumPy makes one pass over memory per operation on one
thread, and numexpr (the other candidate) evaluates one expression per call, so an LSTM step
(five outputs) would still be five passes. The NumPy kernels stay for reference and as the
fallback (``CAPTIONLAB_KERNELS=numpy``).

    python benchmarks/bench_layers.py                  # the full run (10 repeats)
    python benchmarks/bench_layers.py --repeats 3 --layers lstm --dtypes float32   # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "nn"))
import nn_reference  # the per-step reference lives with the tests

from captionlab import nn

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# The targets for fast/torch, forward+backward.
TARGETS = {"float32": {"lstm": 0.8, "rnn": 0.8, "gru": 0.85}, "float64": {}}
DEFAULT_TARGET = {"float32": 0.8, "float64": 0.7}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before timing")
    p.add_argument("--threads", type=int, default=2, help="BLAS and torch threads")
    p.add_argument("--pause", type=float, default=0.3, help="seconds to wait on library switch")
    p.add_argument("--layers", default="lstm,rnn,gru", help="comma-separated: lstm,rnn,gru")
    p.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes")
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma-separated: fwd,fwdbwd")
    p.add_argument("--size", default="128,16,256,512", help="N,T,D,H")
    p.add_argument("--no-ref", action="store_true", help="skip the (slow) per-step reference")
    p.add_argument(
        "--numpy-kernels", action="store_true", help="also time the NumPy reference kernels"
    )
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="wall time (the measure), or process CPU time (only meaningful with --threads 1, "
        "where it shows the work done on a machine loaded by others)",
    )
    return p.parse_args(argv)


def gemm_flops(layer: str, N: int, T: int, D: int, H: int, mode: str) -> float:
    """Matrix-product FLOPs: forward 2*N*T*(D+H)*G*H; backward twice that (dx+dWx, dh+dWh)."""
    fwd = 2.0 * N * T * (D + H) * GATES[layer] * H
    return fwd if mode == "fwd" else 3 * fwd


def make_inputs(layer, N, T, D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[layer]
    args = [
        rng.standard_normal((N, T, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((D, G * H)) / np.sqrt(D),
        rng.standard_normal((H, G * H)) / np.sqrt(H),
        rng.standard_normal(G * H) * 0.1,
    ]
    if layer == "gru":
        args.append(rng.standard_normal(G * H) * 0.1)
    dh = rng.standard_normal((N, T, H))
    return [a.astype(dtype) for a in args], dh.astype(dtype)


def numpy_cases(layer, args, dh, mode, numpy_kernels=False):
    """Return {'fast': fn, 'gemm': fn, 'ref': fn[, 'npk': fn]} for one layer and mode."""
    fwd = getattr(nn, f"{layer}_forward")
    bwd = getattr(nn, f"{layer}_backward")
    rfwd = getattr(nn_reference, f"{layer}_forward_ref")
    rbwd = getattr(nn_reference, f"{layer}_backward_ref")

    def fast():
        _h, cache = fwd(*args)
        if mode == "fwdbwd":
            bwd(dh, cache)

    def npk():
        with nn.use_kernels("numpy"):
            fast()

    def ref():
        _h, caches = rfwd(*args)
        if mode == "fwdbwd":
            rbwd(dh, caches)

    x, h0, Wx, Wh = args[:4]
    N, T, D = x.shape
    GH = Wx.shape[1]
    H = h0.shape[1]
    # The fast path's matrix products only, on its batch-major buffers.
    x2 = x.reshape(N * T, D)
    gates = np.empty((N, T, GH), dtype=x.dtype)
    hs = np.repeat(h0[:, None], T, axis=1)  # (N, T, H)
    tmp = np.empty((N, GH), dtype=x.dtype)
    dprev = np.empty((N, H), dtype=x.dtype)

    def gemm():
        np.matmul(x2, Wx, out=gates.reshape(N * T, GH))
        for t in range(T):
            np.matmul(hs[:, t], Wh, out=tmp)
        if mode == "fwdbwd":
            WhT = Wh.T
            for t in range(T - 1, -1, -1):
                np.matmul(gates[:, t], WhT, out=dprev)
            g2 = gates.reshape(N * T, GH)
            g2 @ Wx.T
            x2.T @ g2
            hs.reshape(N * T, H).T @ g2

    cases = {"fast": fast, "gemm": gemm, "ref": ref}
    if numpy_kernels:
        cases["npk"] = npk
    return cases


def torch_case(layer, args, dh, mode):
    x, h0 = args[0], args[1]
    D, H = x.shape[2], h0.shape[1]
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[layer]
    tdtype = torch.float32 if x.dtype == np.float32 else torch.float64
    m = cls(D, H, batch_first=True).to(tdtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0)[None].requires_grad_(True)
    dht = torch.from_numpy(dh)
    state = (h0t, torch.zeros_like(h0t)) if layer == "lstm" else h0t

    def run():
        out, _ = m(xt, state)
        if mode == "fwdbwd":
            out.backward(dht)
            m.zero_grad(set_to_none=True)
            xt.grad = None
            h0t.grad = None

    return run


def time_once(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    clock = time.perf_counter if a.clock == "wall" else time.process_time
    N, T, D, H = (int(v) for v in a.size.split(","))
    torch.set_num_threads(a.threads)
    if hasattr(nn, "kernels"):  # (absent before the fused kernels: compare old code too)
        nn.kernels.set_num_threads(a.threads)
    print(
        f"N={N} T={T} D={D} H={H}, {a.threads} threads, median of {a.repeats}, "
        f"{a.clock} clock, numpy {np.__version__}, torch {torch.__version__}, "
        f"malloc {nn.memory_policy() if hasattr(nn, 'memory_policy') else 'system'}"
    )
    print(
        "gemm = the fast path's matrix products alone; 1 - gemm/fast is the share of its\n"
        "element-wise work (fused numba kernels: one pass per step, all threads).\n"
        f"kernels: {nn.kernels_in_use() if hasattr(nn, 'kernels') else 'none (before)'}; "
        "times in ms, min / median of the repeats"
    )
    with threadpool_limits(limits=a.threads, user_api="blas"):
        for dname in a.dtypes.split(","):
            dtype = np.dtype(dname)
            # The GEMM peak of this run, at the shape (N*T, D+H) x (D+H, 4H).
            A = np.random.default_rng(1).standard_normal((N * T, D + H)).astype(dtype)
            B = np.random.default_rng(2).standard_normal((D + H, 4 * H)).astype(dtype)

            def peak_gemm(A=A, B=B):
                return A @ B

            peak_gemm()
            gemm_t = min(time_once(peak_gemm, clock) for _ in range(max(5, a.repeats)))
            peak = 2.0 * N * T * (D + H) * 4 * H / gemm_t / 1e9
            print(f"\n{dname}: GEMM ({N * T}x{D + H})@({D + H}x{4 * H}) {peak:.1f} GFLOP/s (min)")
            print(
                f"{'layer':<5} {'mode':<6} {'fast min/med':>14} {'torch min/med':>14} "
                f"{'ratio min':>9} {'ratio med':>9} {'target':>6} {'gemm':>7} {'of peak':>7} "
                f"{'npk':>7} {'ref':>7}"
            )
            for layer in a.layers.split(","):
                args, dh = make_inputs(layer, N, T, D, H, dtype)
                for mode in a.modes.split(","):
                    cases = numpy_cases(layer, args, dh, mode, a.numpy_kernels)
                    if a.no_ref:
                        del cases["ref"]
                    tfn = torch_case(layer, args, dh, mode)
                    order = ["fast", "torch", *(k for k in cases if k != "fast")]
                    fns = {**cases, "torch": tfn}
                    times: dict[str, list[float]] = {k: [] for k in order}
                    last = None
                    for rep in range(a.warmup + a.repeats):
                        for name in order:
                            lib = "torch" if name == "torch" else "numpy"
                            if lib != last:
                                time.sleep(a.pause)  # switching library
                                last = lib
                            t = time_once(fns[name], clock)
                            if rep >= a.warmup:
                                times[name].append(t)
                    lo = {k: min(v) * 1e3 for k, v in times.items()}
                    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                    gflops = gemm_flops(layer, N, T, D, H, mode) / (lo["fast"] / 1e3) / 1e9
                    target = TARGETS[dname].get(layer, DEFAULT_TARGET[dname])
                    print(
                        f"{layer:<5} {mode:<6} {lo['fast']:>6.1f}/{med['fast']:<7.1f} "
                        f"{lo['torch']:>6.1f}/{med['torch']:<7.1f} "
                        f"{lo['fast'] / lo['torch']:>9.2f} {med['fast'] / med['torch']:>9.2f} "
                        f"{target if mode == 'fwdbwd' else '-':>6} {lo['gemm']:>7.1f} "
                        f"{gflops / peak:>7.2f} {lo.get('npk', float('nan')):>7.1f} "
                        f"{lo.get('ref', float('nan')):>7.1f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
