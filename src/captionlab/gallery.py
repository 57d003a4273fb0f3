"""The captions gallery: right and wrong captions of shapes test images, as PNG and HTML,
and attention strips (where an attention captioner looked for each word).

A caption is *right* when every object, attribute, count and relation it names is in the
scene and nothing is missing (:mod:`captionlab.captioning.scene_accuracy`). The HTML page's
template is a package file (``captionlab/templates/gallery.html``).
"""

from __future__ import annotations

import html
import shutil
import textwrap
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from captionlab._atomic import atomic_write, atomic_write_bytes

__all__ = ["attention_strips", "caption_is_right", "pick_varied", "write_gallery"]

STRIP_SAMPLES = 10  # SmoothGrad's noisy copies in the explanation strip


def caption_is_right(scene_score: dict | None) -> bool:
    """Whether a caption's scene score (``score_caption``) has every object, the count and
    every relation right, and names nothing that is not there."""
    s = scene_score
    if not s:
        return False
    return (
        s["matched"] == s["objects"] == s["mentions"]
        and bool(s["count_correct"])
        and s["relations_correct"] == s["relations_named"]
    )


def pick_varied(items: list[dict], k: int) -> list[dict]:
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


def attention_strips(
    out: Path, model, grids: np.ndarray, items: list[dict], image_size: int, beam: int = 3
) -> list[dict]:
    """One attention figure per item into ``OUT/gallery/`` (``attention_<file>.png``).

    Args:
        out: the gallery's folder.
        model: an attention captioner.
        grids: the items' grids, (K, L, D).
        items: K dicts with ``image_id`` and ``path``.
        image_size: the side the network saw the images at (the figure shows that crop).
        beam: beam size of the captions shown (1: greedy).

    Returns:
        ``[{"image_id", "caption", "png"}]``, the figure of each item.
    """
    from captionlab.captioning.plots import attention_figure, caption_words
    from captionlab.runs.inference import best_captions
    from captionlab.vision.figures import save_figure
    from captionlab.vision.images import load_image

    words, alphas = best_captions(model, grids.astype(model.dtype), beam=beam, attention=True)
    folder = out / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    strips = []
    for k, item in enumerate(items):
        shown = caption_words(words[k], model.idx_to_word)
        image = load_image(item["path"], image_size)
        fig = attention_figure(image, shown, alphas[k, : len(shown)])
        png = save_figure(fig, folder / f"attention_{Path(item['path']).stem}.png", dpi=80)
        strips.append({"image_id": item["image_id"], "caption": " ".join(shown), "png": str(png)})
    return strips


def write_gallery(
    out: Path,
    captions: list[dict],
    shapes_dir: Path,
    per_kind: int = 6,
    strips: list[dict] | None = None,
    explainer=None,
    explain_method: str = "smoothgrad",
) -> dict:
    """``OUT/gallery.png`` and ``OUT/gallery.html`` (with its images in ``OUT/gallery/``).

    Args:
        out: the folder to write into.
        captions: ``{"image_id", "path", "caption", "references"}`` per test image (as
            :func:`captionlab.runs.evaluate.evaluate_run` lists them); each gets ``scene``
            (its score) and ``correct`` added.
        shapes_dir: the shapes dataset folder (its ``scenes.json`` scores the captions).
        per_kind: how many right and how many wrong captions to show.
        strips: attention figures (:func:`attention_strips`) to show in the HTML page.
        explainer: a :class:`captionlab.explain.Explainer` of the model that wrote the
            captions: the first right and the first wrong caption shown are explained word
            by word (``explain_method``) in an explanation strip.

    Returns:
        ``{"png", "html", "fully_correct", "images", "explained"}`` (and ``"attention"``,
        the strips' PNGs).
    """
    from captionlab.captioning.scene_accuracy import score_caption
    from captionlab.data.shapes import load_scenes, parse_caption

    scenes = load_scenes(shapes_dir / "scenes.json")
    for item in captions:
        item["scene"] = score_caption(parse_caption(item["caption"]), scenes[item["image_id"]])
        item["correct"] = caption_is_right(item["scene"])
    right = pick_varied([c for c in captions if c["correct"]], per_kind)
    wrong = pick_varied([c for c in captions if not c["correct"]], per_kind)
    img_dir = out / "gallery"
    img_dir.mkdir(parents=True, exist_ok=True)
    for item in right + wrong:
        shutil.copyfile(item["path"], img_dir / Path(item["path"]).name)
    strip, attended = [], False
    if explainer is not None:
        strip, attended = _explanation_strip(img_dir, explainer, right[:1] + wrong[:1],
                                             explain_method)  # fmt: skip
    _gallery_png(out / "gallery.png", right, wrong)
    _gallery_html(out / "gallery.html", right, wrong, len(captions), strips or [], strip,
                  explain_method, attended)  # fmt: skip
    summary = {
        "png": str(out / "gallery.png"),
        "html": str(out / "gallery.html"),
        "fully_correct": sum(c["correct"] for c in captions),
        "images": len(captions),
        "explained": [str(img_dir / name) for name, _ in strip],
    }
    if strips:
        summary["attention"] = [s["png"] for s in strips]
    return summary


