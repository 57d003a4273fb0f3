"""Images in and out of the server: uploads decoded safely, crops, PNGs, example pictures.

An upload is bytes from a stranger. :func:`decode_upload` decodes it exactly as files are
read (:func:`captionlab.vision.images.open_rgb`: the pixel limit checked from the header
before any pixel is decoded, EXIF orientation, any mode to RGB) and refuses, each with a
:class:`BadImage` carrying the HTTP status and a message naming what was wrong: an empty
body (400), bytes Pillow does not recognise as an image (415), a truncated or corrupt file
(400), and a picture with more pixels than the limit (413). :func:`square` then takes the
centre square at the size a network wants.

The example pictures are the scikit-image photos the project uses elsewhere
(``skimage:NAME``) and freshly drawn shapes scenes (:mod:`captionlab.data.shapes`).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from captionlab.errors import UserError
from captionlab.vision.images import BUNDLED_PHOTOS, ImageError, center_crop_resize, open_rgb

__all__ = [
    "EXAMPLE_PHOTOS",
    "BadImage",
    "decode_upload",
    "example_photo",
    "png_bytes",
    "png_data_url",
    "shapes_scene",
    "square",
]

#: Photos bundled with scikit-image (CC0 / public domain), as ``captionlab classify skimage:NAME``.
EXAMPLE_PHOTOS = BUNDLED_PHOTOS

# Decoded pictures are kept at most this large (longer side): enough for every network here
# (224 px) and for showing the crop, small enough to keep memory per request bounded.
_KEEP_SIDE = 1024


class BadImage(UserError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _describe(data: bytes) -> str:
    head = data[:12]
    shown = head.decode("ascii", "replace") if head.isascii() else head.hex(" ")
    return f"{len(data)} bytes starting {shown!r}"


#: The HTTP status of each kind of unusable image.
_STATUS = {"empty": 400, "not_image": 415, "too_large": 413, "corrupt": 400, "missing": 400}


def decode_upload(data: bytes, max_pixels: int, field: str = "image") -> Image.Image:
    """Bytes of an uploaded picture -> an RGB image, its longer side at most 1024 px.

    Raises :class:`BadImage` (with the HTTP status) for an empty, unreadable, truncated or
    oversized upload; the message names ``field``.
    """
    if not data:
        raise BadImage(f"{field}: the uploaded file is empty (0 bytes)", 400)
    try:
        img = open_rgb(io.BytesIO(data), name=field, max_pixels=max_pixels, draft=_KEEP_SIDE)
    except ImageError as exc:
        message = str(exc)
        if exc.kind == "not_image":
            message += f" ({_describe(data)}); send a PNG, JPEG, GIF, BMP, TIFF or WebP file"
        elif exc.kind == "too_large":
            message += " (--max-pixels)"
        raise BadImage(message, _STATUS[exc.kind]) from None
    if max(img.size) > _KEEP_SIDE:
        img.thumbnail((_KEEP_SIDE, _KEEP_SIDE), Image.Resampling.BILINEAR)
    return img


def square(img: Image.Image, size: int) -> np.ndarray:
    """The centre square of ``img`` resized to ``size`` -> uint8 (size, size, 3), writable."""
    return np.array(center_crop_resize(img, size), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, 3) or float (H, W, 3) in [0, 1] -> PNG file bytes."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def png_data_url(pixels: np.ndarray) -> str:
    """An image as a ``data:image/png;base64,...`` URL, for JSON answers the page shows."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def example_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo -> uint8 (H, W, 3) at its own size."""
    from captionlab.vision.images import bundled_photo

    return bundled_photo(name)


def shapes_scene(seed: int, size: int = 224) -> tuple[np.ndarray, dict, list[str]]:
    """A random shapes scene -> (uint8 (size, size, 3), the scene's truth, five references).

    The truth is ``{"objects": [{"size", "colour", "shape"}], "relations": [...]}`` with
    relations as ``"large red circle left of small blue square"`` phrases.
    """
    from captionlab.data.shapes import make_captions, render_scene, sample_scene

    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, size)
    pixels = np.asarray(render_scene(scene, size, rng), dtype=np.uint8)
    references = make_captions(scene, rng)
    objects = [{k: o[k] for k in ("size", "colour", "shape")} for o in scene["objects"]]

    def phrase(i: int) -> str:
        o = objects[i]
        return f"{o['size']} {o['colour']} {o['shape']}"

    relations = [
        f"{phrase(r['subject'])} {r['relation']} {phrase(r['object'])}" for r in scene["relations"]
    ]
    return np.array(pixels), {"objects": objects, "relations": relations}, references
