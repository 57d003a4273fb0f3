"""Which runs the server finds in the --models folders, and by which names."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import GRID_SIDE, IMAGE_SIZE, MODELS, write_runs, write_transformer_run

from captionlab.errors import UserError
from captionlab.explain.methods import METHODS
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
        "attention", "broken", "lstm", "rnn",  # a/
        "b/attention", "b/broken", "mine", "b/rnn",  # b/: repeated names get the folder's name
        "rnn/rnn",  # a/rnn itself is a run folder
    ]  # fmt: skip
    assert dict(found)["mine"] == b / "mine.npz"
    assert dict(found)["rnn/rnn"] == a / "rnn" / "best.npz"


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder of trained runs"):
        find_checkpoints([tmp_path / "nope"])


def test_registry_loads_good_and_lists_bad(registry):
    assert registry.names == MODELS and len(registry) == 3
    assert len(registry.skipped) == 1 and "not a .npz checkpoint" in registry.skipped[0]
    assert registry.get("lstm").image_size == IMAGE_SIZE
    with pytest.raises(
        UnknownModelError, match="unknown model 'gru'; this server has: attention, lstm"
    ):
        registry.get("gru")
    empty = ModelRegistry([])
    with pytest.raises(UnknownModelError, match="--models DIR"):
        empty.get("lstm")


def test_caption_and_explain_check_their_input(registry):
    good = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with pytest.raises(UserError, match=r"beam must be in 1\.\.10"):
        registry.caption("lstm", good, beam=11)
    with pytest.raises(ValueError, match="uint8"):
        registry.caption("lstm", good.astype(np.float32))
    captions = registry.caption("rnn", good, beam=1)
    assert [c.decoding for c in captions] == ["greedy"] and captions[0].attention is None
    captions = registry.caption("attention", good, beam=2)
    assert [c.decoding for c in captions] == ["greedy", "beam"]
    for c in captions:
        assert c.attention["grid"] == [GRID_SIDE, GRID_SIDE]
        assert len(c.attention["maps"]) == len(c.attention["images"]) == len(c.words)
    with pytest.raises(UserError, match="method must be one of vanilla, smoothgrad, ig, layercam, "
                       "gradcam, guided-gradcam, got 'occlusion'"):  # fmt: skip
        registry.explain("attention", good, "occlusion")
    for method in ("gradcam", "guided-gradcam"):  # the grid methods: only for a grid model
        refusal = rf"^method {method} needs a captioner over a grid of cells; model 'lstm' \(lstm\)"
        with pytest.raises(UserError, match=refusal + " reads one pooled feature vector"):
            registry.explain("lstm", good, method)
    with pytest.raises(UserError, match=r"samples must be in 1\.\.25, got 26"):
        registry.explain("attention", good, "smoothgrad", samples=26)
    with pytest.raises(ValueError, match="uint8"):
        registry.explain("attention", good[:32])


def test_a_transformer_over_a_grid_has_attention_and_is_explained(tmp_path):
    registry = ModelRegistry.discover([write_transformer_run(tmp_path)])
    (info,) = registry.describe()
    assert info["cell"] == "transformer" and info["hidden_dim"] == 8  # its width
    assert info["attention"] and info["grid"] == [GRID_SIDE, GRID_SIDE] and info["explain"]
    assert registry.explained() == "transformer"
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 90, np.uint8)
    (greedy,) = registry.caption("transformer", pixels, beam=1)
    assert len(greedy.attention["maps"]) == len(greedy.words)
    out = registry.explain("transformer", pixels, "vanilla")
    assert out["caption"] == greedy.text and out["grid"] == [GRID_SIDE, GRID_SIDE]
    assert all(w["attention"].startswith("data:image/png;base64,") for w in out["words"])
    assert info["explain_methods"] == list(METHODS)  # a grid model: the grid methods too
    assert info["hold_attention"] is True  # its attention and layer norms held
    held = registry.explain("transformer", pixels, "vanilla", hold_attention=True)
    assert held["caption"] == out["caption"] and held["hold_attention"] is True
    cam = registry.explain("transformer", pixels, "gradcam")
    assert cam["caption"] == greedy.text and len(cam["words"]) == len(greedy.words)
    centres = {int((i + 0.5) * IMAGE_SIZE / GRID_SIDE) for i in range(GRID_SIDE)}
    for w in cam["words"]:  # the centre of a cell, or None: no cell raises the word (on this
        assert w["peak"] is None or set(w["peak"]) <= centres  # flat grey image, maybe none)


def test_feature_gradient_support_is_read_from_the_loss():
    from captionlab.serve.models import _loads_feature_grad

    class Old:
        def loss(self, features, captions):
            return 0.0, {}

    assert not _loads_feature_grad(Old()) and not _loads_feature_grad(object())


def test_a_grid_model_whose_features_have_no_grid_is_skipped(tmp_path):
    import dataclasses

    from serve_helpers import tiny_attention_model

    from captionlab.captioning import save_checkpoint
    from captionlab.data.features import FeatureExtractorConfig

    pooled = FeatureExtractorConfig(image_size=IMAGE_SIZE)
    (tmp_path / "att").mkdir()
    save_checkpoint(tmp_path / "att" / "best.npz", tiny_attention_model(),
                    extra={"features": dataclasses.asdict(pooled)})  # fmt: skip
    registry = ModelRegistry.discover([tmp_path])
    assert registry.names == [] and "reads a grid" in registry.skipped[0]
