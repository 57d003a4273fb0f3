"""EfficientNet-Lite0: architecture, ImageNet weights, speed variants, pre/deprocessing."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from captionlab.errors import UserError
from captionlab.vision import backbone as bb
from captionlab.vision.imagenet import CLASS_NAMES, decode_predictions
from captionlab.vision.images import load_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return bb.load_backbone()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """chelsea and coffee saved as PNG files and loaded like any user photo: (2, 224, 224, 3)."""
    root = tmp_path_factory.mktemp("photos")
    arrays = []
    for name in ("chelsea", "coffee"):
        path = root / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(path)
        arrays.append(load_image(path, 224))
    return np.stack(arrays)


def test_weights_load_strictly_and_model_is_eval(model):
    state = torch.load(bb.weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model._fc.weight, state["_fc.weight"])
    assert torch.equal(
        model._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"]
    )
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.65e6, rel=0.01)


def test_top1_on_real_photos(model, photos):
    with torch.inference_mode():
        logits = model(bb.preprocess(photos))
    assert logits.shape == (2, 1000)
    top = logits.argmax(1).tolist()
    assert [CLASS_NAMES[i] for i in top] == ["Egyptian cat", "espresso"]
    preds = decode_predictions(logits.numpy(), k=3)
    assert preds[1][0][:2] == (967, "espresso") and preds[1][0][2] > 0.5


def test_fold_bn_and_channels_last_keep_logits(model, photos):
    x = bb.preprocess(photos)
    fast = bb.load_backbone(fold_bn=True, channels_last=True)
    assert fast.bn_folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        ref = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, got, atol=1e-4, rtol=0)
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()


@pytest.mark.parametrize(("size", "side"), [(224, 7), (160, 5), (128, 4), (100, 4)])
def test_taps_shapes(model, size, side):
    x = torch.zeros(2, 3, size, size)
    with torch.inference_mode():
        out = model.taps(x, ["stem", "block0", "block15", "grid", "pooled", "logits"])
    assert out["stem"].shape == (2, 32, (size + 1) // 2, (size + 1) // 2)
    assert out["block0"].shape[1] == 16 and out["block15"].shape[1] == 320
    assert out["grid"].shape == (2, 1280, side, side)
    assert out["pooled"].shape == (2, 1280)
    assert torch.allclose(out["pooled"], out["grid"].mean(dim=(2, 3)))
    assert torch.allclose(out["logits"], model(x), atol=1e-5)
    assert out["grid"].min() >= 0 and out["grid"].max() <= 6  # after ReLU6


def test_grid_tap_table_matches_the_network(model):
    """captionlab.data keeps the taps' channels and strides without importing the network."""
    from captionlab.data.feature_config import GRID_TAPS

    size = 256
    with torch.inference_mode():
        out = model.taps(torch.zeros(1, 3, size, size), list(GRID_TAPS))
    for name, (channels, stride) in GRID_TAPS.items():
        assert out[name].shape[1:] == (channels, size // stride, size // stride), name


def test_features_stop_early_and_reject_bad_input(model):
    x = torch.zeros(1, 3, 64, 64)
    assert set(model.taps(x, ["block3"])) == {"block3"}
    assert model.features(x, "pooled").shape == (1, 1280)
    with pytest.raises(ValueError, match="unknown tap"):
        model.features(x, "block99")
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        model(torch.zeros(1, 4, 64, 64))


def test_input_gradients_flow(model):
    x = bb.preprocess(np.full((1, 64, 64, 3), 100, np.uint8)).requires_grad_(True)
    model(x)[0, 285].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 3, 2, (0, 1)),
        (225, 3, 2, (1, 1)),
        (28, 5, 2, (1, 2)),
        (14, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding(size, kernel, stride, pads):
    assert bb.SameConv2d._pads(size, kernel, stride) == pads
    conv = bb.SameConv2d(1, 1, kernel, stride)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // stride)


def test_preprocess_deprocess_roundtrip():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 9, 3), dtype=np.uint8)
    x = bb.preprocess(images)
    assert x.shape == (3, 3, 8, 9) and x.dtype == torch.float32
    assert x[0, 1, 2, 3].item() == pytest.approx((images[0, 2, 3, 1] - 127) / 128)
    np.testing.assert_array_equal(bb.deprocess(x), images)
    assert bb.preprocess(images[0]).shape == (1, 3, 8, 9)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "array is not writable" warning from torch
        torch.testing.assert_close(bb.preprocess(images), x)
    extremes = bb.preprocess(np.array([[[[0, 255, 0]]]], np.uint8))
    assert (extremes.min().item(), extremes.max().item()) == bb.INPUT_RANGE
    assert bb.deprocess(torch.full((1, 3, 2, 2), 50.0)).max() == 255


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 8, 8), np.uint8), np.zeros((1, 8, 8, 4), np.uint8), np.zeros((8, 8, 3))]
)
def test_preprocess_rejects_bad_arrays(bad):
    with pytest.raises(ValueError, match="images must"):
        bb.preprocess(bad)


def test_device_handling():
    assert bb.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="device"):
        bb.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            bb.load_backbone(device="cuda")


def test_bad_weights_file_is_user_error(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(UserError, match=r"w\.pth"):
        bb.load_backbone(weights=bad)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="does not match"):
        bb.load_backbone(weights=tmp_path / "other.pth")
