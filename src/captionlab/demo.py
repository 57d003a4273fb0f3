"""``captionlab demo``: the whole pipeline on the built-in shapes benchmark, from nothing.

1. generate the shapes benchmark (cached in ``OUT/cache``),
2. extract EfficientNet-Lite0 features (cached),
3. train an LSTM captioner and a vanilla RNN for comparison (cached per config),
4. caption the test split greedily and with beam search; COCO metrics + scene accuracy,
5. write ``gallery.html`` / ``gallery.png`` (right and wrong captions), ``loss.png``,
   ``metrics.json`` and print the comparison table,
6. the network-visualization figures on bundled photos (saliency, fooling image, class
   visualization) into ``OUT/vision/``.

Only wiring: every step is a library call that the other commands use too.
"""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
import textwrap
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captionlab.data.features import FeatureExtractorConfig
from captionlab.runs import TrainConfig, evaluate_run, metrics_table, train_run, write_json


@dataclass
class DemoConfig:
    """What the demo does; ``--quick`` swaps in :meth:`quick` (for tests and a first look)."""

    n_train: int = field(default=8000, metadata={"help": "training images generated"})
    n_val: int = field(default=500, metadata={"help": "validation images generated"})
    n_test: int = field(default=500, metadata={"help": "test images generated"})
    image_size: int = field(default=128, metadata={"help": "side of the generated images, px"})
    feature_size: int = field(default=160, metadata={"help": "image side fed to the CNN, px"})
    pool: str = field(default="avg+2x2", metadata={"help": "feature pooling (see features)"})
    pca_dim: int = field(default=512, metadata={"help": "PCA size of the features (0: none)"})
    cells: str = field(default="lstm,rnn", metadata={"help": "cells to train, comma-separated"})
    hidden_dim: int = field(default=256, metadata={"help": "H of every captioner"})
    wordvec_dim: int = field(default=128, metadata={"help": "W of every captioner"})
    epochs: int = field(default=6, metadata={"help": "training epochs per captioner"})
    learning_rate: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    beam: int = field(default=3, metadata={"help": "beam size for the test captions"})
    meteor: bool = field(default=True, metadata={"help": "compute METEOR (Java start-up ~10 s)"})
    vision: bool = field(default=True, metadata={"help": "also draw the CNN-visualization figures"})
    seed: int = field(default=0, metadata={"help": "seed of data, initialisation and batches"})

    def __post_init__(self) -> None:
        from captionlab.errors import UserError

        bad = [c for c in self.cell_list if c not in ("rnn", "lstm", "gru")]
        if bad or not self.cell_list:
            raise UserError(
                f"cells must be a comma-separated list of rnn, lstm, gru, got {self.cells!r}"
            )
        for name in ("n_train", "n_val", "n_test", "beam", "epochs", "hidden_dim", "wordvec_dim"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            n_train=200, n_val=40, n_test=40, pool="avg", pca_dim=0, hidden_dim=128,
            wordvec_dim=64, epochs=2, vision=False,
        )  # fmt: skip

    @property
    def cell_list(self) -> list[str]:
        return [c.strip() for c in self.cells.split(",") if c.strip()]


