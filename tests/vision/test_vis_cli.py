"""The classify / saliency / fool / dream commands on the real backbone, with small settings."""

import json

import numpy as np
import pytest
from PIL import Image

from captionlab import cli
from captionlab.cli.fool_cmd import parse_epsilon
from captionlab.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_json(argv, capsys):
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_png(path, min_side=200):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side


def test_classify_bundled_photo_and_file(tmp_path, capsys):
    import skimage.data

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo, quality=95)
    out = run_json(
        ["classify", "skimage:chelsea", str(photo), "--out", str(tmp_path / "c.png")], capsys
    )
    cat, coffee = out["results"]
    assert cat["top"][0]["name"] == "Egyptian cat"
    assert coffee["top"][0]["name"] == "espresso"
    assert len(cat["top"]) == 5
    probs = [c["prob"] for c in cat["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    assert_png(tmp_path / "c.png")


def test_saliency_command_writes_overlay(tmp_path, capsys):
    out = run_json(
        ["saliency", "skimage:coffee", "--target", "cup", "--out", str(tmp_path / "s.png")],
        capsys,
    )
    assert out["target"]["index"] == 968 and out["target"]["name"] == "cup"
    assert out["predicted"]["name"] == "espresso"
    assert out["methods"] == ["vanilla"]
    assert_png(tmp_path / "s.png")


def test_fool_command_pgd_within_budget(tmp_path, capsys):
    out = run_json(
        [
            "fool", "skimage:coffee", "--target", "goldfish", "--epsilon", "4/255",
            "--max-iter", "20", "--out", str(tmp_path / "f.png"),
        ],
        capsys,
    )  # fmt: skip
    assert out["attack"] == "pgd"
    assert out["linf"] <= 4 / 255 + 1e-6
    assert out["success"] and out["predicted_before"]["name"] == "espresso"
    assert_png(tmp_path / "f.png")


def test_dream_command_small(tmp_path, capsys):
    out = run_json(
        [
            "dream",
            "goldfish",
            "7",
            "--iterations",
            "2",
            "--size",
            "64",
            "--out",
            str(tmp_path / "d.png"),
        ],
        capsys,
    )
    assert [c["index"] for c in out["classes"]] == [1, 7]
    assert all(0 <= c["prob"] <= 1 for c in out["classes"])
    assert_png(tmp_path / "d.png", min_side=100)


def one_line_error(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    assert "not an image" in one_line_error(["classify", str(text)], capsys)
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    assert "cut.png" in one_line_error(["saliency", str(truncated)], capsys)
    assert "missing.jpg" in one_line_error(["classify", str(tmp_path / "missing.jpg")], capsys)
    err = one_line_error(["fool", str(good), "--target", "tigr cat"], capsys)
    assert "unknown ImageNet class 'tigr cat'" in err and "tiger cat" in err
    assert "did you mean" in one_line_error(["dream", "goldfsh"], capsys)
    assert "--epsilon" in one_line_error(
        ["fool", str(good), "--target", "1", "--epsilon", "8"], capsys
    )
    assert "skimage:lena" in one_line_error(["classify", "skimage:lena"], capsys)
    assert "device" in one_line_error(["classify", str(good), "--device", "tpu"], capsys)


def test_parse_epsilon():
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert parse_epsilon("0.5") == 0.5
    for bad in ("2", "-1/255", "x", "1/0"):
        with pytest.raises(UserError, match="--epsilon"):
            parse_epsilon(bad)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_one_line_error(capsys):
    assert "CUDA" in one_line_error(["saliency", "skimage:chelsea", "--device", "cuda"], capsys)
