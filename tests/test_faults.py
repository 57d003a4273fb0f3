"""Fault tests: ``captionlab features`` and ``captionlab train`` killed with SIGKILL at random
points (real subprocesses), then finished the way a user would (run again / --resume); every
array of the result must equal an uninterrupted run's.

The kill points are drawn from a seeded generator between the moment the process has
started its work (its partial store or run header exists) and the time an uninterrupted
run took, so they land in network passes, batch writes, epochs and checkpoint writes alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from captionlab.captioning import load_checkpoint
from captionlab.data.features import FeatureExtractorConfig, FeatureStore, partial_path
from captionlab.data.shapes import generate_shapes
from captionlab.extract import extract_features
from captionlab.runs.train import train_run

SRC = Path(__file__).resolve().parents[1] / "src"
KILLS = 2  # kills per command in the fast suite (more with -m slow: test_*_many_kills)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def kill_at_random_point(argv, started: Path, seconds: float, rng) -> str:
    """Start ``captionlab argv``; once ``started`` exists, wait a random part of
    ``seconds`` and SIGKILL it. Returns "killed" or "finished" (it ended first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "captionlab.cli", *map(str, argv)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(float(rng.uniform(0, seconds)))
    if proc.poll() is not None:
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        return "finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return "killed"


# -- features --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return generate_shapes(root / "shapes", 40, 8, 8, image_size=64, seed=5, progress=False)


CONFIG = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=8)
FEATURE_ARGS = ["--size", "64", "--pool", "avg+2x2", "--pca", "8", "--batch-size", "8",
                "--workers", "0", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def reference_store(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    started = time.perf_counter()
    extract_features(shapes / "dataset.json", out, CONFIG, batch_size=8, workers=0,
                     threads=1, progress=False)  # fmt: skip
    return out, time.perf_counter() - started


def assert_same_store(a_path: Path, b_path: Path) -> None:
    a, b = FeatureStore.open(a_path), FeatureStore.open(b_path)
    assert (a.image_ids, a.paths, a.splits, a.failed) == (b.image_ids, b.paths, b.splits, b.failed)
    assert a.config == b.config
    # Batches after a resume start elsewhere: convolutions may round differently (~1e-6).
    ids = a.image_ids
    np.testing.assert_allclose(a.raw_features_for(ids), b.raw_features_for(ids), atol=1e-5)
    np.testing.assert_allclose(a.pca.mean, b.pca.mean, atol=1e-5)
    np.testing.assert_allclose(a.pca.explained_variance, b.pca.explained_variance, rtol=1e-3)
    # The projected features, compared up to the basis (the top components may rotate within
    # a near-degenerate subspace): distances between images are what the model sees.
    fa, fb = a.features_for(ids), b.features_for(ids)
    da = np.linalg.norm(fa[:, None] - fa[None], axis=-1)
    db = np.linalg.norm(fb[:, None] - fb[None], axis=-1)
    np.testing.assert_allclose(da, db, rtol=1e-3, atol=1e-3)


def _features_killed(shapes, reference_store, tmp_path, kills, seed):
    ref, seconds = reference_store
    out = tmp_path / "killed.h5"
    argv = ["features", shapes / "dataset.json", "--out", out, *FEATURE_ARGS]
    rng = np.random.default_rng(seed)
    outcomes = [kill_at_random_point(argv, partial_path(out), seconds, rng) for _ in range(kills)]
    # the user runs the same command again: it resumes and finishes
    summary = extract_features(shapes / "dataset.json", out, CONFIG, batch_size=8, workers=0,
                               threads=1, progress=False)  # fmt: skip
    assert not partial_path(out).exists()
    assert_same_store(out, ref)
    return outcomes, summary


def test_features_killed_and_resumed_equals_an_uninterrupted_run(shapes, reference_store, tmp_path):
    outcomes, summary = _features_killed(shapes, reference_store, tmp_path, KILLS, seed=1)
    print(f"features: {outcomes}, resumed from {summary.get('resumed_from')} images")


@pytest.mark.slow
def test_features_many_kills(shapes, reference_store, tmp_path):
    for seed in range(4):
        _features_killed(shapes, reference_store, tmp_path / str(seed), 4, seed=10 + seed)


# -- train -----------------------------------------------------------------------------------
TRAIN = dict(hidden_dim=16, wordvec_dim=8, epochs=8, batch_size=20, val_images=8, seed=2)
TRAIN_ARGS = [arg for k, v in TRAIN.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def reference_run(shapes, reference_store, tmp_path_factory):
    store, _ = reference_store
    out = tmp_path_factory.mktemp("ref_run") / "run"
    started = time.perf_counter()
    train_run(shapes / "dataset.json", store, out, TRAIN, progress=False, verbose=False)
    return out, time.perf_counter() - started


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.npz", "best.npz"):
        ma, sa = load_checkpoint(a / name)
        mb, sb = load_checkpoint(b / name)
        for key in ma.params:
            np.testing.assert_array_equal(ma.params[key], mb.params[key], err_msg=f"{name} {key}")
        _assert_same_tree(sa["solver_state"], sb["solver_state"], name)
        assert sa["extra"]["training_data"] == sb["extra"]["training_data"]
    for name in ("log.json", "vocab.json"):
        assert _run_record(a / name) == _run_record(b / name), name
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    assert ca["train"] == cb["train"]


def _run_record(path: Path):
    """A run's JSON without each epoch's BLAS thread count (the machine's load chose it)."""
    record = json.loads(path.read_text())
    for epoch in record.get("epochs", []) if isinstance(record, dict) else []:
        epoch.pop("blas_threads", None)
    return record


def _assert_same_tree(x, y, where: str) -> None:
    if isinstance(x, dict):
        assert set(x) == set(y), where
        for k in x:
            _assert_same_tree(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same_tree(u, v, f"{where}[{i}]")
    elif isinstance(x, np.ndarray):
        np.testing.assert_array_equal(x, y, err_msg=where)
    else:
        assert x == y, where


def _train_killed(shapes, reference_store, reference_run, tmp_path, kills, seed):
    store, _ = reference_store
    ref, seconds = reference_run
    out = tmp_path / "run"
    new = ["train", "--data", shapes / "dataset.json", "--features", store, "--out", out,
           *TRAIN_ARGS, "--quiet"]  # fmt: skip
    rng = np.random.default_rng(seed)
    outcomes = []
    for _ in range(kills):
        # what a user does: resume when an epoch was saved, else start the run again
        argv = ["train", "--resume", out, "--quiet"] if (out / "last.npz").exists() else new
        started = out / "config.json" if argv is new else out / "last.npz"
        outcomes.append(kill_at_random_point(argv, started, seconds, rng))
    if (out / "last.npz").exists():
        train_run(None, None, out, None, resume=True, progress=False, verbose=False)
    else:
        train_run(shapes / "dataset.json", store, out, TRAIN, progress=False, verbose=False)
    assert_same_run(out, ref)
    return outcomes


def test_train_killed_and_resumed_equals_an_uninterrupted_run(
    shapes, reference_store, reference_run, tmp_path
):
    outcomes = _train_killed(shapes, reference_store, reference_run, tmp_path, KILLS, seed=3)
    print(f"train: {outcomes}")


@pytest.mark.slow
def test_train_many_kills(shapes, reference_store, reference_run, tmp_path):
    for seed in range(4):
        _train_killed(
            shapes, reference_store, reference_run, tmp_path / str(seed), 5, seed=20 + seed
        )