def run_demo(
    out_dir: str | Path,
    config: DemoConfig,
    progress: bool = True,
    vision_figures: Callable[[Path], list[str]] | None = None,
) -> dict:
    """Run every step; return the summary also written to ``OUT/metrics.json``.

    ``vision_figures(folder) -> files`` draws the network-visualization figures (step 6,
    when ``config.vision``); the command passes one that runs its own vision commands.
    """
    from captionlab.data.shapes import generate_shapes
    from captionlab.extract import extract_features

    out = Path(out_dir)
    cache = out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str, text: str):
        """Print the stage's heading; record its seconds in ``timings[name]``."""
        print(f"\n== {text}", flush=True)
        started = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - started, 1)

    with stage("data", "1. shapes benchmark (generated once, then cached)"):
        shapes_dir = (
            cache / f"shapes_{config.n_train}_{config.n_val}_{config.n_test}_{config.image_size}"
        )
        generate_shapes(
            shapes_dir, config.n_train, config.n_val, config.n_test, config.image_size,
            seed=config.seed, progress=progress,
        )  # fmt: skip
        dataset = shapes_dir / "dataset.json"

    with stage("features", "2. EfficientNet-Lite0 features (extracted once, then cached)"):
        fconfig = FeatureExtractorConfig(
            image_size=config.feature_size, pool=config.pool, pca_dim=config.pca_dim or None
        )
        tag = f"{config.feature_size}_{config.pool.replace('+', '-')}_{config.pca_dim}"
        store = cache / f"{shapes_dir.name}_features_{tag}.h5"
        feats = extract_features(dataset, store, fconfig, progress=progress)
        print(f"{store}: {feats.get('images', '')} images, {fconfig.feature_dim}-d features")

    runs = {}
    for cell in config.cell_list:
        with stage(f"train_{cell}", f"3. train the {cell.upper()} captioner"):
            tconfig = TrainConfig(
                cell=cell, hidden_dim=config.hidden_dim, wordvec_dim=config.wordvec_dim,
                epochs=config.epochs, learning_rate=config.learning_rate, seed=config.seed,
            )  # fmt: skip
            runs[cell] = _train_cached(dataset, store, out / "runs" / cell, tconfig, progress)

    with stage(
        "evaluate", f"4. caption the {config.n_test} test images (greedy and beam {config.beam})"
    ):
        beams = sorted({1, config.beam})
        evals = {
            cell: evaluate_run(
                out / "runs" / cell, dataset, store, split="test", beams=beams, meteor=config.meteor
            )
            for cell in runs
        }

    with stage("figures", "5. gallery, loss curves, metrics"):
        rows = {
            f"{cell} {name}": r["metrics"]
            for cell, e in evals.items()
            for name, r in e["results"].items()
        }
        main_cell = config.cell_list[0]
        best_name = f"beam{config.beam}" if config.beam > 1 else "greedy"
        gallery = write_gallery(out, evals[main_cell]["results"][best_name]["captions"], shapes_dir)
        plot_losses(out / "loss.png", runs)
        write_json(out / "captions.json", evals)

    vision_files: list[str] = []
    if config.vision and vision_figures is not None:
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
        "seconds": timings,
    }
    write_json(out / "metrics.json", summary)
    print()
    print(metrics_table(rows))
    print(f"\nwrote {out}/gallery.html, gallery.png, loss.png, metrics.json" + (
        ", vision/*.png" if vision_files else ""))  # fmt: skip
    return summary


def _train_cached(dataset, store, run_dir: Path, config: TrainConfig, progress: bool) -> dict:
    """Train, unless ``run_dir`` holds a finished run of the same config on the same data."""
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


# ----------------------------------------------------------------------------- figures


def _caption_correct(item: dict) -> bool:
    s = item.get("scene")
    if not s:
        return False
    return (
        s["matched"] == s["objects"] == s["mentions"]
        and bool(s["count_correct"])
        and s["relations_correct"] == s["relations_named"]
    )


def write_gallery(out: Path, captions: list[dict], shapes_dir: Path, per_kind: int = 6) -> dict:
    """``gallery.png`` and ``gallery.html``: test images with the generated caption and two
    references, right (every object, count and relation true) and wrong cases both shown."""
    from captionlab.captioning.scene_accuracy import score_caption
    from captionlab.data.shapes import load_scenes, parse_caption

    scenes = load_scenes(shapes_dir / "scenes.json")
    for item in captions:
        item["scene"] = score_caption(parse_caption(item["caption"]), scenes[item["image_id"]])
        item["correct"] = _caption_correct(item)
    right = _varied([c for c in captions if c["correct"]], per_kind)
    wrong = _varied([c for c in captions if not c["correct"]], per_kind)
    chosen = right + wrong
    img_dir = out / "gallery"
    img_dir.mkdir(parents=True, exist_ok=True)
    for item in chosen:
        shutil.copyfile(item["path"], img_dir / Path(item["path"]).name)
    _gallery_png(out / "gallery.png", right, wrong)
    _gallery_html(out / "gallery.html", right, wrong, len(captions))
    n_right = sum(c["correct"] for c in captions)
    return {
        "png": str(out / "gallery.png"),
        "html": str(out / "gallery.html"),
        "fully_correct": n_right,
        "images": len(captions),
    }


