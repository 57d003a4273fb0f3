"""Loading photos for the backbone: any file Pillow reads -> uint8 RGB (size, size, 3).

``load_image`` applies, in order: a cap on decoded pixels (decompression bombs), the EXIF
orientation, conversion of any mode to RGB (grayscale, palette, RGBA/LA over white, CMYK,
16-bit and float images rescaled rather than clipped), then a resize of the shorter side to
``size`` and a centre crop, done as one resampling of the centred square. Every failure
(missing, truncated, not an image, too large) is a :class:`UserError` naming the file.

Nothing here changes Pillow's global settings (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from captionlab.errors import UserError

__all__ = [
    "BUNDLED_PHOTOS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "bundled_photo",
    "center_crop_resize",
    "image_stem",
    "list_image_files",
    "load_image",
    "load_images",
    "open_rgb",
    "read_image",
]

# 64 megapixels (8000 x 8000): larger than any camera photo people caption, far below what
# exhausts memory. A bomb is refused from its header, before any pixel is decoded.
MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

_RESAMPLE = Image.Resampling.BILINEAR


def list_image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by suffix, case-insensitive), sorted by relative path.

    Hidden files and folders (starting with ".") are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: expected a folder of images, got no such folder")
    pattern = "**/*" if recursive else "*"
    found = []
    for p in root.glob(pattern):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited over white; high bit depths are rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            top = 65535.0
        else:
            top = 255.0
        a = np.clip(np.nan_to_num(a) / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre ``size x size``, in one step.

    The centred square of side ``min(W, H)`` is resampled (bilinear, antialiased) straight to
    ``size x size``, which equals resize-then-crop up to sub-pixel placement.
    """
    w, h = img.size
    side = min(w, h)
    left = (w - side) / 2
    top = (h - side) / 2
    box = (left, top, left + side, top + side)
    if side == size and left == int(left) and top == int(top):
        return img.crop(tuple(int(v) for v in box))
    return img.resize((size, size), _RESAMPLE, box=box, reducing_gap=3.0)


class ImageError(UserError):
    """An image that cannot be used; ``kind`` says why: ``"missing"``, ``"empty"``,
    ``"not_image"``, ``"too_large"`` (over the pixel limit: a decompression bomb or a huge
    scan) or ``"corrupt"`` (truncated or damaged)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def open_rgb(
    source: str | Path | BinaryIO,
    *,
    name: str,
    max_pixels: int = MAX_PIXELS,
    draft: int | None = None,
) -> Image.Image:
    """Decode an image file or stream -> an RGB :class:`PIL.Image.Image`, safely.

    The pixel count is checked from the header before any pixel is decoded (a decompression
    bomb never expands); EXIF orientation is applied and any mode converted to RGB (alpha
    over white, high bit depths rescaled). ``draft``: a JPEG may be decoded at a reduced
    scale that still covers this many pixels (much faster). Every failure is an
    :class:`ImageError` whose message starts with ``name`` (a path, or a form field).
    """
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises at its global limit; ours is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{name}: image of {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{max_pixels} pixels (a decompression bomb or a huge scan)",
                        "too_large",
                    )
                if w < 1 or h < 1:
                    raise ImageError(f"{name}: image has no pixels ({w}x{h})", "corrupt")
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", (draft, draft))
                img.load()
                img = _to_rgb(ImageOps.exif_transpose(img))
                return img.copy() if img.mode == "RGB" else img.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found", "missing") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: expected an image file, got a folder", "missing") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read", "not_image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})", "too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports a truncated or corrupt stream with any of these.
        raise ImageError(f"{name}: corrupt or truncated image ({exc})", "corrupt") from None


def load_image(path: str | Path, size: int = 224, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image file -> uint8 RGB array (size, size, 3).

    Decoded by :func:`open_rgb` (pixel limit from the header, EXIF orientation, any mode to
    RGB), then the shorter side resized to ``size`` and centre-cropped. Raises
    :class:`UserError` naming the file for a missing, unreadable, truncated, non-image or
    oversized file.
    """
    path = Path(path)
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    img = open_rgb(path, name=str(path), max_pixels=max_pixels, draft=size)
    out = np.array(center_crop_resize(img, size), dtype=np.uint8)  # writable (torch wants one)
    if out.shape != (size, size, 3):  # pragma: no cover - guards the conversion above
        raise RuntimeError(f"{path}: expected ({size}, {size}, 3) pixels, got {out.shape}")
    return out


def load_images(paths: Iterable[str | Path], size: int = 224) -> np.ndarray:
    """Several files -> uint8 (N, size, size, 3); the first bad file raises UserError."""
    arrays = [load_image(p, size) for p in paths]
    if not arrays:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack(arrays)


BUNDLED_PREFIX = "skimage:"
#: Photos bundled with scikit-image (CC0 or public domain), named as ``skimage:NAME``.
BUNDLED_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def bundled_photo(name: str) -> np.ndarray:
    """A photo bundled with scikit-image (one of :data:`BUNDLED_PHOTOS`) -> uint8 (H, W, 3)
    at its own size."""
    if name not in BUNDLED_PHOTOS:
        raise UserError(
            f"{BUNDLED_PREFIX}{name}: unknown bundled photo; expected one of "
            f"{', '.join(BUNDLED_PHOTOS)}"
        )
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)


def read_image(spec: str, size: int = 224) -> np.ndarray:
    """An image file, or ``skimage:NAME`` for a bundled photo -> a writable uint8
    (size, size, 3) array (shorter side resized, centre crop)."""
    if not spec.startswith(BUNDLED_PREFIX):
        return load_image(spec, size=size)
    img = Image.fromarray(bundled_photo(spec[len(BUNDLED_PREFIX) :]))
    return np.array(center_crop_resize(img, size), dtype=np.uint8)


def image_stem(spec: str) -> str:
    """A short name for an image argument (``skimage:chelsea`` -> ``chelsea``)."""
    return spec[len(BUNDLED_PREFIX) :] if spec.startswith(BUNDLED_PREFIX) else Path(spec).stem
