"""Which EfficientNet-Lite0 features let a linear read-out see what shapes captions name?

Generates shapes scenes (:func:`captionlab.data.shapes.generate_shapes`, cached), extracts
candidate features -- taps at several depths (stride 8, 16, 32 and the last feature map),
poolings (``avg``, ``max``, ``avg+2x2``, ``avg+3x3``), with and without PCA to 512, at several
image sizes -- and prints linear-probe test accuracy for

* ``colour``, ``shape``, ``size``  -- of the object in single-object scenes;
* ``count``                        -- 1, 2 or 3 objects, all scenes;
* ``left/right``, ``above/below``  -- two-object scenes in that relation: is the object that
  sorts first by (colour, shape, size) the left (upper) one?  Binary, chance 0.5; it needs
  the features to bind an attribute to a position, as a caption "a red circle left of ..."
  does;
* ``colour set``                   -- exact match of the set of colours, 2-3 object scenes;

and the extraction time per image (ms) of each candidate: the forward pass to its tap
(batch 64, torch threads as set) plus PCA, as wall time and as this process's CPU time, each
the minimum of a few repeats (the least disturbed by other work on a shared machine); image
decoding is reported once, apart, since every candidate pays it.

The probe is a **ridge classifier** (least squares on one-hot targets, argmax; for the
colour set one output per colour, threshold 0.5), fitted in closed form in its dual
(kernel) form on features centred with the training mean and divided by one global RMS (what a
captioner's linear layer sees; ``--scaling zscore`` standardises each dimension instead).
The ridge strength is chosen per task and candidate from 13 values by exact leave-one-out
accuracy on the training scenes (one eigendecomposition of the Gram matrix gives every
value's LOO predictions), so the test scenes are never used for a choice. PCA is fitted on
the training scenes' raw pooled features (captionlab's ``fit_pca``), as the store does.

Scenes are rendered once at ``--render-size`` (default: the largest probe size) and resized
(shorter side + centre crop, :func:`captionlab.vision.images.load_image`) to each probe size,
so every size sees the same scenes.

    python benchmarks/probe_features.py --quick --sizes 128,160      # 600/200 scenes, fewer taps
    python benchmarks/probe_features.py --train 2000 --test 500 --sizes 128,160,224 \
        --out probe.json
    python benchmarks/probe_features.py --train 3000 --test 1500 --sizes 160 --render-size 128 \
        --only "grid avg+2x2,block15 avg+2x2"                        # a few candidates

``--cells`` runs the per-cell study instead (for attention captioners): for every object, the
vector of the one grid cell under its centre, from taps brought to one grid and concatenated
(the head, ``block15``, the stride-16 ``block10``; raw and with a per-cell PCA fitted on
training cells), probed for the object's colour, shape and size (reported by the number of
objects in the scene) and for the cell's own column and row, with each candidate's cost:

    python benchmarks/probe_features.py --cells --train 2000 --test 600 --sizes 128,160,192 \
        --render-size 128 --out cells.json

Results and the recommendation drawn from them: docs/feature_probe.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from captionlab.data.features import PCA, fit_pca
from captionlab.data.shapes import COLOURS, SHAPES, SIZES, generate_shapes, load_scenes
from captionlab.extract import pool_grid
from captionlab.vision.backbone import load_backbone, preprocess
from captionlab.vision.images import load_image

TASKS = ("colour", "shape", "size", "count", "left/right", "above/below", "colour set")
CHANCE = {
    "colour": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "size": 1 / len(SIZES),
    "count": 1 / 3,
    "left/right": 0.5,
    "above/below": 0.5,
}
# Taps probed, with their stride: block4 ends the stride-8 stage (40 ch), block10 the
# stride-16 stage (112 ch), block15 is the last block (320 ch), grid the head (1280 ch).
TAP_STRIDE = {"block4": 8, "block10": 16, "block15": 32, "grid": 32}
POOLS = ("avg", "max", "avg+2x2", "avg+3x3")
PCA_DIM = 512
BATCH = 64


@dataclass(frozen=True)
class Candidate:
    """One feature recipe: a tap (or ``pixels``), a pooling, an optional PCA size."""

    px: int
    tap: str
    pool: str
    pca: int | None = None

    @property
    def name(self) -> str:
        pca = f" pca{self.pca}" if self.pca else ""
        return f"{self.px}px {self.tap} {self.pool}{pca}"


def candidates(sizes: Sequence[int], quick: bool) -> list[Candidate]:
    """The grid of recipes: every pooling of the head with and without PCA, poolings of
    earlier taps without PCA (they are at most 3,200-d), and an 8x8 pixel thumbnail."""
    out = []
    for S in sizes:
        for pool in POOLS:
            out.append(Candidate(S, "grid", pool))
            out.append(Candidate(S, "grid", pool, PCA_DIM))
        for tap in ("block10",) if quick else ("block4", "block10", "block15"):
            for pool in ("avg", "avg+2x2") if quick else POOLS:
                out.append(Candidate(S, tap, pool))
    out.append(Candidate(min(sizes), "pixels", "8x8"))
    return out


# ------------------------------------------------------------------------------ labels


def _key(o: dict) -> tuple[int, int, int]:
    return (
        list(COLOURS).index(o["colour"]),
        SHAPES.index(o["shape"]),
        list(SIZES).index(o["size"]),
    )


def scene_labels(scene: dict) -> dict[str, object]:
    """A scene from scenes.json -> ``{task: label}`` for the tasks it takes part in.

    Labels are class indices, except ``colour set`` (a 0/1 vector over COLOURS).
    """
    objs = scene["objects"]
    labels: dict[str, object] = {"count": len(objs) - 1}
    if len(objs) == 1:
        labels["colour"], labels["shape"], labels["size"] = _key(objs[0])
    else:
        present = np.zeros(len(COLOURS), dtype=np.float64)
        present[[_key(o)[0] for o in objs]] = 1.0
        labels["colour set"] = present
    if len(objs) == 2:
        first = int(np.argmin([_key(o) for o in objs]))  # the object that sorts first
        for rel in scene["relations"]:
            if rel["subject"] != first:
                continue
            if rel["relation"] in ("left of", "right of"):
                labels["left/right"] = int(rel["relation"] == "left of")
            else:
                labels["above/below"] = int(rel["relation"] == "above")
    return labels


# ------------------------------------------------------------------------------ probe


def gram_eig(K_tr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Gram (n, n) -> eigenvalues s (n,), eigenvectors U (n, n) of ``K + c``, and ``c``."""
    c = float(np.mean(np.diag(K_tr)))
    s, U = np.linalg.eigh(K_tr.astype(np.float64) + c)  # (n,), (n, n)
    return np.clip(s, 0.0, None), U, c


