"""benchmarks/bench_gemm.py: its MKL column computes the products it claims to time (every
layout the layers use, both dtypes), and the script runs at small shapes. Not a timing.

The MKL checks skip where the optional ``mkl`` package is not installed (it is not a
dependency of captionlab; see the README's speed section).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gemm.py"
TOL = {np.float32: 1e-6, np.float64: 1e-12}
# The script's layouts at small sizes, one not a multiple of the vector width.
SMALL = [
    (8, 16, 40, "sn", "rows of an (M, 16, K) buffer"),
    (8, 40, 16, "st", "rows, B transposed"),
    (30, 12, 40, "nn", "both C-ordered"),
    (30, 40, 12, "nt", "B transposed"),
    (12, 30, 40, "tn", "A transposed"),
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gemm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mkl_column_equals_numpy_in_every_layout(bench, dtype):
    mkl = bench.load_mkl("gnu")
    if mkl is None:
        pytest.skip("the mkl package is not installed")
    rng = np.random.default_rng(0)
    for M, K, N, layout, what in SMALL:
        a, b = bench.operands(M, K, N, layout, dtype, rng)
        assert a.shape == (M, K) and b.shape == (K, N), what
        out = np.full((M, N), np.nan, dtype=dtype)
        got = mkl.matmul(a, b, out)
        assert got is out and got.dtype == dtype
        ref = a.astype(np.float64) @ b.astype(np.float64)
        tol = TOL[dtype]
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max(), err_msg=what)


def test_mkl_rejects_an_operand_blas_cannot_read(bench):
    with pytest.raises(ValueError, match="strides"):
        bench.Mkl.operand(np.zeros((4, 6))[:, ::2])


def test_bench_gemm_runs_every_shape(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SHAPES", tuple(SMALL))
    results = bench.main(["--threads", "1", "--repeats", "1", "--inner", "1"])
    assert sorted(results) == sorted(f"1:{M}x{K}x{N}:{lay}" for M, K, N, lay, _ in SMALL)
    for row in results.values():
        assert "numpy/torch" in row["ratios"]
        assert all(v[0] > 0 for v in row["gflops"].values())
    out = capsys.readouterr().out
    assert "load average" in out and out.count("rows of an") == 1


def test_bench_gemm_without_mkl_says_so_and_times_the_rest(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SHAPES", tuple(SMALL[:1]))
    monkeypatch.setattr(bench, "load_mkl", lambda layer: None)
    results = bench.main(["--threads", "1", "--repeats", "1", "--inner", "1"])
    (row,) = results.values()
    assert sorted(row["gflops"]) == ["numpy", "torch"]
    assert list(row["ratios"]) == ["numpy/torch"]
    assert "no mkl column" in capsys.readouterr().out
