"""Word explanations on shapes scenes no model trained on: grounding, faithfulness, cost.

    python benchmarks/bench_explain.py --model attention=RUN_A --model lstm=RUN_B \\
        --model rnn=RUN_C [--scenes DIR] [--n-scenes 300] [--seed 1515] \\
        [--methods vanilla,smoothgrad,ig,layercam,gradcam,guided-gradcam] \\
        [--samples 25] [--noise 0.3] [--steps 32] \\
        [--deletion-scenes 50] [--hold-attention] [--threads 1] [--json FILE]

For each trained captioner given (CaptioningRNN on pooled features, AttentionCaptioner or a
grid CaptioningTransformer), every scene is captioned greedily and each shape and colour
word of the caption is explained by each method, and, for captioners with attention, by the
word's attention itself (its step's weights over the grid's cells; its peak is the centre of
the cell it weighs most, its deletion order the cells' weights upsampled to the pixels). The
grid methods (``gradcam``: Grad-CAM at the captioner's input grid, peak at its top cell's
centre as the attention's; ``guided-gradcam``: SmoothGrad times it) run for grid captioners
only; ``layercam`` (LayerCAM at the backbone's block 10 over SmoothGrad's noisy copies) for
every captioner. Then:

* **Pointing game** (Zhang et al. 2016): is the peak of the word's map, mapped back to the
  scene's pixels, inside the box of the object the word belongs to. *Belongs to*: the
  caption is parsed with :func:`captionlab.data.shapes.parse_caption` (the parser that
  scores captions): a shape word is the word at which the parse gains an object (singular
  nouns; a plural such as "two circles" names several objects and is skipped); that object
  is matched to the scene object of the same shape, and when the scene has several, to the
  one agreeing with most of the colour and size the caption gives it, among those no earlier
  word named (a tie is ambiguous and skipped). A colour word belongs to the object whose
  shape word follows it within two words (parse_caption's own rule) and counts only when
  that scene object has this colour.
  Shape words the scene does not have (hallucinations) and wrong colours are not scored,
  and are counted. The random-map baseline is the exact expectation of a uniformly random
  peak: the box's share of the image. Beside it, *on an object*: is the peak inside the box
  of any object of the scene, the right one or another (does the map find objects at all,
  or the wrong one).
* **Deletion** (Petsiuk et al. 2018) on the word's probability given the caption before it:
  pixels set to mid-grey, most salient first, in 16 steps; the area under the probability
  curve, lower is better; against a random pixel order (a seeded uniform map).
* **Cost**, per model: one word's map against one ImageNet-class saliency map of the same
  method, on the same backbone, input and thread count, timed alternately; the minimum of
  the repeats. The load average at the start and the end is printed with the tables.

With ``--hold-attention`` every gradient of a captioner with attention is taken with its
attention weights held constant (``Explainer(hold_attention=True)``); models of pooled
features, which have none, are explained as without it.

Scenes are generated with ``--seed`` into ``--scenes`` (cached): a seed other than the
training data's gives scenes no model trained on. Timings on a shared machine are noisy;
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captionlab.data.shapes import COLOURS, generate_shapes, load_scenes, parse_caption
from captionlab.explain import (
    CropGeometry,
    Explainer,
    attention_to_pixels,
    cell_peak,
    guided_gradcam,
    layer_cam_maps,
    map_peak,
)
from captionlab.explain.methods import LAYERCAM_TAP
from captionlab.explain.words import GRID_METHODS, SMOOTHGRAD_NOISE
from captionlab.vision import saliency as sal
from captionlab.vision.backbone import INPUT_RANGE, preprocess
from captionlab.vision.images import load_image

SAL_OPTIONS = {
    "vanilla": {},
    "smoothgrad": {"samples": 25, "noise": SMOOTHGRAD_NOISE},
    "ig": {"steps": 32},
    "layercam": {"samples": 25, "noise": SMOOTHGRAD_NOISE},  # SmoothGrad's copies
    "gradcam": {},
    "guided-gradcam": {"samples": 25, "noise": SMOOTHGRAD_NOISE},  # SmoothGrad's
}  # the command's defaults


# ----------------------------------------------------------------------- which object a word is
def _match(parsed: dict, objects: list[dict], claimed: set[int]) -> tuple[int | None, str]:
    """The scene object a parsed object ``{"size", "colour", "shape"}`` names (preferring
    objects no earlier word named), or None and why not."""
    same_shape = [i for i, o in enumerate(objects) if o["shape"] == parsed["shape"]]
    if not same_shape:
        return None, "hallucinated"
    same_shape = [i for i in same_shape if i not in claimed] or same_shape
    agree = [
        sum(parsed[k] is not None and parsed[k] == objects[i][k] for k in ("colour", "size"))
        for i in same_shape
    ]
    best = max(agree)
    if agree.count(best) > 1:
        return None, "ambiguous"
    return same_shape[agree.index(best)], ""


def word_objects(words: list[str], scene: dict) -> dict[int, dict]:
    """``{position: {"kind": "shape"|"colour", "object": i or None, "why": reason}}`` for
    each shape and colour word of a caption (see the module docstring for the rules)."""
    objects = scene["objects"]
    out: dict[int, dict] = {}
    before = 0
    claimed: set[int] = set()
    shape_at: dict[int, tuple[dict, int | None, str]] = {}  # position -> parsed, match, why
    for k in range(len(words)):
        parsed = parse_caption(" ".join(words[: k + 1]))["objects"]
        if len(parsed) == before + 1 and parsed[-1]["shape"] is not None:
            # the last object's colour and size are final at its own shape word
            shape_at[k] = (parsed[-1], *_match(parsed[-1], objects, claimed))
            if shape_at[k][1] is not None:
                claimed.add(shape_at[k][1])
            out[k] = {"kind": "shape", "object": shape_at[k][1], "why": shape_at[k][2]}
        elif len(parsed) > before + 1:
            out[k] = {"kind": "shape", "object": None, "why": "plural"}
        before = len(parsed)
    for k, word in enumerate(words):
        if word not in COLOURS:
            continue
        owner = next((shape_at[j] for j in (k + 1, k + 2) if j in shape_at), None)
        if owner is None or owner[0]["colour"] != word:
            out[k] = {"kind": "colour", "object": None, "why": "no object"}
        elif owner[1] is None:
            out[k] = {"kind": "colour", "object": None, "why": owner[2]}
        elif objects[owner[1]]["colour"] != word:
            out[k] = {"kind": "colour", "object": None, "why": "wrong colour"}
        else:
            out[k] = {"kind": "colour", "object": owner[1], "why": ""}
    return dict(sorted(out.items()))


def inside(point: tuple[int, int], bbox) -> bool:
    """Whether pixel ``(x, y)``'s centre lies in ``bbox`` ``[x0, y0, x1, y1]``."""
    x, y = point[0] + 0.5, point[1] + 0.5
    return bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3]