def ridge_probe(
    K_tr: np.ndarray,
    K_te: np.ndarray,
    Y: np.ndarray,
    multilabel: bool = False,
    eig: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> tuple[np.ndarray, float, float]:
    """Dual ridge classifier: Gram K_tr (n, n), cross Gram K_te (m, n), targets Y (n, k).

    ``alpha = (K + lam I)^-1 Y``, predictions ``K_te @ alpha``; an intercept is a constant
    feature (``+ c`` on every Gram entry). ``lam`` is the one of 13 log-spaced values with the
    best exact leave-one-out accuracy: with ``K = U diag(s) U^T``, the hat matrix is
    ``H = U diag(s / (s + lam)) U^T`` and the LOO prediction of row i is
    ``y_i - (y_i - (H Y)_i) / (1 - H_ii)``. ``eig``: :func:`gram_eig` of K_tr, if already
    computed (tasks on the same scenes share it). Returns (test scores (m, k), lam, LOO accuracy).
    """
    s, U, c = eig if eig is not None else gram_eig(K_tr)
    UtY = U.T @ Y  # (n, k)
    U2 = U * U  # (n, n)

    def correct(scores: np.ndarray, Yt: np.ndarray) -> np.ndarray:
        if multilabel:
            return np.all((scores > 0.5) == (Yt > 0.5), axis=1)
        return scores.argmax(1) == Yt.argmax(1)

    best = (-1.0, 0.0)
    for lam in c * np.logspace(-4, 2, 13):
        shrink = s / (s + lam)  # (n,)
        fitted = U @ (shrink[:, None] * UtY)  # (n, k)
        h = U2 @ shrink  # (n,) diag of H
        loo = Y - (Y - fitted) / np.maximum(1.0 - h, 1e-9)[:, None]
        acc = float(correct(loo, Y).mean())
        if acc > best[0]:
            best = (acc, float(lam))
    acc, lam = best
    alpha = U @ (UtY / (s + lam)[:, None])  # (n, k)
    return (K_te.astype(np.float64) + c) @ alpha, lam, acc


def probe_all(
    X_tr: np.ndarray,
    X_te: np.ndarray,
    lab_tr: list[dict],
    lab_te: list[dict],
    scaling: str = "global",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Features X_tr (n, D), X_te (m, D) -> ``{task: test accuracy}``, ``{task: test preds}``.

    ``scaling``: ``global`` centres the features and divides them by one number (their RMS),
    so the ridge penalty treats them as a captioner's linear layer would see them; ``zscore``
    standardises every dimension (training mean and standard deviation).
    """
    mu = X_tr.mean(0, dtype=np.float64).astype(np.float32)
    if scaling == "zscore":
        sd = X_tr.std(0, dtype=np.float64).astype(np.float32) + 1e-6
    else:
        sd = np.float32(np.sqrt(np.mean((X_tr - mu) ** 2, dtype=np.float64)) + 1e-6)
    Z_tr = (X_tr - mu) / sd  # (n, D)
    Z_te = (X_te - mu) / sd  # (m, D)
    G_tr = (Z_tr @ Z_tr.T).astype(np.float64) / Z_tr.shape[1]  # (n, n)
    G_te = (Z_te @ Z_tr.T).astype(np.float64) / Z_tr.shape[1]  # (m, n)
    accs, preds, eigs = {}, {}, {}
    for task in TASKS:
        itr = [i for i, lab in enumerate(lab_tr) if task in lab]
        ite = [i for i, lab in enumerate(lab_te) if task in lab]
        if len(itr) < 10 or not ite:
            continue
        multilabel = task == "colour set"
        if multilabel:
            Y = np.stack([lab_tr[i][task] for i in itr])  # (n_t, colours)
            Yt = np.stack([lab_te[i][task] for i in ite])
        else:
            k = 1 + max(lab[task] for lab in lab_tr + lab_te if task in lab)
            Y = np.eye(k)[[lab_tr[i][task] for i in itr]]  # (n_t, k) one-hot
            Yt = np.eye(k)[[lab_te[i][task] for i in ite]]
        K_tr = G_tr[np.ix_(itr, itr)]
        if tuple(itr) not in eigs:
            eigs[tuple(itr)] = gram_eig(K_tr)
        scores, _, _ = ridge_probe(K_tr, G_te[np.ix_(ite, itr)], Y, multilabel, eigs[tuple(itr)])
        if multilabel:
            ok = np.all((scores > 0.5) == (Yt > 0.5), axis=1)
            preds[task] = scores > 0.5
        else:
            ok = scores.argmax(1) == Yt.argmax(1)
            preds[task] = scores.argmax(1)
        accs[task] = float(ok.mean())
    return accs, preds


# ------------------------------------------------------------------------------ features


def _pool(t: torch.Tensor, pool: str) -> np.ndarray:
    return pool_grid(t, pool).float().numpy()


def extract(
    model, paths: Sequence[Path], size: int, taps: dict[str, list[str]]
) -> tuple[dict[tuple[str, str], np.ndarray], float]:
    """Images -> ``{(tap, pool): (N, R) float32}`` in one forward pass per batch, and the
    decoding time per image (ms)."""
    parts: dict[tuple[str, str], list[np.ndarray]] = {
        (t, p): [] for t, ps in taps.items() for p in ps
    }
    t_load = 0.0
    for b in range(0, len(paths), BATCH):
        t0 = time.perf_counter()
        imgs = np.stack([load_image(p, size) for p in paths[b : b + BATCH]])  # (B, S, S, 3)
        t_load += time.perf_counter() - t0
        with torch.inference_mode():
            x = preprocess(imgs).contiguous(memory_format=torch.channels_last)
            out = model.taps(x, list(taps))
            for (tap, pool), acc in parts.items():
                acc.append(_pool(out[tap], pool))
    return {k: np.concatenate(v) for k, v in parts.items()}, 1000 * t_load / len(paths)


def thumbnails(paths: Sequence[Path], size: int, side: int = 8) -> np.ndarray:
    """Raw-pixel baseline: each image box-averaged to side x side -> (N, side*side*3)."""
    out = []
    for p in paths:
        img = torch.from_numpy(np.array(load_image(p, size))).permute(2, 0, 1)[None].float()
        out.append(torch.nn.functional.adaptive_avg_pool2d(img, side).flatten().numpy())
    return np.stack(out).astype(np.float32)


def time_forward(
    model, paths: Sequence[Path], size: int, taps: Sequence[str], repeats: int
) -> dict[str, float]:
    """``{tap: (wall ms, CPU ms)}`` per image of the forward pass up to each tap (batch 64,
    each the minimum over repeats; CPU time is this process's, all its threads)."""
    imgs = np.stack([load_image(p, size) for p in paths[:BATCH]])
    out = {}
    with torch.inference_mode():
        x = preprocess(imgs).contiguous(memory_format=torch.channels_last)
        model.taps(x, ["grid"])  # warm-up
        for tap in taps:
            wall = cpu = float("inf")
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                model.taps(x, [tap])
                wall = min(wall, time.perf_counter() - t0)
                cpu = min(cpu, time.process_time() - c0)
            out[tap] = (1000 * wall / len(imgs), 1000 * cpu / len(imgs))
    return out


# ------------------------------------------------------------------------------ per-cell


# An attention captioner reads one cell (or a soft mix of a few) per word, so what matters
# is what one cell's vector knows about the object under it. For each object of a scene the
# probe takes the cell under the object's centre and reads the object's colour, shape and
# size from that vector alone, and the cell's column and row (does the vector know where it
# is? an attention context carries position only if the cells do).

CELL_TASKS = ("colour", "shape", "size", "column", "row")
#: Channels and stride of the taps that per-cell candidates combine.
CELL_TAPS = {"block10": (112, 16), "block15": (320, 32), "grid": (1280, 32)}
#: (taps, stride) of each per-cell recipe; a tap of another stride is average-pooled
#: (finer) or nearest-upsampled (coarser) to the recipe's grid, then channels concatenate.
CELL_RECIPES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("grid",), 32),
    (("block15",), 32),
    (("block10",), 16),
    (("block10", "grid"), 16),
    (("block10", "grid"), 32),
    (("block10", "block15"), 16),
)
CELLS_PER_TRAIN_IMAGE = 8  # random cells of each training image the per-cell PCA is fitted on


@dataclass(frozen=True)
class CellCandidate:
    """Per-cell features: taps concatenated along channels on one grid, optional PCA."""

    px: int
    taps: tuple[str, ...]
    stride: int
    pca: int | None = None

    @property
    def side(self) -> int:
        """Cells per side: ``ceil(px / stride)`` ("same" padding)."""
        return -(-self.px // self.stride)

    @property
    def raw_dim(self) -> int:
        return sum(CELL_TAPS[t][0] for t in self.taps)

    @property
    def recipe(self) -> tuple[tuple[str, ...], int]:
        return self.taps, self.stride

    @property
    def name(self) -> str:
        pca = f" pca{self.pca}" if self.pca else ""
        return f"{self.px}px {'+'.join(self.taps)} {self.side}x{self.side}{pca}"


def cell_candidates(sizes: Sequence[int], pcas: Sequence[int]) -> list[CellCandidate]:
    """Every recipe at every size, raw and with each per-cell PCA size below its width."""
    out = []
    for S in sizes:
        for taps, stride in CELL_RECIPES:
            raw = CellCandidate(S, taps, stride)
            out.append(raw)
            out += [CellCandidate(S, taps, stride, k) for k in pcas if k < raw.raw_dim]
    return out


def cell_map(out: dict[str, torch.Tensor], taps: Sequence[str], side: int) -> torch.Tensor:
    """Backbone taps -> (B, C, side, side): each tap pooled or upsampled to side x side."""
    parts = []
    for tap in taps:
        t = out[tap]  # (B, C_tap, h, w)
        if t.shape[-1] > side:
            t = torch.nn.functional.adaptive_avg_pool2d(t, side)
        elif t.shape[-1] < side:
            t = torch.nn.functional.interpolate(t, size=(side, side), mode="nearest")
        parts.append(t)
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def object_cells(scene: dict, render: int, side: int) -> list[tuple[int, int]]:
    """(row, column) of the cell under each object's centre, on a side x side grid over the
    image (the scene's coordinates are pixels of the ``render``-px image; resizing a square
    image keeps relative positions)."""
    return [
        (min(side - 1, int(o["y"] / render * side)), min(side - 1, int(o["x"] / render * side)))
        for o in scene["objects"]
    ]


def object_labels(scene: dict, render: int, side: int) -> list[dict[str, int]]:
    """One ``{task: class}`` dict per object, plus ``n`` (objects in the scene)."""
    out = []
    for o, (r, c) in zip(scene["objects"], object_cells(scene, render, side), strict=True):
        colour, shape, size = _key(o)
        out.append(
            {"colour": colour, "shape": shape, "size": size, "column": c, "row": r,
             "n": len(scene["objects"])}
        )  # fmt: skip
    return out


def extract_cells(
    model,
    paths: Sequence[Path],
    scenes: Sequence[dict],
    size: int,
    render: int,
    recipes: Sequence[tuple[tuple[str, ...], int]],
    sample: np.random.Generator | None,
) -> dict[tuple[tuple[str, ...], int], tuple[np.ndarray, np.ndarray | None]]:
    """Images -> ``{recipe: (object cells (n_obj, C), sampled cells (n_img*k, C) or None)}``.

    Object cells follow the scenes' object order; ``sample`` (training split only) draws
    :data:`CELLS_PER_TRAIN_IMAGE` random cells per image for the per-cell PCA. Values are
    rounded through float16, as the store keeps them.
    """
    taps = sorted({t for tp, _ in recipes for t in tp})
    objs: dict = {r: [] for r in recipes}
    samples: dict = {r: [] for r in recipes}
    for b in range(0, len(paths), BATCH):
        imgs = np.stack([load_image(p, size) for p in paths[b : b + BATCH]])  # (B, S, S, 3)
        with torch.inference_mode():
            x = preprocess(imgs).contiguous(memory_format=torch.channels_last)
            out = model.taps(x, taps)
            for recipe in recipes:
                side = CellCandidate(size, *recipe).side
                m = cell_map(out, recipe[0], side).permute(0, 2, 3, 1)  # (B, side, side, C)
                m = m.to(torch.float16).float().numpy()
                for i, scene in enumerate(scenes[b : b + BATCH]):
                    for r, c in object_cells(scene, render, side):
                        objs[recipe].append(m[i, r, c])
                if sample is not None:
                    flat = m.reshape(len(m), side * side, -1)  # (B, L, C)
                    k = min(CELLS_PER_TRAIN_IMAGE, side * side)
                    for i in range(len(m)):
                        samples[recipe].append(flat[i, sample.choice(side * side, k, False)])
    return {
        r: (np.stack(objs[r]), np.concatenate(samples[r]) if sample is not None else None)
        for r in recipes
    }


def primal_eig(Z: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Features Z (n, D) with D < n -> :func:`gram_eig` of ``Z Z^T`` (thin: U is (n, r)).

    The Gram ``Z Z^T + c`` is ``Zc Zc^T`` with ``Zc = [Z, sqrt(c)]``; its nonzero eigenpairs
    come from the (D+1, D+1) matrix ``Zc^T Zc = V diag(s) V^T`` as ``U = Zc V / sqrt(s)``.
    :func:`ridge_probe` gives the same predictions with this thin U (the Gram's null space
    adds nothing to a test point's scores), at O(n D^2) instead of O(n^3).
    """
    Zc = np.concatenate([Z.astype(np.float64), np.full((len(Z), 1), np.sqrt(c))], axis=1)
    s, V = np.linalg.eigh(Zc.T @ Zc)  # (D+1,), (D+1, D+1)
    keep = s > 1e-10 * s.max()
    s, V = s[keep], V[:, keep]
    return s, (Zc @ V) / np.sqrt(s), c


def probe_cells(
    X_tr: np.ndarray, X_te: np.ndarray, lab_tr: list[dict], lab_te: list[dict]
) -> dict[str, np.ndarray]:
    """Object cells X_tr (n, D), X_te (m, D) -> ``{task: (m,) bool, right or not}``.

    The ridge probe of :func:`probe_all` (centred, one global RMS, ridge strength by exact
    leave-one-out on the training objects), one per task of :data:`CELL_TASKS`.
    """
    mu = X_tr.mean(0, dtype=np.float64)
    sd = np.sqrt(np.mean((X_tr - mu) ** 2)) + 1e-6
    D = X_tr.shape[1]
    Z_tr = (X_tr - mu) / (sd * np.sqrt(D))  # (n, D): Z Z^T is probe_all's Gram
    Z_te = (X_te - mu) / (sd * np.sqrt(D))  # (m, D)
    c = float(np.mean(np.sum(Z_tr * Z_tr, axis=1)))
    if D < len(Z_tr):
        eig = primal_eig(Z_tr, c)
    else:
        s, U, _ = gram_eig(Z_tr @ Z_tr.T)
        eig = (s, U, c)
    K_te = Z_te @ Z_tr.T  # (m, n)
    out = {}
    for task in CELL_TASKS:
        k = 1 + max(lab[task] for lab in lab_tr + lab_te)
        Y = np.eye(k)[[lab[task] for lab in lab_tr]]  # (n, k) one-hot
        scores, _, _ = ridge_probe(None, K_te, Y, eig=eig)
        out[task] = scores.argmax(1) == np.array([lab[task] for lab in lab_te])
    return out


def time_cells(
    model,
    paths: Sequence[Path],
    c: CellCandidate,
    pca: PCA | None,
    fwd_ms: dict[str, tuple[float, float]],
    repeats: int,
) -> tuple[float, float]:
    """(wall ms, CPU ms) per image of candidate ``c``: the forward pass to its deepest tap
    (from :func:`time_forward`) plus building its cell map and projecting every cell."""
    deepest = max(c.taps, key=lambda t: TAPS_ORDER.index(t))
    imgs = np.stack([load_image(p, c.px) for p in paths[:BATCH]])
    with torch.inference_mode():
        x = preprocess(imgs).contiguous(memory_format=torch.channels_last)
        out = model.taps(x, list(c.taps))
        wall = cpu = float("inf")
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            m = cell_map(out, c.taps, c.side).permute(0, 2, 3, 1).reshape(-1, c.raw_dim)
            m = m.numpy()
            if pca is not None:
                m = pca.transform(m)
            m.astype(np.float16)
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
    w, p = fwd_ms[deepest]
    return w + 1000 * wall / len(imgs), p + 1000 * cpu / len(imgs)


TAPS_ORDER = ("block10", "block15", "grid")


def run_cells(args: argparse.Namespace) -> dict:
    """The per-cell study (``--cells``): every :func:`cell_candidates` row, printed and
    returned (and written to ``--out``)."""
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    render = args.render_size or 128
    pcas = [int(k) for k in args.cell_pca.split(",") if k.strip()]
    t0 = time.perf_counter()
    data = generate_shapes(
        args.cache / f"shapes_{render}px_seed{args.seed}",
        args.train,
        0,
        args.test,
        image_size=render,
        seed=args.seed,
    )
    scenes = load_scenes(data)
    by_split: dict[str, list[dict]] = {"train": [], "test": []}
    for sid in sorted(scenes, key=int):
        by_split[scenes[sid]["split"]].append(scenes[sid])
    paths = {k: [data / sc["filename"] for sc in v] for k, v in by_split.items()}
    n_obj = {k: sum(len(sc["objects"]) for sc in v) for k, v in by_split.items()}
    test_n = np.array([len(sc["objects"]) for sc in by_split["test"] for _ in sc["objects"]])
    print(
        f"scenes: {args.train} train / {args.test} test drawn at {render}px, objects "
        f"{n_obj['train']} / {n_obj['test']} (test objects in 1/2/3-object scenes: "
        + "/".join(str(int((test_n == k).sum())) for k in (1, 2, 3))
        + f") ({time.perf_counter() - t0:.0f}s)"
    )
    model = load_backbone("cpu", fold_bn=True, channels_last=True)
    cands = cell_candidates(sizes, pcas)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    if wanted:
        cands = [c for c in cands if any(w in c.name for w in wanted)]
    if not cands:
        raise SystemExit(f"--only {args.only!r} matches no candidate")
    rows = []
    for S in sizes:
        mine = [c for c in cands if c.px == S]
        if not mine:
            continue
        recipes = list(dict.fromkeys(c.recipe for c in mine))
        t1 = time.perf_counter()
        cells = {
            split: extract_cells(
                model,
                paths[split],
                by_split[split],
                S,
                render,
                recipes,
                np.random.default_rng(args.seed) if split == "train" else None,
            )
            for split in ("train", "test")
        }
        taps = sorted({t for tp, _ in recipes for t in tp}, key=TAPS_ORDER.index)
        fwd_ms = time_forward(model, paths["test"], S, taps, args.repeats)
        print(
            f"{S}px: extracted in {time.perf_counter() - t1:.0f}s; "
            + ", ".join(f"{t} {w:.1f} wall / {c:.1f} CPU" for t, (w, c) in fwd_ms.items())
            + " ms/img forward"
        )
        for c in mine:
            side = c.side
            lab = {sp: [o for sc in by_split[sp] for o in object_labels(sc, render, side)]
                   for sp in by_split}  # fmt: skip
            X = {sp: cells[sp][c.recipe][0] for sp in cells}
            pca = None
            if c.pca:
                pca = fit_pca(cells["train"][c.recipe][1], c.pca)
                X = {
                    sp: pca.transform(v).astype(np.float16).astype(np.float32)
                    for sp, v in X.items()
                }
            ok = probe_cells(X["train"], X["test"], lab["train"], lab["test"])
            ms = time_cells(model, paths["test"], c, pca, fwd_ms, args.repeats)
            rows.append(_cell_row(c, X["train"].shape[1], ok, test_n, ms))
            print(_cell_fmt(rows[-1]), flush=True)
        del cells
    print()
    print(cell_table(rows))
    result = {
        "command": "python benchmarks/probe_features.py " + " ".join(args.argv),
        "train": args.train,
        "test": args.test,
        "render_size": render,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "objects": n_obj,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


def _cell_row(
    c: CellCandidate, dim: int, ok: dict[str, np.ndarray], n: np.ndarray, ms: Sequence[float]
) -> dict:
    multi = n >= 2
    row: dict[str, object] = {
        "name": c.name,
        "px": c.px,
        "taps": "+".join(c.taps),
        "cells": f"{c.side}x{c.side}",
        "pca": c.pca,
        "dim": dim,
    }
    for k in (1, 2, 3):
        row[f"colour {k}obj"] = round(float(ok["colour"][n == k].mean()), 3)
    for task in ("colour", "shape", "size"):
        row[f"{task} 2-3obj"] = round(float(ok[task][multi].mean()), 3)
    for task in CELL_TASKS:
        row[task] = round(float(ok[task].mean()), 3)
    row["wall_ms"] = round(float(ms[0]), 2)
    row["cpu_ms"] = round(float(ms[1]), 2)
    row["kb_fp16"] = round(c.side * c.side * dim * 2 / 1024, 1)
    return row


CELL_HEAD = (
    "px", "taps", "cells", "pca", "dim", "colour 1obj", "colour 2obj", "colour 3obj",
    "colour 2-3obj", "shape 2-3obj", "size 2-3obj", "colour", "shape", "size", "column", "row",
    "wall ms", "CPU ms", "KB/img fp16",
)  # fmt: skip


def _cell_cells(r: dict) -> list[str]:
    return [
        str(r["px"]),
        str(r["taps"]),
        str(r["cells"]),
        str(r["pca"] or "-"),
        str(r["dim"]),
        *(f"{r[k]:.3f}" for k in CELL_HEAD[5:16]),
        f"{r['wall_ms']:.1f}",
        f"{r['cpu_ms']:.1f}",
        f"{r['kb_fp16']:.1f}",
    ]


def _cell_fmt(r: dict) -> str:
    return " | ".join(_cell_cells(r))


def cell_table(rows: list[dict]) -> str:
    """Markdown table of the per-cell rows, in the order given."""
    lines = ["| " + " | ".join(CELL_HEAD) + " |", "|" + "---|" * len(CELL_HEAD)]
    lines += ["| " + " | ".join(_cell_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=None, help="training scenes (default 2000)")
    ap.add_argument("--test", type=int, default=None, help="test scenes (default 500)")
    ap.add_argument("--sizes", default="128,160,224", help="image sizes to probe, comma-separated")
    ap.add_argument(
        "--render-size",
        type=int,
        default=None,
        help="size the scenes are drawn at (default: the largest of --sizes)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated scenes")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="600/200 scenes (unless given), fewer taps and poolings",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "captionlab-probe",
        help="folder for the generated scenes (reused when the arguments match)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (min is reported)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (1: fastest on a crowded machine; 2 for a 2-core budget)",
    )
    ap.add_argument(
        "--scaling",
        choices=("global", "zscore", "both"),
        default="global",
        help="probe input: centred / one RMS (global), per-dimension z-score, or both",
    )
    ap.add_argument(
        "--only",
        default="",
        help="keep only candidates whose name ('128px grid avg+2x2 pca512') contains one of "
        "these comma-separated strings, e.g. 'grid avg+2x2,block15 avg+2x2'",
    )
    ap.add_argument(
        "--cells",
        action="store_true",
        help="per-cell study instead: read each object's colour, shape and size from the one "
        "grid cell under its centre (scenes drawn at --render-size, default 128)",
    )
    ap.add_argument(
        "--cell-pca",
        default="64,128,256",
        help="per-cell PCA sizes probed with --cells (fitted on training images' cells)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write every number as JSON here")
    args = ap.parse_args(argv)
    args.train = args.train or (600 if args.quick else 2000)
    args.test = args.test or (200 if args.quick else 500)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        return run_cells(args) if args.cells else _run(args)


def _run(args: argparse.Namespace) -> dict:
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    render = args.render_size or max(sizes)

    t0 = time.perf_counter()
    data = generate_shapes(
        args.cache / f"shapes_{render}px_seed{args.seed}",
        args.train,
        0,
        args.test,
        image_size=render,
        seed=args.seed,
    )
    scenes = load_scenes(data)
    by_split = {"train": [], "test": []}
    for sid in sorted(scenes, key=int):
        by_split[scenes[sid]["split"]].append(scenes[sid])
    paths = {k: [data / sc["filename"] for sc in v] for k, v in by_split.items()}
    labels = {k: [scene_labels(sc) for sc in v] for k, v in by_split.items()}
    n_task = {
        t: (sum(t in lab for lab in labels["train"]), sum(t in lab for lab in labels["test"]))
        for t in TASKS
    }
    print(
        f"scenes: {args.train} train / {args.test} test drawn at {render}px "
        f"({time.perf_counter() - t0:.0f}s); probe sizes (train/test): "
        + ", ".join(f"{t} {a}/{b}" for t, (a, b) in n_task.items())
    )

    scalings = ("global", "zscore") if args.scaling == "both" else (args.scaling,)
    model = load_backbone("cpu", fold_bn=True, channels_last=True)
    cands = candidates(sizes, args.quick)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    if wanted:
        cands = [c for c in cands if any(w in c.name for w in wanted)]
    if not cands:
        raise SystemExit(f"--only {args.only!r} matches no candidate")
    rows = []
    for S in sizes:
        mine = [c for c in cands if c.px == S and c.tap != "pixels"]
        if not mine:
            continue
        taps: dict[str, list[str]] = {}
        for c in mine:
            for part in c.pool.split("+"):
                if part not in taps.setdefault(c.tap, []):
                    taps[c.tap].append(part)
        t1 = time.perf_counter()
        feats, load_ms = {}, 0.0
        for split in ("train", "test"):
            feats[split], ms = extract(model, paths[split], S, taps)
            load_ms += ms / 2
        fwd_ms = time_forward(model, paths["test"], S, list(taps), args.repeats)
        print(
            f"{S}px: extracted in {time.perf_counter() - t1:.0f}s; decode {load_ms:.2f} ms/img; "
            + ", ".join(f"{t} {w:.1f} wall / {c:.1f} CPU" for t, (w, c) in fwd_ms.items())
            + " ms/img forward"
        )
        for c in mine:
            X = {
                sp: np.concatenate([feats[sp][(c.tap, p)] for p in c.pool.split("+")], axis=1)
                for sp in feats
            }
            if c.pca:
                pca = fit_pca(X["train"], min(c.pca, len(X["train"])))
                t3, c3 = time.perf_counter(), time.process_time()
                X = {sp: pca.transform(v) for sp, v in X.items()}
                n = args.train + args.test
                post = (
                    1000 * (time.perf_counter() - t3) / n,
                    1000 * (time.process_time() - c3) / n,
                )
            else:
                post = (0.0, 0.0)
            for scaling in scalings:
                accs, preds = probe_all(X["train"], X["test"], *labels.values(), scaling)
                ms = np.add(fwd_ms[c.tap], post)
                rows.append(_row(c, scaling, X["train"].shape[1], accs, ms, preds))
                print(_fmt(rows[-1]), flush=True)
        del feats
    for pix in (c for c in cands if c.tap == "pixels"):
        X = {sp: thumbnails(paths[sp], pix.px) for sp in paths}
        for scaling in scalings:
            accs, preds = probe_all(X["train"], X["test"], *labels.values(), scaling)
            rows.append(_row(pix, scaling, X["train"].shape[1], accs, (0.0, 0.0), preds))
            print(_fmt(rows[-1]), flush=True)

    print()
    print(table(rows))
    best = max((r for r in rows if r["tap"] != "pixels"), key=lambda r: r["mean"])
    detail = breakdown(best, by_split["test"], labels["test"], render)
    print(f"\nbreakdown for {best['name']}:")
    for k, v in detail.items():
        print(f"  {k}: {v}")
    result = {
        "command": "python benchmarks/probe_features.py " + " ".join(args.argv),
        "train": args.train,
        "test": args.test,
        "render_size": render,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "n_task": n_task,
        "rows": [{k: v for k, v in r.items() if k != "preds"} for r in rows],
        "breakdown": {"candidate": best["name"], **detail},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


def _row(
    c: Candidate, scaling: str, dim: int, accs: dict, ms: Sequence[float], preds: dict
) -> dict:
    mean = float(np.mean([accs[t] for t in TASKS if t in accs]))
    return {
        "name": f"{c.name} ({scaling})",
        "scaling": scaling,
        **asdict(c),
        "dim": dim,
        "wall_ms": round(float(ms[0]), 2),
        "cpu_ms": round(float(ms[1]), 2),
        **{t: round(accs.get(t, float("nan")), 3) for t in TASKS},
        "mean": round(mean, 3),
        "preds": preds,
    }


HEAD = ("px", "tap", "pool", "pca", "scale", "dim", *TASKS, "mean", "wall ms", "CPU ms")


def _cells(r: dict) -> list[str]:
    return [
        f"{r['px']}",
        r["tap"],
        r["pool"],
        str(r["pca"] or "-"),
        r["scaling"],
        str(r["dim"]),
        *(f"{r[t]:.3f}" for t in TASKS),
        f"{r['mean']:.3f}",
        f"{r['wall_ms']:.1f}",
        f"{r['cpu_ms']:.1f}",
    ]


def _fmt(r: dict) -> str:
    return " | ".join(_cells(r))


def table(rows: list[dict]) -> str:
    """Markdown table of the rows, in the order given."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def breakdown(row: dict, scenes: list[dict], labels: list[dict], S: int) -> dict:
    """Where one candidate's errors are: colour by object size and per colour, relations by
    the gap between the two objects (fraction of the image side)."""
    out: dict[str, object] = {}
    preds = row["preds"]
    if "colour" in preds:
        idx = [i for i, lab in enumerate(labels) if "colour" in lab]
        ok = np.array([preds["colour"][j] == labels[i]["colour"] for j, i in enumerate(idx)])
        size = np.array([scenes[i]["objects"][0]["size"] for i in idx])
        out["colour acc by object size"] = {
            s: round(float(ok[size == s].mean()), 3) for s in SIZES if (size == s).any()
        }
        truth = np.array([labels[i]["colour"] for i in idx])
        out["colour acc per colour"] = {
            c: round(float(ok[truth == k].mean()), 3)
            for k, c in enumerate(COLOURS)
            if (truth == k).any()
        }
        conf: dict[str, int] = {}
        for j, i in enumerate(idx):
            if not ok[j]:
                pair = f"{list(COLOURS)[labels[i]['colour']]}->{list(COLOURS)[preds['colour'][j]]}"
                conf[pair] = conf.get(pair, 0) + 1
        out["colour confusions (true->pred: n)"] = dict(
            sorted(conf.items(), key=lambda kv: -kv[1])[:6]
        )
    for task, axis in (("left/right", 0), ("above/below", 1)):
        if task not in preds:
            continue
        idx = [i for i, lab in enumerate(labels) if task in lab]
        ok = np.array([preds[task][j] == labels[i][task] for j, i in enumerate(idx)])
        gaps, sizes = [], []
        for i in idx:
            a, b = scenes[i]["objects"]
            lo, hi = sorted((a, b), key=lambda o: o["bbox"][axis])
            gaps.append((hi["bbox"][axis] - lo["bbox"][axis + 2]) / S)
            sizes.append("+".join(sorted((str(a["size"]), str(b["size"])))))
        gaps, sizes = np.array(gaps), np.array(sizes)
        med = float(np.median(gaps))
        out[f"{task} acc gap<median / >=median"] = [
            round(float(ok[gaps < med].mean()), 3),
            round(float(ok[gaps >= med].mean()), 3),
        ]
        out[f"{task} acc by sizes"] = {
            s: round(float(ok[sizes == s].mean()), 3) for s in sorted(set(sizes.tolist()))
        }
    return out


if __name__ == "__main__":
    main()
