"""Which runs the server finds in the --models folders, and by which names."""

from __future__ import annotations

import pytest
from serve_helpers import IMAGE_SIZE, write_runs

from captionlab.errors import UserError
from captionlab.serve.models import ModelRegistry, UnknownModelError, find_checkpoints


def test_run_folders_loose_checkpoints_and_repeated_names(tmp_path):
    a = write_runs(tmp_path / "a")
    b = write_runs(tmp_path / "b")
    (b / "lstm" / "best.npz").rename(b / "mine.npz")  # a loose checkpoint
    (b / "lstm" / "last.npz").write_bytes(b"")  # a run still training: no best.npz
    (b / ".hidden").mkdir()
    (b / ".hidden" / "best.npz").write_bytes(b"")
    found = find_checkpoints([a, b, a / "rnn"])
    assert [name for name, _ in found] == [
        "broken", "lstm", "rnn",  # a/
        "b/broken", "mine", "b/rnn",  # b/: repeated names get the folder's name
        "rnn/rnn",  # a/rnn itself is a run folder
    ]  # fmt: skip
    assert dict(found)["mine"] == b / "mine.npz"
    assert dict(found)["rnn/rnn"] == a / "rnn" / "best.npz"


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder of trained runs"):
        find_checkpoints([tmp_path / "nope"])


def test_registry_loads_good_and_lists_bad(registry):
    assert registry.names == ["lstm", "rnn"] and len(registry) == 2
    assert len(registry.skipped) == 1 and "not a .npz checkpoint" in registry.skipped[0]
    assert registry.get("lstm").image_size == IMAGE_SIZE
    with pytest.raises(UnknownModelError, match="unknown model 'gru'; this server has: lstm"):
        registry.get("gru")
    empty = ModelRegistry([])
    with pytest.raises(UnknownModelError, match="--models DIR"):
        empty.get("lstm")


def test_caption_checks_its_input(registry):
    import numpy as np

    good = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with pytest.raises(UserError, match=r"beam must be in 1\.\.10"):
        registry.caption("lstm", good, beam=11)
    with pytest.raises(ValueError, match="uint8"):
        registry.caption("lstm", good.astype(np.float32))
    captions = registry.caption("rnn", good, beam=1)
    assert [c.decoding for c in captions] == ["greedy"] and captions[0].attention is None
