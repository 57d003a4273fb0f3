"""``captionlab features`` on the command line."""

import json

import numpy as np
import pytest
from PIL import Image

from captionlab import cli
from captionlab.data.features import FeatureStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_features_command(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_text("no pixels")
    out = tmp_path / "f.h5"
    argv = ["features", str(folder), "--out", str(out), "--size", "64", "--pool", "avg+2x2"]
    argv += ["--threads", "1", "--workers", "1"]
    assert cli.main([*argv, "--json", "--batch-size", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stored"] == 3 and summary["feature_dim"] == 6400
    assert summary["failed"][0]["image_id"] == "broken.jpg"
    assert FeatureStore.open(out).config.pool == "avg+2x2"
    assert cli.main(argv) == 0
    assert "up to date" in capsys.readouterr().out


def test_features_command_user_errors(tmp_path, capsys):
    assert cli.main(["features", str(tmp_path / "none"), "--out", str(tmp_path / "f.h5")]) == 2
    assert "expected a dataset file or a folder" in capsys.readouterr().err
    assert cli.main(["features", str(tmp_path), "--out", "f.h5", "--pool", "mean"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captionlab features: error: pool part 'mean'") and err.count("\n") == 1
