"""``captionlab demo``: the whole pipeline on the built-in shapes benchmark, from nothing.

1. generate the shapes benchmark (cached in ``OUT/cache``),
2. extract EfficientNet-Lite0 features (cached),
3. train the captioners (cached per config): an LSTM and a vanilla RNN on the pooled
   features, and the Show-Attend-Tell attention captioner on the grid stored beside them
   (one extraction, one forward pass per image, gives both),
4. caption the test split greedily and with beam search; COCO metrics + scene accuracy,
5. write ``gallery.html`` / ``gallery.png`` (right and wrong captions; attention strips:
   where the attention captioner looked for each word; two captions explained word by
   word), ``loss.png``, ``metrics.json`` and print the comparison table,
6. the network-visualization figures on bundled photos (saliency, fooling image, class
   visualization) into ``OUT/vision/``.

Only wiring: every step is a library call that the other commands use too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captionlab._atomic import write_json
from captionlab.bounds import SEED, check_fields, integer, real
from captionlab.captioning.model import CELL_TYPES
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.errors import UserError
from captionlab.runs.config import TrainConfig

__all__ = ["DemoConfig", "prepare_data", "run_demo", "train_cached", "vision_figures"]

#: The captioners the demo can train: CaptioningRNN's cells, the attention captioner and the
#: Transformer over the grid (not in the default list: ``--models lstm,rnn,transformer``).
DEMO_MODELS = (*CELL_TYPES, "attention", "transformer")
#: The captioners that read the store's grid.
GRID_MODELS = ("attention", "transformer")


@dataclass
class DemoConfig:
    """What the demo does; ``--quick`` swaps in :meth:`quick` (for tests and a first look)."""

    n_train: int = field(
        default=8000, metadata={"help": "training images generated", "bound": integer(1, 10**7)}
    )
    n_val: int = field(
        default=500, metadata={"help": "validation images generated", "bound": integer(1, 10**7)}
    )
    n_test: int = field(
        default=500, metadata={"help": "test images generated", "bound": integer(1, 10**7)}
    )
    image_size: int = field(
        default=128,
        metadata={"help": "side of the generated images, px", "bound": integer(32, 1024)},
    )
    feature_size: int = field(
        default=160, metadata={"help": "image side fed to the CNN, px", "bound": integer(32, 1024)}
    )
    pool: str = field(default="avg+2x2", metadata={"help": "feature pooling (see features)"})
    pca_dim: int = field(
        default=512,
        metadata={"help": "PCA size of the features (0: none)", "bound": integer(0, 10**6)},
    )
    models: str = field(
        default="lstm,rnn,attention",
        metadata={
            "help": "captioners to train, comma-separated: lstm, rnn, gru (on pooled features) "
            "and attention, transformer (on the grid)"
        },
    )
    hidden_dim: int = field(
        default=256, metadata={"help": "H of every captioner", "bound": integer(1, 16384)}
    )
    wordvec_dim: int = field(
        default=128, metadata={"help": "W of every captioner", "bound": integer(1, 16384)}
    )
    epochs: int = field(
        default=4,
        metadata={"help": "training epochs of lstm, rnn, gru", "bound": integer(1, 10**5)},
    )
    learning_rate: float = field(
        default=5e-3, metadata={"help": "Adam learning rate", "bound": real(0, lo_open=True)}
    )
    attention_epochs: int = field(
        default=5,
        metadata={"help": "training epochs of attention", "bound": integer(1, 10**5)},
    )
    attention_hidden_dim: int = field(
        default=256,
        metadata={"help": "H of the attention captioner", "bound": integer(1, 16384)},
    )
    attention_dim: int = field(
        default=128,
        metadata={"help": "K of the attention captioner", "bound": integer(1, 16384)},
    )
    attention_penalty: float = field(
        default=0.0,
        metadata={"help": "lambda of the attention captioner's penalty", "bound": real(0, 1e6)},
    )
    attention_position: bool = field(
        default=False, metadata={"help": "the attention captioner learns a position embedding"}
    )
    attention_locations: bool = field(
        default=True,
        metadata={"help": "the attention captioner uses the cells' places (--locations)"},
    )
    attention_monitor: str = field(
        default="val_loss",
        metadata={
            "help": "what picks the attention captioner's best epoch (validation BLEU-4 of "
            "greedy captions picked epoch 2 of 4 for one seed whose validation loss kept "
            "falling, and that epoch named relations right half as often)"
        },
    )
    transformer_epochs: int = field(
        default=6,
        metadata={"help": "training epochs of the transformer", "bound": integer(1, 10**5)},
    )
    transformer_layers: int = field(
        default=2, metadata={"help": "decoder layers of the transformer", "bound": integer(1, 64)}
    )
    transformer_heads: int = field(
        default=4, metadata={"help": "attention heads of the transformer", "bound": integer(1, 64)}
    )
    transformer_feedforward: int = field(
        default=512,
        metadata={"help": "feed-forward size of the transformer", "bound": integer(1, 16384)},
    )
    transformer_dropout: float = field(
        default=0.1,
        metadata={"help": "dropout of the transformer", "bound": real(0, 1, hi_open=True)},
    )
    transformer_locations: bool = field(
        default=True,
        metadata={"help": "the transformer reads the places its cross-attention looked at"},
    )
    transformer_location_summary: bool = field(
        default=True,
        metadata={
            "help": "with transformer_locations: also a gated running mean of the places "
            "looked at over the words so far"
        },
    )
    transformer_coverage: bool = field(
        default=True,
        metadata={
            "help": "the transformer's cross-attention heads are biased by how much they "
            "already looked at each cell (coverage)"
        },
    )
    transformer_monitor: str = field(
        default="val_loss",
        metadata={
            "help": "what picks the transformer's best epoch (validation BLEU-4 of greedy "
            "captions on 250 images picked epoch 2 of 6 for one of three seeds while the "
            "validation loss kept falling; that model named relations right 0.74 of the time)"
        },
    )
    transformer_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Adam learning rate of the transformer", "bound": real(0, lo_open=True)},
    )
    grid_pca_dim: int = field(
        default=256,
        metadata={
            "help": "values per grid cell after its PCA (attention)",
            "bound": integer(1, 10**6),
        },
    )
    beam: int = field(
        default=3, metadata={"help": "beam size for the test captions", "bound": integer(1, 100)}
    )
    meteor: bool = field(default=True, metadata={"help": "compute METEOR (Java start-up ~10 s)"})
    vision: bool = field(default=True, metadata={"help": "also draw the CNN-visualization figures"})
    explain: bool = field(
        default=True, metadata={"help": "explain two test captions word by word in the gallery"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of data, initialisation and batches", "bound": SEED}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        bad = [c for c in self.model_list if c not in DEMO_MODELS]
        if bad or not self.model_list:
            raise UserError(
                f"models must be a comma-separated list of {', '.join(DEMO_MODELS)}, "
                f"got {self.models!r}"
            )

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            n_train=200, n_val=40, n_test=40, pool="avg", pca_dim=0, hidden_dim=128,
            wordvec_dim=64, epochs=2, attention_epochs=2, attention_hidden_dim=128,
            attention_dim=32, grid_pca_dim=64,
            vision=False,
        )  # fmt: skip

    @property
    def model_list(self) -> list[str]:
        return [c.strip() for c in self.models.split(",") if c.strip()]

    def train_config(self, kind: str) -> TrainConfig:
        """The TrainConfig of one of :attr:`model_list`."""
        common = dict(hidden_dim=self.hidden_dim, wordvec_dim=self.wordvec_dim,
                      learning_rate=self.learning_rate, seed=self.seed)  # fmt: skip
        if kind == "attention":
            common["hidden_dim"] = self.attention_hidden_dim
            return TrainConfig(model="attention", epochs=self.attention_epochs,
                               attention_dim=self.attention_dim,
                               attention_penalty=self.attention_penalty,
                               position=self.attention_position,
                               locations=self.attention_locations,
                               monitor=self.attention_monitor, **common)  # fmt: skip
        if kind == "transformer":
            common.update(hidden_dim=self.transformer_feedforward,
                          learning_rate=self.transformer_learning_rate)  # fmt: skip
            return TrainConfig(model="transformer", grid=True, epochs=self.transformer_epochs,
                               num_layers=self.transformer_layers,
                               num_heads=self.transformer_heads,
                               dropout=self.transformer_dropout,
                               locations=self.transformer_locations,
                               location_summary=self.transformer_location_summary,
                               coverage=self.transformer_coverage,
                               monitor=self.transformer_monitor, **common)  # fmt: skip
        return TrainConfig(cell=kind, epochs=self.epochs, **common)


class _Stages:
    """Prints each stage's heading and records its seconds: wall time, and the CPU time of
    this process and the children it waited for (on a machine shared with other work the
    CPU time is the steadier measure of the stage's own cost)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, text: str) -> Iterator[None]:
        print(f"\n== {text}", flush=True)
        started, cpu = time.perf_counter(), _cpu_seconds()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.cpu_seconds[name] = round(_cpu_seconds() - cpu, 1)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_demo(out_dir: str | Path, config: DemoConfig, progress: bool = True) -> dict:
    """Run every step; return the summary also written to ``OUT/metrics.json``."""
    from captionlab.captioning.metrics import meteor_session
    from captionlab.captioning.plots import plot_loss_curves
    from captionlab.gallery import write_gallery
    from captionlab.runs.evaluate import evaluate_run
    from captionlab.runs.report import metrics_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    with stage("data", "1. shapes benchmark (generated once, then cached)"):
        shapes_dir = _shapes_data(out / "cache", config, progress)
        dataset = shapes_dir / "dataset.json"
    with stage("features", "2. EfficientNet-Lite0 features (extracted once, then cached)"):
        store = _features(out / "cache", shapes_dir, config, progress)
    runs = {}
    for kind in config.model_list:
        with stage(f"train_{kind}", f"3. train the {kind.upper()} captioner"):
            tconfig = config.train_config(kind)
            runs[kind] = train_cached(dataset, store, out / "runs" / kind, tconfig, progress)
    heading = f"4. caption the {config.n_test} test images (greedy and beam {config.beam})"
    with stage("evaluate", heading):
        beams = sorted({1, config.beam})
        with meteor_session():  # one METEOR process (~15 s to start) for every model
            evals = {
                kind: evaluate_run(
                    out / "runs" / kind,
                    dataset,
                    store,
                    split="test",
                    beams=beams,
                    meteor=config.meteor,
                )
                for kind in runs
            }
    with stage("figures", "5. gallery, attention strips, loss curves, metrics"):
        rows = {
            f"{kind} {name}": r["metrics"]
            for kind, e in evals.items()
            for name, r in e["results"].items()
        }
        best_name = f"beam{config.beam}" if config.beam > 1 else "greedy"
        # The gallery shows the strongest captioner: attention when it was trained.
        main = "attention" if "attention" in evals else config.model_list[0]
        main_captions = evals[main]["results"][best_name]["captions"]
        strips = None
        if "attention" in runs:
            strips = _attention_strips(out, shapes_dir, store, main_captions, config)
        explainer = None
        if config.explain:
            from captionlab.explain import Explainer

            explainer = Explainer.from_checkpoint(out / "runs" / main)
        gallery = write_gallery(out, main_captions, shapes_dir, strips=strips, explainer=explainer)
        gallery["model"] = main
        plot_loss_curves(out / "loss.png", {kind.upper(): r for kind, r in runs.items()})
        write_json(out / "captions.json", evals)
    vision_files: list[str] = []
    if config.vision:
        with stage("vision", "6. network visualization on bundled photos"):
            vision_files = vision_figures(out / "vision")

    summary = {
        "config": dataclasses.asdict(config),
        "dataset": str(dataset),
        "features": str(store),
        "metrics": rows,
        "training": {
            c: {k: v for k, v in r.items() if not k.endswith("history")} for c, r in runs.items()
        },
        "gallery": gallery,
        "loss_curve": str(out / "loss.png"),
        "vision_figures": vision_files,
        "seconds": stage.seconds,
        "cpu_seconds": stage.cpu_seconds,
    }
    write_json(out / "metrics.json", summary)
    print()
    print(metrics_table(rows))
    also = ", vision/*.png" if vision_files else ""
    print(f"\nwrote {out}/gallery.html, gallery.png, loss.png, metrics.json{also}")
    return summary


def prepare_data(cache: Path, config: DemoConfig, progress: bool = True) -> tuple[Path, Path]:
    """The demo's first two stages: ``(dataset.json, feature store)`` under ``cache``, made
    once and reused (benchmarks/bench_quality.py trains on exactly the demo's data)."""
    shapes_dir = _shapes_data(cache, config, progress)
    return shapes_dir / "dataset.json", _features(cache, shapes_dir, config, progress)


def _shapes_data(cache: Path, config: DemoConfig, progress: bool) -> Path:
    from captionlab.data.shapes import generate_shapes

    shapes_dir = (
        cache / f"shapes_{config.n_train}_{config.n_val}_{config.n_test}_{config.image_size}"
    )
    generate_shapes(
        shapes_dir, config.n_train, config.n_val, config.n_test, config.image_size,
        seed=config.seed, progress=progress,
    )  # fmt: skip
    return shapes_dir


def _features(cache: Path, shapes_dir: Path, config: DemoConfig, progress: bool) -> Path:
    """One store: the pooled features and, when a grid model is trained, the grid
    (the per-cell probe's recipe, docs/feature_probe.md), from one forward pass per image."""
    from captionlab.extract import extract_features

    grid = any(kind in GRID_MODELS for kind in config.model_list)
    fconfig = FeatureExtractorConfig(
        image_size=config.feature_size, pool=config.pool, pca_dim=config.pca_dim or None,
        grid=grid, grid_pca_dim=config.grid_pca_dim,
    )  # fmt: skip
    tag = f"{config.feature_size}_{config.pool.replace('+', '-')}_{config.pca_dim}"
    if grid:
        tag += f"_grid{fconfig.grid_len}x{fconfig.grid_dim}"
    store = cache / f"{shapes_dir.name}_features_{tag}.h5"
    feats = extract_features(shapes_dir / "dataset.json", store, fconfig, progress=progress)
    what = f"{fconfig.feature_dim}-d features"
    if grid:
        what += f" and a grid of {fconfig.grid_len} cells x {fconfig.grid_dim}"
    print(f"{store}: {feats.get('images', '')} images, {what}")
    return store


def _attention_strips(out: Path, shapes_dir: Path, store: Path, captions, config) -> list[dict]:
    """Attention strips of a few test images (one of 1, 2 and 3 objects each, then a second
    3-object scene), by the trained attention captioner."""
    from captionlab.captioning import load_checkpoint
    from captionlab.data.features import FeatureStore
    from captionlab.data.shapes import load_scenes
    from captionlab.gallery import attention_strips

    scenes = load_scenes(shapes_dir / "scenes.json")
    by_count: dict[int, list[dict]] = {}
    for item in captions:
        by_count.setdefault(len(scenes[item["image_id"]]["objects"]), []).append(item)
    items = [q[0] for _, q in sorted(by_count.items())]
    items += by_count.get(3, [])[1:2]
    model, _ = load_checkpoint(out / "runs" / "attention" / "best.npz")
    grids = FeatureStore.open(store).grid_features_for([i["image_id"] for i in items])
    return attention_strips(out, model, grids, items, config.feature_size, beam=config.beam)


def train_cached(dataset, store, run_dir: Path, config: TrainConfig, progress: bool) -> dict:
    """Train, unless ``run_dir`` holds a finished run of the same config on the same data."""
    from captionlab.runs.train import train_run

    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and (run_dir / "best.npz").is_file():
        saved = json.loads(summary_file.read_text())
        if saved.get("train_config") == dataclasses.asdict(config) and saved.get("features") == str(
            Path(store).resolve()
        ):
            print(f"{run_dir}: already trained with these settings (delete it to retrain)")
            return saved
    if run_dir.exists():
        shutil.rmtree(run_dir)
    summary = train_run(dataset, store, run_dir, config, progress=progress)
    summary["train_config"] = dataclasses.asdict(config)
    summary["features"] = str(Path(store).resolve())
    write_json(summary_file, summary)
    return summary


def vision_figures(out: Path, device: str = "cpu") -> list[str]:
    """The network-visualization figures on bundled photos, by the library calls the
    ``classify``, ``saliency``, ``fool`` and ``dream`` commands make, with their defaults."""
    from captionlab.vision import figures, tasks
    from captionlab.vision.backbone import load_backbone
    from captionlab.vision.class_viz_defaults import DEFAULTS
    from captionlab.vision.imagenet import resolve_class
    from captionlab.vision.images import image_stem, read_image

    model = load_backbone(device=device)
    photos = ["skimage:chelsea", "skimage:coffee", "skimage:astronaut", "skimage:rocket"]
    pixels = [read_image(p) for p in photos]
    tops = tasks.classify(model, np.stack(pixels), k=5)
    made = {
        "classify.png": figures.classify_figure(
            pixels,
            [[(c["name"], c["prob"]) for c in t] for t in tops],
            titles=[image_stem(p) for p in photos],
        ),
    }
    sal = tasks.saliency_maps(model, pixels[0], methods=("vanilla", "smoothgrad", "ig"))
    made["saliency_chelsea.png"] = figures.saliency_figure(
        pixels[0], sal["maps"], label=sal["target"]["name"], prob=sal["target"]["prob"]
    )
    fooled = tasks.fool(model, pixels[1], resolve_class("goldfish"), epsilon=2 / 255)
    before, after = fooled["predicted_before"], fooled["predicted_after_saving"]
    made["fool_coffee_goldfish.png"] = figures.fooling_figure(
        pixels[1], fooled["image"], original_label=before["name"], original_prob=before["prob"],
        fooled_label=after["name"], fooled_prob=after["prob"],
    )  # fmt: skip
    dreamt = tasks.dream(model, [resolve_class("tarantula"), resolve_class("flamingo")])
    made["dream.png"] = figures.class_viz_figure(
        dreamt["images"], [c["name"] for c in dreamt["classes"]],
        [c["prob"] for c in dreamt["classes"]], iterations=DEFAULTS["num_iterations"],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    return [str(figures.save_figure(fig, out / name)) for name, fig in made.items()]