def _explanation_strip(
    img_dir: Path, explainer, items: list[dict], method: str
) -> tuple[list[tuple[str, str]], bool]:
    """Explain each item's caption word by word into img_dir: ``([(png name, alt text)],
    whether the figures have an attention row)``."""
    from captionlab.explain.figure import explanation_figure
    from captionlab.vision.figures import save_figure
    from captionlab.vision.images import load_image

    made, attended = [], False
    for item in items:
        pixels = load_image(item["path"], explainer.image_size)
        # 10 noisy copies (the command's default is 25): the strip costs the demo seconds
        ids = explainer.encode(item["caption"])
        result = explainer.explain(pixels, method, caption_ids=ids, samples=STRIP_SAMPLES)
        verdict = "right" if item["correct"] else "wrong"
        fig = explanation_figure(pixels, result, title=f"{verdict}: “{result.caption}”")
        name = f"explain_{Path(item['path']).stem}.png"
        save_figure(fig, img_dir / name, dpi=80)
        made.append((name, f"{verdict}: {result.caption}"))
        attended = attended or result.has_attention
    return made, attended


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
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90, facecolor="white"))


def _card(item: dict) -> str:
    refs = "".join(f"<li>{html.escape(t)}</li>" for t in item["references"][:2])
    cls = "ok" if item["correct"] else "bad"
    name = html.escape(Path(item["path"]).name)
    return (
        f'<figure class="{cls}"><img src="gallery/{name}" alt="{name}">'
        f"<figcaption><b>{html.escape(item['caption'])}</b><ul>{refs}</ul></figcaption>"
        "</figure>"
    )


def _attention_html(strips: list[dict]) -> str:
    if not strips:
        return ""
    figures = "".join(
        f'<figure class="strip"><img src="gallery/{html.escape(Path(s["png"]).name)}" '
        f'alt="attention of each word"><figcaption>{html.escape(s["caption"])}</figcaption>'
        "</figure>"
        for s in strips
    )
    return (
        "<h2>Where the attention captioner looked</h2><p>For each word of its caption (beam "
        "search), the image dimmed where that step did not look; the yellow line encloses the "
        "cells with at least half the step's largest weight, shown in brackets.</p>"
        f'<section class="strips">{figures}</section>'
    )


def _explain_html(strip: list[tuple[str, str]], method: str, attended: bool = False) -> str:
    from captionlab.vision.figures import METHOD_TITLES

    if not strip:
        return ""
    images = "".join(
        f'<img src="gallery/{html.escape(name)}" alt="{html.escape(alt)}">' for name, alt in strip
    )
    how = METHOD_TITLES.get(method, method)
    if method == "smoothgrad":
        how += f" over {STRIP_SAMPLES} noisy copies"
    beneath = ""
    if attended:
        beneath = (
            " Beneath, where the captioner's attention was when it chose the word (its weights "
            "over the grid's cells, the image faded where it did not look): attention shows "
            "where the model read from, the gradient what moved the word."
        )
    return (
        "<h2>Why each word</h2><p>For each word, the pixels that move its probability most: "
        f"{how}, of the word's log-probability through the captioner and the CNN "
        f"(<code>captionlab explain</code>).{beneath}</p>"
        f'<div class="explain">{images}</div>'
    )


def _gallery_html(
    path: Path,
    right: list[dict],
    wrong: list[dict],
    total: int,
    strips: list[dict],
    strip: list[tuple[str, str]],
    method: str,
    attended: bool = False,
) -> None:
    template = resources.files("captionlab").joinpath("templates/gallery.html").read_text("utf-8")
    page = Template(template).substitute(
        n_right=len(right),
        n_wrong=len(wrong),
        total=total,
        right="".join(_card(i) for i in right),
        wrong="".join(_card(i) for i in wrong),
        attention=_attention_html(strips),
        explain=_explain_html(strip, method, attended),
    )
    atomic_write_bytes(path, page.encode("utf-8"))
