"""`captionlab data shapes | info | vocab` through the command's frame."""

import json

from captionlab import cli
from captionlab.data import Vocabulary


def test_shapes_info_vocab_json(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["data", "shapes", "--out", str(out), "--train", "4", "--val", "1", "--test", "1",
            "--size", "48", "--no-progress", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] == {"images": 4, "captions": 20}
    assert (out / "scenes.json").is_file()

    assert cli.main(["data", "info", str(out)]) == 0
    assert "train       4 images       20 captions" in capsys.readouterr().out

    vocab_file = tmp_path / "vocab.json"
    assert cli.main(["data", "vocab", str(out), "--out", str(vocab_file), "--json"]) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert len(Vocabulary.load(vocab_file)) == words > 4


def test_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["data", "info", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json: file not found" in err and err.count("\n") == 1
    assert cli.main(["data"]) == 2
    assert "choose an action" in capsys.readouterr().err
    assert cli.main(["data", "shapes", "--out", str(tmp_path), "--size", "4"]) == 2
    assert "--size must be an integer in 32..1024, got 4" in capsys.readouterr().err


def test_info_on_cs231n_folder(tmp_path, capsys):
    from test_formats import _cs231n

    base = tmp_path / "coco_captioning"
    vocab = _cs231n(base)
    assert cli.main(["data", "info", str(base), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "cs231n" and summary["words"] == len(vocab)
    assert summary["arrays"]["train_captions"] == [6, 17]
    assert summary["arrays"]["val_features"] == [2, 512]
