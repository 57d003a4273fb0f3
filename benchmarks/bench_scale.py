"""Scale: a feature store of 120,000 images through PCA fitting, a training epoch and
evaluation, with the peak memory of each stage measured and printed (budget: 2 GB).

    python benchmarks/bench_scale.py                 # 120,000 images, 6400-d raw, PCA 512
    python benchmarks/bench_scale.py --images 3000   # a quick look

The rows are synthetic (a seeded low-rank signal plus noise, as wide as the demo's
``avg+2x2`` pooling: 6,400 floats, 3 GB for 120,000 images), written through the same
:class:`~captionlab.data.features.FeatureStoreWriter` and fitted by the same PCA code
(:func:`~captionlab.data.pca.fit_pca_rows`) as ``captionlab features``; the dataset is a
Karpathy ``dataset.json`` with one synthetic caption per image. Then ``train_run`` trains one
epoch of a small LSTM on the 110,000 training images and ``evaluate_run`` captions and scores
the 5,000 test images, both exactly as ``captionlab train`` and ``captionlab evaluate`` do.

Peak memory is the process's maximum resident set size (``resource.getrusage``) after each
stage; it only grows, so each line shows the peak up to the end of that stage. The exit
status is 1 when the peak passes ``--budget-gb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from captionlab.data._io import file_sha256
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.features import FeatureStoreWriter
from captionlab.data.pca import fit_pca_rows
from captionlab.runs.config import TrainConfig
from captionlab.runs.evaluate import evaluate_run
from captionlab.runs.train import train_run

WORDS = ("a small large red green blue yellow circle square triangle star left right above "
         "below of the and is there two three one next to near").split()  # fmt: skip


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_dataset(path: Path, n: int, n_val: int, n_test: int, seed: int) -> list[str]:
    """A Karpathy dataset.json of n images (the last n_val + n_test are val and test)."""
    rng = np.random.default_rng(seed)
    images, splits = [], []
    for i in range(n):
        split = "train" if i < n - n_val - n_test else ("val" if i < n - n_test else "test")
        words = rng.choice(len(WORDS), size=int(rng.integers(6, 12)))
        caption = " ".join(WORDS[w] for w in words)
        images.append({"filename": f"img_{i:06d}.png", "imgid": i, "split": split,
                       "sentences": [{"raw": caption}]})  # fmt: skip
        splits.append(split)
    path.write_text(json.dumps({"dataset": "synthetic", "images": images}))
    return splits


def write_store(out: Path, dataset: Path, splits: list[str], config, seed: int) -> dict:
    """Synthetic raw rows through the writer, the PCA fit and finalize (as extraction does)."""
    n, R = len(splits), config.raw_dim
    ids = [str(i) for i in range(n)]
    root = dataset.parent
    paths = [str((root / f"img_{i:06d}.png").absolute()) for i in range(n)]
    writer = FeatureStoreWriter.open(out, config, ids, paths, splits, restart=True)
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, R)).astype(np.float32)  # a 64-d signal in R dims
    started = time.perf_counter()
    step = 2048
    for i in range(0, n, step):
        rows = np.arange(i, min(i + step, n))
        signal = rng.standard_normal((len(rows), 64)).astype(np.float32)
        noise = 0.1 * rng.standard_normal((len(rows), R), dtype=np.float32)
        writer.write(rows, np.maximum(signal @ basis + noise, 0))  # ReLU-like, like the CNN's
    written = time.perf_counter() - started
    started = time.perf_counter()
    fit_rows, split = writer.fit_rows()
    pca = fit_pca_rows(writer.raw_rows, fit_rows, R, config.pca_dim)
    fitted = time.perf_counter() - started
    source = {"source": str(dataset.resolve()), "source_sha256": file_sha256(dataset)}
    started = time.perf_counter()
    writer.finalize(pca, (len(fit_rows), split), source=source)
    writer.close()
    return {"write": written, "pca": fitted, "finalize": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120_000, help="images in the store")
    parser.add_argument("--val", type=int, default=5000, help="of which validation images")
    parser.add_argument("--test", type=int, default=5000, help="of which test images")
    parser.add_argument("--pool", default="avg+2x2", help="pooling, decides the raw width")
    parser.add_argument("--pca", type=int, default=512, help="PCA size")
    parser.add_argument("--hidden-dim", type=int, default=64, help="H of the LSTM")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per batch")
    parser.add_argument("--budget-gb", type=float, default=2.0, help="peak memory allowed")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    config = FeatureExtractorConfig(pool=args.pool, pca_dim=args.pca)
    print(f"{args.images:,} images, raw {config.raw_dim}-d "
          f"({args.images * config.raw_dim * 4 / 2**30:.1f} GiB of float32), PCA {args.pca}; "
          f"work folder {work}")  # fmt: skip
    rows = []

    def stage(name: str, seconds: float, note: str = "") -> None:
        rows.append((name, seconds, peak_mb(), note))
        print(f"  {name:<22} {seconds:8.1f} s   peak RSS {rows[-1][2]:8.0f} MB   {note}")

    stage("start (imports)", 0.0)
    started = time.perf_counter()
    dataset = work / "dataset.json"
    splits = write_dataset(dataset, args.images, args.val, args.test, args.seed)
    stage("dataset.json", time.perf_counter() - started,
          f"{dataset.stat().st_size / 2**20:.0f} MB")  # fmt: skip
    store = work / "feats.h5"
    seconds = write_store(store, dataset, splits, config, args.seed)
    stage("store: write rows", seconds["write"], f"{store.stat().st_size / 2**30:.1f} GiB file")
    stage("store: PCA fit", seconds["pca"], f"{splits.count('train'):,} training rows")
    stage("store: finalize", seconds["finalize"], "project every row, copy")
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    train = TrainConfig(hidden_dim=args.hidden_dim, wordvec_dim=32, epochs=1,
                        batch_size=args.batch_size, val_images=250, seed=args.seed)  # fmt: skip
    started = time.perf_counter()
    summary = train_run(dataset, store, run, train, progress=False, verbose=False)
    note = f"{summary['iterations']} iterations, {summary['train_captions']:,} captions"
    stage("train: one epoch", time.perf_counter() - started, note)
    started = time.perf_counter()
    result = evaluate_run(run, dataset, split="test", beams=(1,), meteor=False)
    bleu = result["results"]["greedy"]["metrics"].get("BLEU-4")
    stage("evaluate: test split", time.perf_counter() - started,
          f"{result['images']:,} images, BLEU-4 {bleu:.3f}")  # fmt: skip
    peak = max(r[2] for r in rows)
    verdict = "within" if peak < args.budget_gb * 1024 else "OVER"
    print(f"peak RSS {peak:.0f} MB: {verdict} the budget of {args.budget_gb:g} GB")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    raise SystemExit(main())
