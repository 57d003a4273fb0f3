"""benchmarks/bench_attention.py still runs (tiny sizes, one repeat): not a timing."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


def test_bench_attention_runs_and_prints_every_case(capsys):
    spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--size", "3,4,5,6,7,8,10", "--grids", "2,4", "--repeats", "1", "--warmup", "0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    names = [line.split("  ")[0].strip() for line in out.splitlines()[2:]]
    assert names == ["attention L=2", "attention L=4", "lstm (peer)"]
    assert out.splitlines()[-1].split()[-1] == "1.00"
