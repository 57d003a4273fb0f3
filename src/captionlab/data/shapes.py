"""The shapes benchmark: generated scenes with known truth, captioned like COCO.

Each image holds 1-3 objects on a light, near-neutral background (a mild tint, gradient and
soft shading: CNN features keep colour best on such backgrounds, see DESIGN.md). An object
has a **size** (small, large), a **colour** (red, green, blue, yellow, purple, black) and a
**shape** (circle, square, triangle, star); no two objects in a scene share all three.
Objects are placed so that every spatial relation is unambiguous:

* ``A left of B`` holds when A's box ends at least ``gap`` (4% of the image) before B's box
  begins (A lies wholly to the left); ``right of``, ``above`` and ``below`` likewise.
* On each axis a pair is either separated that way or aligned (centres within 7% of the
  image); placements in between are redrawn. Boxes keep 4% from the border. Two objects
  are aligned on one axis, so they stand in exactly one relation (and its inverse); three
  may also stand diagonally.

Each image has five reference captions drawn from different templates (at least five per
object count) with synonyms ("disk" for circle, "big" for large, "under" for below, ...),
every one true of its scene and at most 15 words (cs231n's 17 columns with ``<START>`` and
``<END>``). :func:`parse_caption` reads every template back; ``scenes.json`` keeps the truth
for :func:`captionlab.captioning.scene_accuracy.scene_accuracy`.

Output of :func:`generate_shapes` (same arguments -> byte-identical files)::

    out_dir/images/{split}_{k:05d}.png    image_size x image_size RGB
    out_dir/dataset.json                  Karpathy format (load_dataset reads it)
    out_dir/scenes.json                   {"images": [{"image_id", "split", "filename",
                                            "objects": [...], "relations": [...]}, ...]}
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from captionlab._atomic import write_json
from captionlab.data._io import read_json
from captionlab.data.vocab import tokenize
from captionlab.errors import DataError
from captionlab.scenes import INVERSE, RELATIONS

GENERATOR = "captionlab-shapes"
GENERATOR_VERSION = 2

#: Colours people name the same way, far apart in RGB and hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 200, 20),
    "purple": (135, 50, 175),
    "black": (30, 30, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
#: An object's radius as a fraction of the image size (circle radius, half a triangle's side,
#: a star's outer radius; a square's half-side is 0.9 of it), varied by +-6%.
SIZES: dict[str, float] = {"small": 0.085, "large": 0.165}
SIZES_ARR = np.array(list(SIZES.values()))

# Caption words. Repeats weight the common word over its synonyms.
SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
SHAPE_WORDS = {"circle": ("circle", "circle", "disk"), "square": ("square",),
               "triangle": ("triangle",), "star": ("star",)}  # fmt: skip
REL_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "above", "over"),
    "below": ("below", "below", "under", "beneath"),
}
SHORT_REL_WORDS = {"left of": ("left of",), "right of": ("right of",),
                   "above": ("above", "over"), "below": ("below", "under")}  # fmt: skip
COLLECTIVE = ("shapes", "shapes", "objects", "things")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}

_MARGIN = 0.04  # to the image border, fraction of size
_GAP = 0.04  # between separated boxes
_ALIGN = 0.07  # centres this close count as aligned


# ------------------------------------------------------------------------------- geometry


def _pick(rng: np.random.Generator, seq):
    """One element of ``seq``, uniformly (faster than ``rng.choice`` for short lists)."""
    return seq[int(rng.integers(len(seq)))]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of ``shape`` centred at (cx, cy) with half-width r (circle: none)."""
    if shape == "square":
        h = 0.9 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        h = r * math.sqrt(3) / 2  # equilateral, side 2r, pointing up
        return [(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + 0.1 * r))
        return pts
    return []


