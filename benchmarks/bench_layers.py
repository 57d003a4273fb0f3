"""Time captionlab's RNN/LSTM/GRU against the per-step reference and torch.nn on the CPU.

At the cs231n captioning size (N=128, T=16, D=256, H=512 by default), in float32 and
float64, for forward and forward+backward, this script times

* ``ref``   -- the straightforward per-step loop over the step functions (tests/nn),
* ``fast``  -- captionlab.nn's sequence functions,
* ``torch`` -- torch.nn.RNN/LSTM/GRU (batch_first, one layer) on the CPU,
* ``gemm``  -- only the matrix products the fast path does (same shapes, same loop): the
  floor the fast path could reach if its element-wise gate arithmetic cost nothing,

in one process, interleaved repeat by repeat, with a pause whenever it switches library
(OpenBLAS and torch worker threads slow each other for about 0.1 s after a switch). It
prints medians, the ratios fast/torch and ref/fast, and fast's GFLOP/s against a plain GEMM
measured in the same run. Numbers on a shared machine are noisy: compare ratios, not times.

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


def numpy_cases(layer, args, dh, mode):
    """Return {'ref': fn, 'fast': fn, 'gemm': fn} for one layer and mode."""
    fwd = getattr(nn, f"{layer}_forward")
    bwd = getattr(nn, f"{layer}_backward")
    rfwd = getattr(nn_reference, f"{layer}_forward_ref")
    rbwd = getattr(nn_reference, f"{layer}_backward_ref")

    def fast():
        _h, cache = fwd(*args)
        if mode == "fwdbwd":
            bwd(dh, cache)

    def ref():
        _h, caches = rfwd(*args)
        if mode == "fwdbwd":
            rbwd(dh, caches)

    x, h0, Wx, Wh = args[:4]
    N, T, D = x.shape
    GH = Wx.shape[1]
    H = h0.shape[1]
    # The fast path's matrix products only, on its time-major buffers.
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))
    gates = np.empty((T, N, GH), dtype=x.dtype)
    hs = np.repeat(h0[None], T + 1, axis=0)
    tmp = np.empty((N, GH), dtype=x.dtype)
    dprev = np.empty((N, H), dtype=x.dtype)

    def gemm():
        np.matmul(x_tm.reshape(T * N, D), Wx, out=gates.reshape(T * N, GH))
        for t in range(T):
            np.matmul(hs[t], Wh, out=tmp)
        if mode == "fwdbwd":
            WhT = Wh.T
            for t in range(T - 1, -1, -1):
                np.matmul(gates[t], WhT, out=dprev)
            g2 = gates.reshape(T * N, GH)
            g2 @ Wx.T
            x_tm.reshape(T * N, D).T @ g2
            hs[:T].reshape(T * N, H).T @ g2

    return {"ref": ref, "fast": fast, "gemm": gemm}


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
    nn.kernels.set_num_threads(a.threads)
    print(
        f"N={N} T={T} D={D} H={H}, {a.threads} threads, median of {a.repeats}, "
        f"{a.clock} clock, numpy {np.__version__}, torch {torch.__version__}"
    )
    print(
        "gemm = the fast path's matrix products alone; 1 - gemm/fast is the share of its\n"
        "element-wise gate arithmetic and copies, which NumPy runs on one thread."
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
            gemm_t = statistics.median(
                time_once(peak_gemm, clock) for _ in range(max(5, a.repeats))
            )
            peak = 2.0 * N * T * (D + H) * 4 * H / gemm_t / 1e9
            print(f"\n{dname}: GEMM ({N * T}x{D + H})@({D + H}x{4 * H}) {peak:.1f} GFLOP/s")
            print(
                f"{'layer':<5} {'mode':<6} {'ref ms':>8} {'fast ms':>8} {'gemm ms':>8} "
                f"{'torch ms':>8} {'fast/torch':>10} {'ref/fast':>8} {'GFLOP/s':>8} "
                f"{'of peak':>7} {'gemm/fast':>9}"
            )
            for layer in a.layers.split(","):
                args, dh = make_inputs(layer, N, T, D, H, dtype)
                for mode in a.modes.split(","):
                    cases = numpy_cases(layer, args, dh, mode)
                    if a.no_ref:
                        del cases["ref"]
                    tfn = torch_case(layer, args, dh, mode)
                    times: dict[str, list[float]] = {k: [] for k in [*cases, "torch"]}
                    for rep in range(a.warmup + a.repeats):
                        for name, fn in cases.items():
                            t = time_once(fn, clock)
                            if rep >= a.warmup:
                                times[name].append(t)
                        time.sleep(a.pause)  # switching to torch
                        t = time_once(tfn, clock)
                        if rep >= a.warmup:
                            times["torch"].append(t)
                        time.sleep(a.pause)  # switching back to numpy
                    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                    gflops = gemm_flops(layer, N, T, D, H, mode) / (med["fast"] / 1e3) / 1e9
                    ref = med.get("ref", float("nan"))
                    print(
                        f"{layer:<5} {mode:<6} {ref:>8.1f} {med['fast']:>8.1f} "
                        f"{med['gemm']:>8.1f} {med['torch']:>8.1f} "
                        f"{med['fast'] / med['torch']:>10.2f} {ref / med['fast']:>8.2f} "
                        f"{gflops:>8.1f} {gflops / peak:>7.2f} {med['gemm'] / med['fast']:>9.2f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
