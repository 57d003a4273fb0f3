"""Caption quality of the RNN, LSTM and attention captioners over several training seeds.

Each captioner is trained as ``captionlab demo`` trains it (the demo's data, features and
settings, :class:`captionlab.demo.DemoConfig`; only the training seed changes), then
captions, with beam search, (a) a split of the demo's benchmark (``--split test``, or
``val`` for choosing settings) and (b) fresh scenes drawn with a seed no other part of
captionlab uses, whose features come from the demo store's extractor exactly as ``caption``
makes them for new images. Scored by scene accuracy (object F1, colour, attributes,
relations named right, count) and BLEU-4; printed as mean +- standard deviation over the
seeds, against the issue's targets, and written to a JSON file.

Trained runs are cached in ``--work`` (a finished run with the same settings is reused), so a
second invocation only re-scores. One training at a time.

    python benchmarks/bench_quality.py --out quality.json            # 3 seeds, all models
    python benchmarks/bench_quality.py --split val --seeds 0 --models attention \\
        --set attention_epochs=6 --tag e6                           # a setting, on val
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from captionlab._atomic import write_json
from captionlab.captioning import load_checkpoint
from captionlab.captioning.metrics import bleu4
from captionlab.data import load_dataset
from captionlab.data.features import FeatureStore
from captionlab.data.shapes import generate_shapes, load_scenes
from captionlab.demo import DemoConfig, prepare_data, train_cached
from captionlab.runs.evaluate import relation_choice, scene_scores
from captionlab.runs.inference import caption_features, features_for_model, needs_grid

#: Scenes of the fresh set are drawn with this seed; nothing else in captionlab uses it.
FRESH_SEED = 2_718_281
#: (metric key, column, target) of the issue.
TARGETS = (
    ("object_f1", "object F1", 0.95),
    ("colour_accuracy", "colour", 0.97),
    ("attribute_accuracy", "attributes", 0.95),
    ("relation_accuracy", "relations", 0.85),
    ("n_relations_named", "relations named", None),
    ("relation_choice_2", "relation choice (2 objects)", None),
    ("relation_choice_3", "relation choice (3 objects)", None),
    ("count_accuracy", "count", 0.97),
    ("bleu4", "BLEU-4", None),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("demo_out/cache"),
        help="folder of the demo's data and features (shared with `make demo`, made if missing)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("demo_out/quality"),
        help="folder for the fresh scenes and the trained runs (cached)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file of every number")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    p.add_argument("--models", default="rnn,lstm,attention", help="captioners (demo names)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="split of the demo's benchmark to score (val: for choosing settings)",
    )
    p.add_argument("--fresh", type=int, default=300, help="fresh scenes (0: none)")
    p.add_argument("--fresh-seed", type=int, default=FRESH_SEED, help="their seed")
    p.add_argument("--beam", type=int, default=3, help="beam size")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DemoConfig field (e.g. attention_epochs=6); repeatable",
    )
    p.add_argument("--tag", default="", help="suffix of the run folders (for --set variants)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def demo_config(overrides: list[str]) -> DemoConfig:
    """The demo's settings with ``FIELD=VALUE`` overrides (typed like the field)."""
    config = DemoConfig()
    values = {}
    types = {f.name: type(getattr(config, f.name)) for f in dataclasses.fields(config)}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"--set {item}: DemoConfig has no field {name!r}")
        kind = types[name]
        values[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dataclasses.replace(config, **values)


def fresh_scenes(work: Path, store: Path, n: int, seed: int, image_size: int, progress: bool):
    """``(ids, scenes, references, {"pooled": (n, D), "grid": (n, L, Dg)})`` of n new scenes,
    features extracted as ``captionlab caption`` extracts them for new images. The features
    are cached beside the images, keyed by the store (its config and file) and the scenes'
    ``dataset.json`` (so images drawn again at another size are not paired with old ones)."""
    from captionlab.extract import FeatureExtractor

    folder = generate_shapes(
        work / f"fresh_{n}_seed{seed}", 0, 0, n, image_size, seed=seed, progress=progress
    )
    dataset = load_dataset(folder / "dataset.json")
    records = dataset.split("test")
    cache = folder / "features.npz"
    st = FeatureStore.open(store)
    stat = Path(store).stat()  # the store's config and this very file (its PCA bases)
    stamp = f"{st.config.to_json()} {Path(store).resolve()} {stat.st_size} {stat.st_mtime_ns}"
    stamp += " " + hashlib.sha256((folder / "dataset.json").read_bytes()).hexdigest()
    key = np.frombuffer(stamp.encode(), np.uint8)
    if cache.is_file():
        with np.load(cache) as z:
            if np.array_equal(z["config"], key):
                feats = {"pooled": z["pooled"], "grid": z["grid"]}
                return _fresh(records, folder, feats)
    extractor = FeatureExtractor.from_store(st)
    pooled, grid = extractor.transform_with_grid([r.path for r in records])
    np.savez(cache, config=key, pooled=pooled, grid=grid)
    return _fresh(records, folder, {"pooled": pooled, "grid": grid})


def _fresh(records, folder: Path, feats: dict):
    scenes = load_scenes(folder / "scenes.json")
    ids = [r.image_id for r in records]
    return ids, [scenes[i] for i in ids], [list(r.captions) for r in records], feats


def score(model, features, texts: list[str], scenes: list[dict], references) -> dict:
    """Scene accuracy and BLEU-4 of the captions, and the relation-choice questions."""
    out = scene_scores(texts, scenes)
    out["bleu4"] = bleu4(texts, references)
    out.update(relation_choice(model, features, scenes))
    return out


def evaluate(run: Path, dataset, store: Path, split: str, fresh, beam: int) -> dict:
    """Scores of one trained run on the split and on the fresh scenes."""
    model, _ = load_checkpoint(run / "best.npz")
    records = dataset.split(split)
    ids = [r.image_id for r in records]
    st = FeatureStore.open(store)
    feats = features_for_model(model, st, ids, run)
    scenes = load_scenes(Path(dataset.source).parent / "scenes.json")
    result = {
        split: score(
            model,
            feats,
            caption_features(model, feats, beam=beam),
            [scenes[i] for i in ids],
            [list(r.captions) for r in records],
        ),
    }
    if fresh is not None:
        _, f_scenes, f_refs, f_feats = fresh
        x = f_feats["grid" if needs_grid(model) else "pooled"].astype(model.dtype)
        result["fresh"] = score(model, x, caption_features(model, x, beam=beam), f_scenes, f_refs)
    return result


def summarise(runs: dict) -> dict:
    """{model: {set: {metric: [mean, std, values]}}} over the seeds."""
    out: dict = {}
    for model, by_seed in runs.items():
        sets = next(iter(by_seed.values()))["scores"].keys()
        out[model] = {}
        for name in sets:
            out[model][name] = {}
            for key, _, _ in TARGETS:
                vals = [r["scores"][name][key] for r in by_seed.values()]
                vals = [v for v in vals if v is not None]
                if not vals:
                    continue
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                out[model][name][key] = [statistics.fmean(vals), std, vals]
    return out


def table(summary: dict, seeds: int) -> str:
    head = "| model | scenes | " + " | ".join(c for _, c, _ in TARGETS) + " |"
    lines = [head, "|" + "---|" * (len(TARGETS) + 2)]
    for model, sets in summary.items():
        for name, metrics in sets.items():
            cells = []
            for key, _, target in TARGETS:
                if key not in metrics:
                    cells.append("-")
                    continue
                mean, std, _ = metrics[key]
                mark = "" if target is None or mean >= target else " *"
                digits = 1 if key.startswith("n_") else 3  # counts
                cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}{mark}")
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    targets = ", ".join(f"{c} >= {t}" for _, c, t in TARGETS if t is not None)
    lines.append(
        f"\nmean ± standard deviation over {seeds} training seed(s); * below target ({targets})"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = demo_config(args.set)
    progress = not args.no_progress
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    # The demo's data and store (the grid too, whichever models are trained here).
    dataset_path, store = prepare_data(args.cache, config, progress)
    dataset = load_dataset(dataset_path)
    fresh = None
    if args.fresh:
        fresh = fresh_scenes(
            args.work, store, args.fresh, args.fresh_seed, config.image_size, progress
        )
    runs: dict = {}
    for kind in models:
        runs[kind] = {}
        for seed in seeds:
            tconfig = dataclasses.replace(config.train_config(kind), seed=seed)
            run = args.work / "runs" / f"{kind}{args.tag}_seed{seed}"
            print(f"== {kind} seed {seed}: {run}", flush=True)
            started = time.perf_counter()
            summary = train_cached(dataset_path, store, run, tconfig, progress)
            trained = round(time.perf_counter() - started, 1)
            scores = evaluate(run, dataset, store, args.split, fresh, args.beam)
            runs[kind][seed] = {
                "run": str(run),
                "train_config": dataclasses.asdict(tconfig),
                "train_seconds": summary.get("seconds"),
                "wall_seconds_this_call": trained,
                "best_epoch": summary.get("best_epoch"),
                "scores": scores,
            }
            line = ", ".join(
                f"{name}: F1 {s['object_f1']:.3f} colour {s['colour_accuracy']:.3f} "
                f"rel {s['relation_accuracy'] or 0:.3f}"
                for name, s in scores.items()
            )
            print(f"   {line}", flush=True)
    summary = summarise(runs)
    result = {
        "command": "python benchmarks/bench_quality.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "demo_config": dataclasses.asdict(config),
        "split": args.split,
        "fresh": {"n": args.fresh, "seed": args.fresh_seed} if args.fresh else None,
        "beam": args.beam,
        "seeds": seeds,
        "runs": runs,
        "summary": summary,
    }
    print()
    print(table(summary, len(seeds)))
    if args.out:
        write_json(args.out, result)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
