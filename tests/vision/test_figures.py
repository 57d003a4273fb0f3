"""Figures: they draw, save as PNG, and the overlay puts heat where the map is high."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from captionlab.vision import figures


def photo(seed=0, H=32):
    return np.random.default_rng(seed).integers(0, 256, (H, H, 3), dtype=np.uint8)


def test_overlay_is_hot_where_the_map_is_high():
    m = np.zeros((32, 32))
    m[:8, :8] = 1.0
    rgb = figures.overlay(np.full((32, 32, 3), 128, np.uint8), m)
    assert rgb.shape == (32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[:8, :8].mean() > 2 * rgb[16:, 16:].mean()


def test_normalize_map_clips_outliers_and_handles_flat_maps():
    m = np.ones((10, 10))
    m[0, 0] = 1000.0
    n = figures.normalize_map(m, percentile=90)
    assert n.min() == 0 and n.max() == 1 and n[0, 0] == 1
    assert np.all(figures.normalize_map(np.zeros((4, 4))) == 0)
    ramp = figures.normalize_map(np.arange(100.0).reshape(10, 10), percentile=100)
    assert ramp[0, 0] == 0 and ramp.flat[49] == 0 and ramp[9, 9] == 1  # below the median -> 0
    assert 0 < ramp.flat[75] < 1


def test_all_figures_draw_and_save(tmp_path):
    im, maps = (
        photo(),
        {"vanilla": np.random.default_rng(1).random((32, 32)), "ig": np.ones((32, 32))},
    )
    made = {
        "s": figures.saliency_figure(im, maps, label="cat", prob=0.5, title="t"),
        "f": figures.fooling_figure(
            im,
            photo(2),
            original_label="cat",
            original_prob=0.4,
            fooled_label="frog",
            fooled_prob=0.9,
        ),
        "c": figures.class_viz_figure([im, photo(3)], ["a", "b"], [0.9, 0.95], iterations=100),
        "k": figures.classify_figure([im], [[("cat", 0.7), ("dog", 0.2)]], titles=["x"]),
    }
    for name, fig in made.items():
        assert isinstance(fig, Figure)
        path = figures.save_figure(fig, tmp_path / "sub" / f"{name}.png")
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) > 100
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "c.png",
        "f.png",
        "k.png",
        "s.png",
    ]


def test_fooling_figure_titles_report_the_change():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 104
    fig = figures.fooling_figure(
        a, b, original_label="cat", original_prob=0.4, fooled_label="frog", fooled_prob=0.9
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert "cat  40.0%" in titles[0] and "frog  90.0%" in titles[1]
    assert "max change 4/255" in titles[2]


def test_bad_images_are_rejected_with_shapes():
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, 3\), got float64"):
        figures.saliency_figure(np.zeros((8, 8, 3)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="saliency must be"):
        figures.overlay(photo(), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="must match"):
        figures.class_viz_figure([photo()], ["a", "b"], [0.1, 0.2])
