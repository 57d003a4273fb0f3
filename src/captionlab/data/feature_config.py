"""What decides which numbers come out of the CNN for an image: the extractor's config.

Shapes: ``C = 1280`` channels of EfficientNet-Lite0's last feature map, ``h = w`` its side,
``R`` the pooled size, ``D`` the stored size (after PCA when the config asks for it). The
attention grid: ``L = s * s`` cells (``s`` cells per side), ``Rg`` values per cell from the
grid taps, ``Dg`` stored per cell (after the per-cell PCA).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields

from captionlab.bounds import check_fields, integer
from captionlab.errors import DataError, UserError

__all__ = ["CHANNELS", "GRID_TAPS", "FeatureExtractorConfig", "parse_grid_taps", "parse_pool"]

CHANNELS = 1280  # EfficientNet-Lite0's head width
_POOL_PART = re.compile(r"^(avg|max|(\d+)x(\d+))$")

#: The taps a grid can be built from, with (channels, stride): the output of MBConv block
#: ``blockN`` of EfficientNet-Lite0 and ``grid``, its last feature map (the head, after
#: ReLU6). Kept here, beside the store, because this layer does not import the network;
#: ``tests/vision`` checks the table against the network's real outputs.
_BLOCKS = ((16, 2), (24, 4), (24, 4), (40, 8), (40, 8), (80, 16), (80, 16), (80, 16),
           (112, 16), (112, 16), (112, 16), (192, 32), (192, 32), (192, 32), (192, 32),
           (320, 32))  # fmt: skip
GRID_TAPS: dict[str, tuple[int, int]] = {
    **{f"block{i}": cs for i, cs in enumerate(_BLOCKS)},
    "grid": (CHANNELS, 32),
}


def parse_grid_taps(taps: str) -> list[str]:
    """``"block10+grid"`` -> ``["block10", "grid"]``: the taps whose cells are concatenated,
    in order (see :data:`GRID_TAPS`; ``grid`` is the last feature map)."""
    if not isinstance(taps, str) or not taps.strip():
        raise UserError(f"grid_taps must be like 'block10+grid', got {taps!r}")
    names = [t for t in taps.lower().replace(" ", "").split("+")]
    bad = [t for t in names if t not in GRID_TAPS]
    if bad:
        raise UserError(
            f"grid tap {bad[0]!r} not understood: expected 'grid' (the last feature map) or "
            f"'block0'..'block15', joined by '+' (e.g. 'block10+grid'), got {taps!r}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"grid_taps {taps!r} names a tap twice")
    return names


def parse_pool(pool: str) -> list[tuple[str, int]]:
    """``"avg+2x2"`` -> ``[("avg", 1), ("grid", 2)]``: the pooled parts, in output order.

    Parts, joined by ``+``: ``avg`` (global average, C), ``max`` (global max, C), ``KxK``
    (average over a KxK grid of cells, ``K*K*C``; cells in row-major order, top-left first,
    each cell's C channels contiguous).
    """
    if not isinstance(pool, str) or not pool.strip():
        raise UserError(f"pool must be like 'avg', 'max' or 'avg+2x2', got {pool!r}")
    parts = []
    for token in pool.lower().replace(" ", "").split("+"):
        m = _POOL_PART.match(token)
        if not m:
            raise UserError(
                f"pool part {token!r} not understood: expected 'avg', 'max' or 'KxK' "
                f"(e.g. 'avg+2x2'), got pool={pool!r}"
            )
        if m.group(2) is not None:
            k, k2 = int(m.group(2)), int(m.group(3))
            if k != k2 or not 1 <= k <= 8:
                raise UserError(f"pool part {token!r}: expected a square KxK with 1 <= K <= 8")
            parts.append(("grid", k))
        else:
            parts.append((token, 1))
    if len(set(parts)) != len(parts):
        raise UserError(f"pool {pool!r} names a part twice")
    return parts


@dataclass(frozen=True)
class FeatureExtractorConfig:
    """Everything that decides which numbers come out for an image (stored in the file).

    * ``image_size``: side in pixels the image is resized (shorter side) and centre-cropped to
      (224 is what the backbone was trained on; 160 is as good for the shapes scenes).
    * ``pool``: how the last feature map becomes a vector, see :func:`parse_pool`.
    * ``grid``: also store a grid of cell vectors (L, Dg) per image for attention models,
      float16, from the same forward pass as the pooled features:
    * ``grid_taps``: the taps concatenated per cell (see :func:`parse_grid_taps`); each tap is
      average-pooled (finer taps) or nearest-upsampled (coarser) to ``s x s`` cells;
    * ``grid_cells``: ``s``, cells per side (None: the last feature map's side, ceil(S / 32));
    * ``grid_pca_dim``: one PCA applied to every cell vector, fitted on cells of the
      ``pca_fit_split`` images and stored with the features (None: raw cells).
    * ``pca_dim``: project the pooled features to this many dimensions (None: no PCA).
    * ``pca_fit_split``: fit the PCAs on this split's images (all images if it has none).
    * ``fold_bn`` / ``channels_last``: speed settings; they change features only at ~1e-5.

    The grid defaults are the per-cell probe's recommendation (docs/feature_probe.md, table
    4): at 160 px, ``block10`` (stride 16) pooled 2x2 to the head's 5x5 cells, concatenated
    with the head (1,392 values per cell), PCA to 256.
    """

    backbone: str = "efficientnet-lite0"
    image_size: int = field(default=160, metadata={"bound": integer(32, 1024)})
    pool: str = "avg"
    grid: bool = False
    pca_dim: int | None = field(default=None, metadata={"bound": integer(1, none=True)})
    pca_fit_split: str | None = "train"
    fold_bn: bool = True
    channels_last: bool = True
    grid_taps: str = "block10+grid"
    grid_cells: int | None = None
    grid_pca_dim: int | None = 256

    def __post_init__(self) -> None:
        if self.backbone != "efficientnet-lite0":
            raise UserError(f"backbone must be 'efficientnet-lite0', got {self.backbone!r}")
        check_fields(self)
        parse_pool(self.pool)
        for name in ("grid", "fold_bn", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.pca_fit_split is not None and not isinstance(self.pca_fit_split, str):
            raise UserError(f"pca_fit_split must be a split name, got {self.pca_fit_split!r}")
        if self.pca_dim is not None and self.pca_dim > self.raw_dim:
            raise UserError(
                f"pca_dim must be None or an int in 1..{self.raw_dim} (the pooled size for "
                f"pool={self.pool!r}), got {self.pca_dim!r}"
            )
        parse_grid_taps(self.grid_taps)
        if self.grid_cells is not None and (
            not isinstance(self.grid_cells, int) or not 1 <= self.grid_cells <= 32
        ):
            raise UserError(f"grid_cells must be None or an int in 1..32, got {self.grid_cells!r}")
        if self.grid_pca_dim is not None and (
            not isinstance(self.grid_pca_dim, int)
            or not 1 <= self.grid_pca_dim <= self.grid_raw_dim
        ):
            raise UserError(
                f"grid_pca_dim must be None or an int in 1..{self.grid_raw_dim} (the cell size "
                f"for grid_taps={self.grid_taps!r}), got {self.grid_pca_dim!r}"
            )

    @property
    def pool_parts(self) -> list[tuple[str, int]]:
        return parse_pool(self.pool)

    @property
    def raw_dim(self) -> int:
        """R: the pooled feature size before PCA."""
        return CHANNELS * sum(k * k for _, k in parse_pool(self.pool))

    @property
    def feature_dim(self) -> int:
        """D: the stored feature size (after PCA when it is on)."""
        return self.pca_dim if self.pca_dim is not None else self.raw_dim

    @property
    def map_side(self) -> int:
        """h = w: the last feature map's side (five stride-2 'same' convs: ceil(S / 32))."""
        return math.ceil(self.image_size / 32)

    @property
    def grid_side(self) -> int:
        """s: cells per side of the stored grid."""
        return self.grid_cells if self.grid_cells is not None else self.map_side

    @property
    def grid_len(self) -> int:
        """L = s * s: cells of the stored grid (row-major, top-left first)."""
        return self.grid_side**2

    @property
    def grid_tap_list(self) -> list[str]:
        return parse_grid_taps(self.grid_taps)

    @property
    def grid_raw_dim(self) -> int:
        """Rg: values per cell before the per-cell PCA (the taps' channels)."""
        return sum(GRID_TAPS[t][0] for t in parse_grid_taps(self.grid_taps))

    @property
    def grid_dim(self) -> int:
        """Dg: values per stored cell."""
        return self.grid_pca_dim if self.grid_pca_dim is not None else self.grid_raw_dim

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FeatureExtractorConfig:
        if not isinstance(data, dict):
            raise DataError(f"{source}: config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(
                f"{source}: unknown config key(s) {unknown}; expected some of {sorted(known)}"
            )
        try:
            return cls(**data)
        except UserError as exc:
            raise DataError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> FeatureExtractorConfig:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{source}: config is not valid JSON ({exc})") from exc
        return cls.from_dict(data, source)