def _varied(items: list[dict], k: int) -> list[dict]:
    """Up to ``k`` items spread over scenes of 1, 2 and 3 objects (round robin, in order)."""
    by_count: dict[int, list[dict]] = {}
    for item in items:
        by_count.setdefault(item["scene"]["objects"], []).append(item)
    queues = [by_count[n] for n in sorted(by_count)]
    chosen: list[dict] = []
    while len(chosen) < k and any(queues):
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop(0))
    return chosen


def _gallery_png(path: Path, right: list[dict], wrong: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    cols = max(len(right), len(wrong), 1)
    fig = Figure(figsize=(2.6 * cols, 7.6))
    FigureCanvasAgg(fig)
    for r, (items, label, colour) in enumerate(
        ((right, "right", "#1a7f37"), (wrong, "wrong", "#c62828"))
    ):
        for c in range(cols):
            ax = fig.add_axes((c / cols + 0.005, 0.69 - 0.5 * r, 1 / cols - 0.01, 0.25))
            ax.set_axis_off()
            if c >= len(items):
                continue
            item = items[c]
            ax.imshow(np.asarray(Image.open(item["path"]).convert("RGB")))
            gen = textwrap.fill(item["caption"], 30)
            refs = "\n".join(textwrap.fill("· " + t, 32) for t in item["references"][:2])
            ax.text(0.5, -0.04, gen, transform=ax.transAxes, ha="center", va="top",
                    fontsize=8.5, color=colour, fontweight="bold")  # fmt: skip
            ax.text(0.5, -0.04 - 0.075 * (gen.count("\n") + 1), refs, transform=ax.transAxes,
                    ha="center", va="top", fontsize=7, color="#555555")  # fmt: skip
        fig.text(0.005, 0.99 - 0.5 * r, f"{label}: generated caption (bold) and two references",
                 fontsize=10, color=colour, va="top")  # fmt: skip
    fig.savefig(path, dpi=90, facecolor="white")


def _gallery_html(path: Path, right: list[dict], wrong: list[dict], total: int) -> None:
    def card(item: dict) -> str:
        refs = "".join(f"<li>{html.escape(t)}</li>" for t in item["references"][:2])
        cls = "ok" if item["correct"] else "bad"
        name = Path(item["path"]).name
        return (
            f'<figure class="{cls}"><img src="gallery/{html.escape(name)}" alt="{name}">'
            f"<figcaption><b>{html.escape(item['caption'])}</b><ul>{refs}</ul></figcaption>"
            "</figure>"
        )

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captionlab gallery</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
section {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ width: 200px; margin: 0; padding: .5em; border-radius: 6px; background: #f6f6f6; }}
figure img {{ width: 200px; image-rendering: pixelated; }}
figure.ok b {{ color: #1a7f37; }} figure.bad b {{ color: #c62828; }}
ul {{ padding-left: 1.1em; color: #555; font-size: .85em; }}
</style></head><body>
<h1>captionlab: captions of unseen test images</h1>
<p>Generated caption in bold, two of the five reference captions below it. "Right" means every
object, attribute, count and relation the caption names is in the scene and nothing is missing.
{len(right)} right and {len(wrong)} wrong shown, of {total} test images.</p>
<h2>Right</h2><section>{"".join(card(i) for i in right)}</section>
<h2>Wrong</h2><section>{"".join(card(i) for i in wrong)}</section>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def plot_losses(path: Path, runs: dict[str, dict]) -> None:
    """Training loss per iteration (smoothed) and validation loss per epoch, every cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for cell, r in runs.items():
        loss = np.asarray(r.get("loss_history") or [], dtype=float)
        if loss.size:
            k = max(1, loss.size // 50)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(smooth.size) + k, smooth, label=cell.upper())
        val = r.get("val_loss_history") or []
        ax2.plot(np.arange(1, len(val) + 1), val, marker="o", label=f"{cell.upper()} val loss")
    ax.set(xlabel="iteration", ylabel="loss per caption", title="training loss")
    ax2.set(xlabel="epoch", ylabel="loss per caption", title="validation loss")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