# ----------------------------------------------------------------------- one model
def _explainer(run: str, hold_attention: bool, **options) -> Explainer:
    """The run's explainer; ``hold_attention`` for captioners with attention (a model of
    pooled features has none to hold and is explained as it is)."""
    explainer = Explainer.from_checkpoint(run, **options)
    if hold_attention and explainer.pipeline.layout == "grid":  # the same model and pipeline
        explainer = Explainer(explainer.captioner, explainer.pipeline,
                              max_length=explainer.max_length, hold_attention=True)  # fmt: skip
    return explainer


def evaluate_model(name: str, run: str, scenes_dir: Path, args) -> dict:
    explainer = _explainer(run, args.hold_attention, max_length=20)
    S = explainer.image_size
    scenes = load_scenes(scenes_dir / "scenes.json")
    ids = [i for i, sc in scenes.items() if sc["split"] == "test"][: args.n_scenes]
    methods = list(args.methods)
    if explainer.pipeline.layout != "grid":  # Grad-CAM needs the captioner's grid of cells
        methods = [m for m in methods if m not in GRID_METHODS]
    rng = np.random.default_rng(0)
    # per map: the hits of shape and colour words, in scenes of one object and of two or three;
    # and whether the peak is on any object of the scene (the right one or another)
    keys = ("shape", "colour", "shape_1", "shape_2+", "colour_1", "colour_2+",
            "shape_any", "colour_any")  # fmt: skip
    hits = {m: {k: [] for k in keys} for m in [*methods, "attention", "random"]}
    deletion = {m: [] for m in [*methods, "attention", "random"]}
    skipped: dict[str, int] = {}
    words_seen = 0
    seconds = {m: 0.0 for m in methods}
    started = time.perf_counter()
    for n, image_id in enumerate(ids):
        scene = scenes[image_id]
        path = scenes_dir / scene["filename"]
        pixels = load_image(path, S)
        geo = CropGeometry.of_image(path, S)
        caption = explainer.decode(pixels)
        words = explainer.text(caption)
        words_seen += len(words)
        targets = word_objects(words, scene)
        scored = [t for t, w in targets.items() if w["object"] is not None]
        for w in targets.values():
            if w["object"] is None:
                key = f"{w['kind']}: {w['why']}"
                skipped[key] = skipped.get(key, 0) + 1
        if not scored:
            continue
        maps = {}
        relevance = None  # Grad-CAM's cell relevance (K, L), shared by the grid methods
        for m in methods:
            t0 = time.perf_counter()
            if m not in GRID_METHODS:
                maps[m] = explainer.word_maps(pixels, caption, scored, m, **SAL_OPTIONS[m])
            else:  # as word_maps(..., m) computes them, the relevance and SmoothGrad reused
                if relevance is None:
                    relevance = explainer.cell_relevance(pixels, caption, scored, method=m)
                side = explainer.pipeline.config.grid_side
                if m == "gradcam":
                    maps[m] = attention_to_pixels(relevance, side, S)
                else:
                    guide = maps.get("smoothgrad")
                    if guide is None:
                        guide = explainer.word_maps(pixels, caption, scored, "smoothgrad",
                                                    **SAL_OPTIONS[m])  # fmt: skip
                    maps[m] = guided_gradcam(guide, relevance, side)
            seconds[m] += time.perf_counter() - t0
        peaks = {m: [map_peak(word_map) for word_map in maps[m]] for m in methods}
        if "gradcam" in maps:  # its map is cells: the top cell's centre, as the attention's
            peaks["gradcam"] = [cell_peak(c, S) for c in relevance]
        alpha = explainer.attention_cells(pixels, caption)
        if alpha is not None:  # the attention's peak: the centre of the cell it weighs most
            side = explainer.pipeline.config.grid_side
            maps["attention"] = attention_to_pixels(alpha[scored], side, S)
            peaks["attention"] = [cell_peak(alpha[t], S) for t in scored]
        maps["random"] = rng.random((len(scored), S, S)).astype(np.float32)
        boxes = [o["bbox"] for o in scene["objects"]]
        for m, stack in maps.items():
            for k, (t, word_map) in enumerate(zip(scored, stack, strict=True)):
                target = targets[t]
                bbox = boxes[target["object"]]
                if m == "random":  # the expectation of a uniformly random peak
                    hit = _area(bbox) / (geo.width * geo.height)
                    on_any = sum(_area(b) for b in boxes) / (geo.width * geo.height)
                elif peaks[m][k] is None:  # a flat map (no cell raises the word) points nowhere
                    hit = on_any = 0.0
                else:
                    peak = geo.to_original(*peaks[m][k])
                    hit = float(inside(peak, bbox))
                    on_any = float(any(inside(peak, b) for b in boxes))
                crowd = "1" if len(scene["objects"]) == 1 else "2+"
                hits[m][target["kind"]].append(hit)
                hits[m][f"{target['kind']}_{crowd}"].append(hit)
                hits[m][f"{target['kind']}_any"].append(min(on_any, 1.0))
                if n < args.deletion_scenes:
                    _, auc = explainer.deletion(pixels, caption, t, word_map, n_steps=16)
                    deletion[m].append(auc)
        if args.verbose:
            print(f"  {name} {n + 1}/{len(ids)} '{' '.join(words)}' "
                  f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
    table = {}
    for m in hits:
        if not hits[m]["shape"] and not hits[m]["colour"]:
            continue
        table[m] = {
            "pointing_shape": _mean(hits[m]["shape"]),
            "pointing_colour": _mean(hits[m]["colour"]),
            "n_shape": len(hits[m]["shape"]),
            "n_colour": len(hits[m]["colour"]),
            **{f"pointing_{k}": _mean(hits[m][k]) for k in keys[2:]},
            **{f"n_{k}": len(hits[m][k]) for k in keys[2:6]},
            "deletion_auc": _mean(deletion[m]),
            "n_deletion": len(deletion[m]),
        }
    return {
        "model": name,
        "run": run,
        "hold_attention": explainer.hold_attention,
        "scenes": len(ids),
        "words": words_seen,
        "not_scored": dict(sorted(skipped.items())),
        "methods": table,
        "map_seconds": {m: round(s, 1) for m, s in seconds.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _area(bbox) -> float:
    return (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


# ----------------------------------------------------------------------- cost
def bench_cost(
    run: str, scenes_dir: Path, methods: list[str], reps: int, hold_attention: bool = False
) -> dict:
    """One word's map against one ImageNet-class map of the same method: same backbone
    (the checkpoint's), same input, alternating repeats, the minimum of each."""
    explainer = _explainer(run, hold_attention)
    S = explainer.image_size
    scene = next(iter(load_scenes(scenes_dir / "scenes.json").values()))
    pixels = load_image(scenes_dir / scene["filename"], S)
    caption = explainer.decode(pixels)
    position = [0]
    backbone = explainer.pipeline.backbone
    x = preprocess(pixels).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cls = int(backbone(x).argmax())
    imagenet = {
        "vanilla": {},
        "smoothgrad": {
            "n_samples": SAL_OPTIONS["smoothgrad"]["samples"],
            "noise_level": SAL_OPTIONS["smoothgrad"]["noise"],
        },
        "ig": {"steps": SAL_OPTIONS["ig"]["steps"], "baseline": float(INPUT_RANGE[0])},
        "layercam": {
            "n_samples": SAL_OPTIONS["layercam"]["samples"],
            "noise_level": SAL_OPTIONS["layercam"]["noise"],
        },
    }
    out = {}
    for m in [m for m in methods if m in imagenet]:  # Grad-CAM has no ImageNet peer here

        def word(m=m):
            return explainer.word_maps(pixels, caption, position, m, **SAL_OPTIONS[m])

        def imagenet_class(m=m):
            if m == "layercam":  # at the same blocks, the class score instead of the word's
                blocks = SAL_OPTIONS[m].get("layer", LAYERCAM_TAP).split(",")
                layers = [backbone.tap_module(b.strip()) for b in blocks]
                return layer_cam_maps(x, [cls], backbone, layers, **imagenet[m])
            return sal.saliency(x, cls, backbone, m, **imagenet[m])

        fns = {"word": word, "imagenet": imagenet_class}
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        word, ref = min(times["word"]), min(times["imagenet"])
        out[m] = {"word_s": round(word, 4), "imagenet_s": round(ref, 4),
                  "ratio": round(word / ref, 3)}  # fmt: skip
    return {"image_size": S, "caption_words": len(explainer.text(caption)), "methods": out}


# ----------------------------------------------------------------------- report
def print_tables(results: list[dict], cost: dict[str, dict]) -> None:
    print("\npointing game (peak inside the word's object; 'on an object': inside any object of "
          "the scene) and deletion AUC (lower is better)")  # fmt: skip
    head = (f"{'model':9} {'map':14} {'shape words':>13} {'1 object':>8} {'2-3':>6} "
            f"{'on an object':>12} {'colour words':>13} {'1 object':>8} {'2-3':>6} "
            f"{'on an object':>12} {'deletion AUC':>13}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in results:
        for m, row in r["methods"].items():
            cells = [f"{_fmt(row['pointing_shape'])} ({row['n_shape']})",
                     _fmt(row["pointing_shape_1"]), _fmt(row["pointing_shape_2+"]),
                     _fmt(row["pointing_shape_any"]),
                     f"{_fmt(row['pointing_colour'])} ({row['n_colour']})",
                     _fmt(row["pointing_colour_1"]), _fmt(row["pointing_colour_2+"]),
                     _fmt(row["pointing_colour_any"]),
                     f"{_fmt(row['deletion_auc'])} ({row['n_deletion']})"]  # fmt: skip
            widths = (13, 8, 6, 12, 13, 8, 6, 12, 13)
            line = " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
            print(f"{r['model']:9} {m:14} {line}")
        print(f"{'':9} {r['scenes']} scenes, {r['words']} words; not scored: {r['not_scored']}")
    for name, c in cost.items():
        print(f"\ncost of one word's map / one ImageNet-class map, {name} ({c['image_size']} px, "
              f"{c['caption_words']}-word caption)")  # fmt: skip
        for m, row in c["methods"].items():
            word, ref, ratio = row["word_s"], row["imagenet_s"], row["ratio"]
            print(f"  {m:11} {word:.4f} s / {ref:.4f} s = {ratio:.2f}")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=RUN",
                        help="a trained run to evaluate, named (repeatable)")  # fmt: skip
    parser.add_argument("--scenes", default="bench_explain_scenes",
                        help="folder of the unseen scenes (generated there if absent)")  # fmt: skip
    parser.add_argument("--generate", type=int, default=300, help="unseen scenes generated")
    parser.add_argument("--n-scenes", type=int, default=300, help="scenes evaluated (first)")
    parser.add_argument("--seed", type=int, default=1515, help="seed of the unseen scenes")
    parser.add_argument("--methods",
                        default="vanilla,smoothgrad,ig,layercam,gradcam,guided-gradcam",
                        help="comma-separated; the grid methods (gradcam, guided-gradcam) are "
                        "skipped for pooled-feature models")  # fmt: skip
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad's noisy copies")
    parser.add_argument("--noise", type=float, default=SMOOTHGRAD_NOISE,
                        help="SmoothGrad's noise std / value range")  # fmt: skip
    parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients' steps")
    parser.add_argument("--deletion-scenes", type=int, default=50,
                        help="the deletion metric on the first this many scenes")  # fmt: skip
    parser.add_argument("--cost-reps", type=int, default=5, help="timing repeats (0: no timing)")
    parser.add_argument("--layer", default=LAYERCAM_TAP, metavar="BLOCK[,BLOCK]",
                        help="layercam: the block(s) it reads, fused when several (as "
                        f"captionlab explain --layer; default {LAYERCAM_TAP})")  # fmt: skip
    parser.add_argument("--hold-attention", action="store_true",
                        help="captioners with attention: every gradient with the attention "
                        "weights held constant (Explainer(hold_attention=True))")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--verbose", action="store_true", help="a line per scene on stderr")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    for m in ("smoothgrad", "guided-gradcam", "layercam"):
        SAL_OPTIONS[m]["samples"] = args.samples
        SAL_OPTIONS[m]["noise"] = args.noise
    SAL_OPTIONS["ig"]["steps"] = args.steps
    SAL_OPTIONS["layercam"]["layer"] = args.layer
    torch.set_num_threads(args.threads)
    scenes_dir = Path(args.scenes)
    generate_shapes(scenes_dir, n_train=0, n_val=0, n_test=args.generate, seed=args.seed,
                    progress=False)  # fmt: skip
    models = [spec.split("=", 1) for spec in args.model]
    results: list[dict] = []
    cost: dict[str, dict] = {}
    load = {"start": [round(v, 2) for v in os.getloadavg()]}

    def save() -> None:  # after every model, so a long run keeps what it finished
        if args.json:
            done = {"results": results, "cost": cost, "options": SAL_OPTIONS,
                    "threads": args.threads, "load_average": load}  # fmt: skip
            Path(args.json).write_text(json.dumps(done, indent=2))

    for name, run in models:
        results.append(evaluate_model(name, run, scenes_dir, args))
        save()
    if args.cost_reps:
        for name, run in models:  # each model's own pipeline (pooled or grid) and captioner
            cost[name] = bench_cost(run, scenes_dir, args.methods, args.cost_reps,
                                    args.hold_attention)  # fmt: skip
            save()
    load["end"] = [round(v, 2) for v in os.getloadavg()]
    save()
    print_tables(results, cost)
    print(f"\nload average (1, 5, 15 min) at the start {load['start']}, at the end {load['end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