def _bbox(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    pts = _outline(shape, cx, cy, r)
    if not pts:
        return (cx - r, cy - r, cx + r, cy + r)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


def _axis_state(a0: float, a1: float, b0: float, b1: float, ca: float, cb: float, S: int):
    """'<' (A wholly before B), '>' (after), '=' (aligned) or None (ambiguous)."""
    gap = _GAP * S
    if a1 + gap <= b0:
        return "<"
    if b1 + gap <= a0:
        return ">"
    if abs(ca - cb) <= _ALIGN * S:
        return "="
    return None


def scene_relations(objects: list[dict], image_size: int) -> list[dict] | None:
    """All relations between ordered pairs of objects, or None if a pair is ambiguous.

    Each relation is ``{"subject": i, "relation": "left of", "object": j}`` (object i is
    left of object j); both directions are listed.
    """
    rels = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if j <= i:
                continue
            ax0, ay0, ax1, ay1 = a["bbox"]
            bx0, by0, bx1, by1 = b["bbox"]
            h = _axis_state(ax0, ax1, bx0, bx1, a["x"], b["x"], image_size)
            v = _axis_state(ay0, ay1, by0, by1, a["y"], b["y"], image_size)
            if h is None or v is None or (h == "=" and v == "="):
                return None
            pairs = []
            if h != "=":
                pairs.append("left of" if h == "<" else "right of")
            if v != "=":
                pairs.append("above" if v == "<" else "below")
            for rel in pairs:
                rels.append({"subject": i, "relation": rel, "object": j})
                rels.append({"subject": j, "relation": INVERSE[rel], "object": i})
    rels.sort(key=lambda r: (r["subject"], r["object"], r["relation"]))
    return rels


def sample_scene(rng: np.random.Generator, image_size: int) -> dict:
    """A random scene: ``{"objects": [...], "relations": [...], "background": {...}}``.

    Objects: ``{"size", "colour", "shape", "x", "y", "bbox": [x0, y0, x1, y1], "rgb"}`` in
    pixels of the ``image_size`` image.
    """
    S = image_size
    n = int(rng.integers(1, 4))
    while True:
        triples: list[tuple[str, str, str]] = []
        while len(triples) < n:
            t = (_pick(rng, list(SIZES)), _pick(rng, list(COLOURS)), _pick(rng, SHAPES))
            if t not in triples:
                triples.append(t)
        radii = SIZES_ARR[[list(SIZES).index(t[0]) for t in triples]] * S
        radii = radii * rng.uniform(0.94, 1.06, size=n)  # (n,)
        offsets = np.array([_bbox(t[2], 0.0, 0.0, r) for t, r in zip(triples, radii, strict=True)])
        lo = _MARGIN * S - offsets[:, :2]  # (n, 2) lowest centre x, y inside the margins
        hi = S - _MARGIN * S - offsets[:, 2:]  # (n, 2) highest
        tries = 200
        centres = lo + rng.random((tries, n, 2)) * (hi - lo)  # (tries, n, 2)
        if n == 2:  # two objects stand in one relation: aligned on the other axis
            other = int(rng.integers(2))  # 1: side by side (aligned in y); 0: one above
            jitter = rng.uniform(-2, 2, size=tries)
            centres[:, 1, other] = np.clip(
                centres[:, 0, other] + jitter, lo[1, other], hi[1, other]
            )
        for trial in range(tries):
            objects = []
            for i, (size, colour, shape) in enumerate(triples):
                cx, cy = (float(v) for v in centres[trial, i])
                bbox = [float(v) for v in offsets[i] + (cx, cy, cx, cy)]
                objects.append(
                    {"size": size, "colour": colour, "shape": shape, "r": float(radii[i]),
                     "x": cx, "y": cy, "bbox": bbox}
                )  # fmt: skip
            rels = scene_relations(objects, S)
            if rels is not None:
                break
        else:
            continue  # these sizes do not fit: draw new objects
        break
    for o in objects:
        base = np.array(COLOURS[o["colour"]], dtype=float)
        o["rgb"] = [int(v) for v in np.clip(base + rng.integers(-12, 13, size=3), 0, 255)]
    level = float(rng.uniform(205, 245))
    background = {
        "rgb": [int(v) for v in np.clip(level + rng.uniform(-10, 10, size=3), 0, 255)],
        "gradient": float(rng.uniform(0, 16)),
        "angle": float(rng.uniform(0, 2 * math.pi)),
    }
    return {"objects": objects, "relations": rels, "background": background}


def render_scene(scene: dict, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene: background at full size, objects drawn at twice the size and
    box-downsampled (anti-aliased edges). Returns an RGB image of image_size x image_size."""
    S = image_size
    bg = scene["background"]
    t = np.linspace(-0.5, 0.5, S, dtype=np.float32)
    ramp = bg["gradient"] * (np.cos(bg["angle"]) * t[None, :] + np.sin(bg["angle"]) * t[:, None])
    blotch = Image.fromarray(rng.normal(0.0, 4.0, size=(4, 4)).astype(np.float32), "F")
    ramp += np.asarray(blotch.resize((S, S), Image.Resampling.BICUBIC))  # (S, S) mild shading
    pixels = np.asarray(bg["rgb"], np.float32)[None, None, :] + ramp[..., None]  # (S, S, 3)
    img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((2 * S, 2 * S), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        cx, cy, r, fill = 2 * o["x"], 2 * o["y"], 2 * o["r"], tuple(o["rgb"])
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_outline(o["shape"], cx, cy, r), fill=fill)
    return img.reduce(2)


# ------------------------------------------------------------------------------- captions


def _phrase(o: dict, rng: np.random.Generator) -> str:
    """``small red circle`` with synonyms (no article)."""
    return " ".join(
        (
            _pick(rng, SIZE_WORDS[o["size"]]),
            o["colour"],
            _pick(rng, SHAPE_WORDS[o["shape"]]),
        )
    )


def _templates(n: int) -> list[str]:
    """Caption templates for n objects. {A} {B} {C}: object phrases; {rel}: a relation that
    holds from A to B ({srel}: a short one, from A to B, or from B to C with {B}{srel}{C});
    {coll}: shapes/objects/things."""
    if n == 1:
        return [
            "a {A}",
            "one {A}",
            "there is a {A}",
            "a single {A}",
            "one {coll1}: a {A}",
            "{picture} of a {A}",
            "a {A} on a plain background",
        ]
    if n == 2:
        return [
            "a {A} {rel} a {B}",
            "there is a {A} {rel} a {B}",
            "two {coll}: a {A} and a {B}",
            "a {A} and a {B}",
            "a {A} is {rel} a {B}",
            "two {coll}, a {A} {rel} a {B}",
        ]
    return [
        "three {coll}: a {A}, a {B} and a {C}",
        "a {A}, a {B} and a {C}",
        "there is a {A}, a {B} and a {C}",
        "a {A} {srel} a {B} and a {C}",
        "a {C} and a {A} {srel} a {B}",
        "one {A}, one {B} and one {C}",
    ]


def make_captions(scene: dict, rng: np.random.Generator, k: int = 5) -> list[str]:
    """``k`` reference captions from ``k`` different templates, each true of ``scene``."""
    objects, rels = scene["objects"], scene["relations"]
    templates = _templates(len(objects))
    order = rng.permutation(len(templates))[:k]
    captions = []
    for t in order:
        template = templates[int(t)]
        idx = [int(i) for i in rng.permutation(len(objects))]
        fields = {
            "coll": _pick(rng, COLLECTIVE),
            "coll1": _pick(rng, ["shape", "object"]),
        }
        fields["picture"] = _pick(rng, ["a picture", "an image", "a drawing"])
        if "rel}" in template:  # {rel} or {srel}: pick a relation and put its ends as A, B
            rel = rels[int(rng.integers(len(rels)))]
            a, b = rel["subject"], rel["object"]
            rest = [i for i in idx if i not in (a, b)]
            idx = [a, b, *rest]
            words = SHORT_REL_WORDS if "{srel}" in template else REL_WORDS
            fields["rel" if "{rel}" in template else "srel"] = _pick(rng, words[rel["relation"]])
        for name, i in zip("ABC", idx, strict=False):
            fields[name] = _phrase(objects[i], rng)
        captions.append(template.format(**fields))
    return captions


# ------------------------------------------------------------------------------- parsing

_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_SHAPE_OF = {w: s for s, ws in SHAPE_WORDS.items() for w in ws} | {"disc": "circle"}
_PLURAL_OF = {w + "s": s for w, s in _SHAPE_OF.items()}
_REL_OF = {"left": "left of", "right": "right of", "above": "above", "over": "above",
           "below": "below", "under": "below", "beneath": "below",
           "underneath": "below"}  # fmt: skip
_COLLECTIVE = {"shape", "shapes", "object", "objects", "thing", "things", "item", "items"}
_NUMBER = NUMBER_WORDS | {str(i): i for i in range(10)}


def parse_caption(text: str) -> dict:
    """Read objects, a count and relations from a caption (any template, or a model's).

    Returns:
        ``{"objects": [{"size", "colour", "shape"}], "relations": [{"subject", "relation",
        "object"}], "count": int, "count_explicit": bool}``. An object is a shape word
        with the size and colour words just before it (None where absent; a plural noun
        repeats the object by the number before it, default 2). A relation word between two
        consecutive objects relates them (subject first); "top" in "on top of" is "above".
        ``count`` is the number in "N shapes/objects/things" when given, else the number of
        objects named. Special tokens and unknown words are ignored.
    """
    tokens = [t for t in tokenize(text) if t not in ("start", "end", "null", "unk")]
    objects: list[dict] = []
    spans: list[tuple[int, int]] = []
    count = None
    for k, tok in enumerate(tokens):
        if tok in _NUMBER and k + 1 < len(tokens) and tokens[k + 1] in _COLLECTIVE:
            count = _NUMBER[tok] if count is None else count
        shape, times = _SHAPE_OF.get(tok), 1
        if shape is None and tok in _PLURAL_OF:
            shape = _PLURAL_OF[tok]
        if shape is None:
            continue
        size = colour = None
        j = k - 1
        while j >= 0 and k - j <= 2:
            if tokens[j] in _SIZE_OF and size is None:
                size = _SIZE_OF[tokens[j]]
            elif tokens[j] in COLOURS and colour is None:
                colour = tokens[j]
            else:
                break
            j -= 1
        if tok in _PLURAL_OF:
            times = _NUMBER.get(tokens[j], 2) if j >= 0 else 2
        for _ in range(times):
            objects.append({"size": size, "colour": colour, "shape": shape})
            spans.append((j + 1, k))
    relations = []
    for i in range(len(spans) - 1):
        gap = tokens[spans[i][1] + 1 : spans[i + 1][0]]
        rel = next((_REL_OF[t] for t in gap if t in _REL_OF), None)
        if rel is None and "top" in gap:
            rel = "above"
        if rel is not None:
            relations.append({"subject": i, "relation": rel, "object": i + 1})
    return {
        "objects": objects,
        "relations": relations,
        "count": count if count is not None else len(objects),
        "count_explicit": count is not None,
    }


# ------------------------------------------------------------------------------- dataset

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def _params(n_train: int, n_val: int, n_test: int, image_size: int, seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "image_size": image_size,
        "seed": seed,
    }


def _is_cached(out: Path, params: dict) -> bool:
    ds_file, sc_file = out / "dataset.json", out / "scenes.json"
    if not (ds_file.is_file() and sc_file.is_file()):
        return False
    try:
        ds = read_json(ds_file)
    except DataError:
        return False
    if not isinstance(ds, dict) or ds.get("generator") != params:
        return False
    images = ds.get("images", [])
    return len(images) == params["n_train"] + params["n_val"] + params["n_test"] and all(
        (out / im["filepath"] / im["filename"]).is_file() for im in images
    )


def generate_shapes(
    out_dir: str | Path,
    n_train: int = 4000,
    n_val: int = 500,
    n_test: int = 500,
    image_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the shapes benchmark into ``out_dir`` and return ``out_dir``.

    Cached: when ``out_dir`` already holds a complete benchmark made with the same arguments
    nothing is written. Image k of a split depends only on (seed, split, k, image_size), so
    a larger ``n_train`` keeps the smaller set's images. JSON files are written last,
    atomically; an interrupted run leaves no ``dataset.json`` claiming to be complete.
    """
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(v, int) or v < 0:
            raise DataError(f"{name} must be a non-negative integer, got {v!r}")
    if not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise DataError(f"image_size must be an integer in [32, 1024] pixels, got {image_size!r}")
    out = Path(out_dir)
    params = _params(n_train, n_val, n_test, image_size, seed)
    if _is_cached(out, params):
        return out
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder (expected the output folder)")
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out / "dataset.json", out / "scenes.json"):
        if stale.exists():
            stale.unlink()
    jobs = [(s, k) for s, n in (("train", n_train), ("val", n_val), ("test", n_test))
            for k in range(n)]  # fmt: skip
    ds_images, sc_images = [], []
    for imgid, (split, k) in enumerate(tqdm(jobs, desc="shapes", unit="img", disable=not progress)):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], k, image_size])
        scene = sample_scene(rng, image_size)
        img = render_scene(scene, image_size, rng)
        captions = make_captions(scene, rng)
        filename = f"{split}_{k:05d}.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=3)
        # Images are plain writes: dataset.json, written last, is what marks them complete.
        (img_dir / filename).write_bytes(buf.getvalue())
        ds_images.append(
            {"filepath": "images", "filename": filename, "imgid": imgid, "split": split,
             "sentids": list(range(5 * imgid, 5 * imgid + 5)),
             "sentences": [{"raw": c, "tokens": tokenize(c), "imgid": imgid,
                            "sentid": 5 * imgid + i} for i, c in enumerate(captions)]}
        )  # fmt: skip
        sc_images.append(
            {"image_id": str(imgid), "split": split, "filename": f"images/{filename}",
             "objects": [_rounded(o) for o in scene["objects"]],
             "relations": scene["relations"], "background": scene["background"]["rgb"]}
        )  # fmt: skip
    keep = {im["filename"] for im in ds_images}
    for f in img_dir.glob("*.png"):
        if f.name not in keep and f.name.split("_")[0] in _SPLIT_CODE:
            os.unlink(f)
    meta = {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
            "relations": list(RELATIONS)}  # fmt: skip
    scenes = {"generator": params, **meta, "images": sc_images}
    write_json(out / "scenes.json", scenes, indent=None)
    dataset = {"dataset": "shapes", "generator": params, "images": ds_images}
    write_json(out / "dataset.json", dataset, indent=None)
    return out


def _rounded(o: dict) -> dict:
    return {
        "size": o["size"],
        "colour": o["colour"],
        "shape": o["shape"],
        "x": round(o["x"], 2),
        "y": round(o["y"], 2),
        "bbox": [round(v, 2) for v in o["bbox"]],
        "rgb": o["rgb"],
    }


def load_scenes(path: str | Path) -> dict[str, dict]:
    """``scenes.json`` (or its folder) -> ``{image_id: scene}``; scenes feed scene_accuracy."""
    path = Path(path)
    if path.is_dir():
        path = path / "scenes.json"
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: missing field 'images' (a list of scenes)")
    out = {}
    for i, sc in enumerate(data["images"]):
        for key in ("image_id", "objects", "relations"):
            if not isinstance(sc, dict) or key not in sc:
                raise DataError(f"{path}: missing field 'images[{i}].{key}'")
        out[str(sc["image_id"])] = sc
    return out
