"""`captionlab demo` end to end at tiny settings: every promised file, and the cache."""

from __future__ import annotations

import json

from PIL import Image

from captionlab import cli

TINY = ["--quick", "--n-train", "30", "--n-val", "10", "--n-test", "12", "--image-size", "64",
        "--feature-size", "64", "--epochs", "1", "--hidden-dim", "16", "--wordvec-dim", "8",
        "--no-progress", "--no-meteor"]  # fmt: skip


def test_demo_writes_gallery_metrics_and_is_cached(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    rows = {f"{m} {d}" for m in ("lstm", "rnn", "attention") for d in ("greedy", "beam3")}
    for row in rows:
        assert row in printed
    for name in ("gallery.html", "gallery.png", "loss.png", "metrics.json", "captions.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "gallery.png") as im:
        assert im.width > 400 and im.height > 300
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == rows
    for row in metrics["metrics"].values():
        assert 0.0 <= row["BLEU-4"] <= 1.0
        assert row["object_f1"] is None or 0.0 <= row["object_f1"] <= 1.0
    gallery = metrics["gallery"]
    assert gallery["images"] == 12
    assert gallery["model"] == "attention"  # the gallery shows the attention captioner
    html = (out / "gallery.html").read_text()
    shown = html.count('<figure class="ok"') + html.count('<figure class="bad"')
    assert shown == min(6, gallery["fully_correct"]) + min(6, 12 - gallery["fully_correct"])
    # attention strips: one of 1, 2 and 3 objects each (+ a second 3-object scene if any)
    assert 1 <= len(gallery["attention"]) <= 4
    assert html.count('<figure class="strip"') == len(gallery["attention"])
    for png in gallery["attention"]:
        with Image.open(png) as im:
            assert im.width > 300
    for img in (out / "gallery").iterdir():
        assert f'gallery/{img.name}"' in html
    explained = gallery["explained"]  # the first right and the first wrong caption shown
    assert len(explained) == min(1, gallery["fully_correct"]) + min(
        1, 12 - gallery["fully_correct"]
    )
    assert all(
        f.endswith(".png") and (out / "gallery" / f.split("/")[-1]).is_file() for f in explained
    )
    for f in explained:  # the attention captioner explained: a second row, its attention
        with Image.open(f) as im:
            assert im.height > 330  # one row of panels is about 215 px high at the strip's dpi
    assert ("captioner's attention was" in html) is bool(explained)

    # A second run reuses data, features and both trained models.
    assert cli.main(["demo", "--out", str(out), *TINY]) == 0
    again = capsys.readouterr().out
    assert again.count("already trained with these settings") == 3


def test_demo_rejects_a_bad_setting(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), *TINY, "--models", "lstm,cnn"]) == 2
    err = capsys.readouterr().err
    assert "cnn" in err and "transformer" in err and "Traceback" not in err  # names the choices
