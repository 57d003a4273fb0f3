"""Network visualization on the pretrained backbone: quality and speed, in one run.

    python benchmarks/bench_visualization.py [--quick] [--device cpu|cuda] [--threads N]

Quality (issue 6, section 3), over scikit-image's bundled photos:
* saliency faithfulness by the deletion metric (delete the most salient pixels first, to
  grey; area under the target-probability curve, lower is better), each method against a
  random pixel order on the same photos;
* fooling: success rate over photos x 5 target classes for cs231n's unbounded attack and
  for targeted PGD at epsilon 2/255, 4/255, 8/255, with median iterations and norms;
* class visualization: target probability after 100 and 200 steps (cs231n's settings).

Speed (section 4), each against a peer measured in the same run: vanilla saliency against
Captum's ``Saliency`` (also checked equal to 1e-6), SmoothGrad with 25 samples (in batches of
``saliency.default_batch_size``: 5 on a CPU, where one batch of 25 was 2x slower), and
100 steps of class visualization. Timings on a shared machine are noisy; ratios are what
to compare. ``--quick`` uses fewer photos, classes and steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from captionlab.vision import saliency as sal
from captionlab.vision.backbone import INPUT_RANGE, load_backbone, preprocess
from captionlab.vision.class_viz import visualize_class
from captionlab.vision.fooling import fool, pgd_attack
from captionlab.vision.imagenet import CLASS_NAMES
from captionlab.vision.images import read_image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
FOOL_TARGETS = (1, 31, 130, 417, 949)  # goldfish, tree frog, flamingo, balloon, strawberry
VIZ_CLASSES = (1, 31, 76, 113, 130, 207, 309, 417, 949, 980)  # ..., golden retriever, bee, ...


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(fns: dict, reps: int) -> dict:
    """Median seconds of each function, run alternately so load changes hit both alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_deletion(model, X, y, quick: bool) -> dict:
    options = {
        "vanilla": {},
        "smoothgrad": {"n_samples": 10 if quick else 25},
        "ig": {"steps": 16 if quick else 32, "baseline": float(INPUT_RANGE[0])},
    }
    gen = torch.Generator().manual_seed(0)
    random_maps = torch.rand((X.shape[0], X.shape[2], X.shape[3]), generator=gen)
    aucs = {"random": sal.deletion_curve(X, y, model, random_maps.to(X.device))[1].cpu()}
    for method, kw in options.items():
        maps = torch.cat(
            [
                sal.saliency(X[i : i + 1], y[i : i + 1], model, method=method, **kw)
                for i in range(len(y))
            ]
        )
        aucs[method] = sal.deletion_curve(X, y, model, maps)[1].cpu()
    return {m: [float(v) for v in a] for m, a in aucs.items()}


def bench_fooling(model, X, quick: bool) -> dict:
    P, T = X.shape[0], len(FOOL_TARGETS)
    Xs = X.repeat_interleave(T, dim=0)  # (P*T, 3, H, W)
    targets = torch.tensor(FOOL_TARGETS * P, device=X.device)
    rows = {}
    res = fool(Xs, targets, model, learning_rate=1.0, max_iter=100, input_range=INPUT_RANGE)
    rows["cs231n (unbounded)"] = res
    for k in (2, 4, 8):
        rows[f"PGD eps {k}/255"] = pgd_attack(
            Xs,
            targets,
            model,
            epsilon=k / 255,
            max_iter=20 if quick else 50,
            input_range=INPUT_RANGE,
        )
    out = {}
    for name, r in rows.items():
        out[name] = {
            "success_rate": float(r.success.float().mean()),
            "median_iterations": float(r.iterations.float().median()),
            "median_l2": float(r.l2.median()),
            "median_linf_x255": float(255 * r.linf.median()),
            "median_target_prob": float(r.target_prob.median()),
            "n": len(r.success),
        }
    return out


def bench_class_viz(model, classes, device) -> dict:
    start = time.perf_counter()
    res = visualize_class(
        list(classes),
        model,
        num_iterations=200,
        input_range=INPUT_RANGE,
        checkpoints=(100, 200),
        device=device,
    )
    seconds = time.perf_counter() - start
    return {
        "classes": [CLASS_NAMES[c] for c in classes],
        "prob_100": [float(v) for v in res.checkpoint_probs[100]],
        "prob_200": [float(v) for v in res.checkpoint_probs[200]],
        "seconds_batch": seconds,
    }


