"""benchmarks/bench_scale.py runs end to end (small), and reports its peaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scale_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--images", "300",
         "--val", "30", "--test", "30", "--pool", "avg", "--pca", "8", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("store: PCA fit", "train: one epoch", "evaluate: test split"):
        assert stage in proc.stdout
    assert "within the budget of 2 GB" in proc.stdout
