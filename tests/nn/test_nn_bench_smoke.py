"""benchmarks/bench_layers.py still runs (tiny sizes, one repeat, no pauses): not a timing."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_layers.py"


def test_bench_layers_runs_and_prints_every_case(capsys):
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--size", "2,3,4,5", "--repeats", "1", "--warmup", "0", "--pause", "0"]
    argv += ["--dtypes", "float32"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["lstm"], ["rnn"], ["gru"])
    ]
    cases = [(layer, mode) for layer in ("lstm", "rnn", "gru") for mode in ("fwd", "fwdbwd")]
    assert sorted((r[0], r[1]) for r in rows) == sorted(cases)
    assert all(len(r) == 11 for r in rows)