def bench_speed(model, x, y, quick: bool, device) -> dict:
    from captum.attr import Saliency

    captum = Saliency(model)

    def ours():
        return sal.compute_saliency_maps(x, y, model)

    def theirs():
        return captum.attribute(x.clone().requires_grad_(True), target=y, abs=True).amax(dim=1)

    diff = float((ours() - theirs()).abs().max())
    reps = 5 if quick else 15
    t = interleaved_times({"ours": ours, "captum": theirs}, reps)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def smooth():
        sal.smoothgrad(x, y, model, n_samples=25)  # batches of default_batch_size
        sync()

    t_smooth = median_time(smooth, 1 if quick else 3)
    steps = 20 if quick else 100
    start = time.perf_counter()
    visualize_class(int(y[0]), model, num_iterations=steps, input_range=INPUT_RANGE, device=device)
    sync()
    t_viz = (time.perf_counter() - start) * 100 / steps
    return {
        "captum_max_abs_diff": diff,
        "vanilla_s": t["ours"],
        "captum_s": t["captum"],
        "ratio_vs_captum": t["ours"] / t["captum"],
        "smoothgrad25_s": t_smooth,
        "class_viz_100_s": t_viz,
        "class_viz_extrapolated_from_steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos, classes and steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_backbone(device=args.device)
    photos = PHOTOS[:2] if args.quick else PHOTOS
    X = preprocess(np.stack([read_image(f"skimage:{p}") for p in photos])).to(device)
    with torch.no_grad():
        y = model(X).argmax(dim=1)
    print(f"device {args.device}, threads {torch.get_num_threads()}, photos {', '.join(photos)}")
    print(
        "predicted: "
        + ", ".join(f"{p}={CLASS_NAMES[int(c)]}" for p, c in zip(photos, y, strict=True))
    )
    results = {"device": args.device, "photos": list(photos), "quick": args.quick}

    print("\n== saliency faithfulness: deletion AUC (lower is better) ==")
    d = bench_deletion(model, X, y, args.quick)
    results["deletion_auc"] = d
    rand = np.mean(d["random"])
    for method, values in d.items():
        m = np.mean(values)
        print(
            f"{method:11s} mean {m:.3f}  ratio vs random {m / rand:.2f}  "
            f"per photo {np.round(values, 3).tolist()}"
        )
    means = {k: float(np.mean(v)) for k, v in d.items()}
    below = all(v < rand for k, v in means.items() if k != "random")
    better = means["smoothgrad"] < means["vanilla"] and means["ig"] < means["vanilla"]
    print(f"every method below random: {below}; SmoothGrad and IG below vanilla: {better}")

    print("\n== fooling: photos x 5 targets ==")
    f = bench_fooling(model, X, args.quick)
    results["fooling"] = f
    for name, r in f.items():
        print(
            f"{name:20s} success {100 * r['success_rate']:5.1f}% of {r['n']}  median iters "
            f"{r['median_iterations']:.0f}  L2 {r['median_l2']:.3f}  "
            f"Linf {r['median_linf_x255']:.1f}/255  "
            f"target p {r['median_target_prob']:.2f}"
        )

    print("\n== class visualization: target probability after 100 / 200 steps ==")
    classes = VIZ_CLASSES[:3] if args.quick else VIZ_CLASSES
    c = bench_class_viz(model, classes, device)
    results["class_viz"] = c
    for name, p1, p2 in zip(c["classes"], c["prob_100"], c["prob_200"], strict=True):
        print(f"{name:20s} {p1:.3f} / {p2:.3f}")
    print(f"all above 0.9 after 200: {all(p > 0.9 for p in c['prob_200'])}")

    print("\n== speed: one 224x224 image ==")
    s = bench_speed(model, X[:1], y[:1], args.quick, device)
    results["speed"] = s
    print(
        f"vanilla saliency      {s['vanilla_s']:.3f} s   Captum Saliency {s['captum_s']:.3f} s   "
        f"ratio {s['ratio_vs_captum']:.2f}   max |diff| {s['captum_max_abs_diff']:.1e}"
    )
    print(
        f"SmoothGrad 25 batched {s['smoothgrad25_s']:.2f} s  "
        f"({s['smoothgrad25_s'] / s['vanilla_s']:.1f}x vanilla)"
    )
    note = (
        ""
        if s["class_viz_extrapolated_from_steps"] == 100
        else f" (from {s['class_viz_extrapolated_from_steps']} steps)"
    )
    print(f"class viz 100 steps   {s['class_viz_100_s']:.1f} s{note}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
