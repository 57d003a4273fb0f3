"""Images in and out of the server: uploads decoded safely, crops, PNGs, example pictures.

An upload is bytes from a stranger. :func:`decode_upload` refuses, each with a
:class:`BadImage` carrying the HTTP status and a message naming what was wrong: an empty
body (400), bytes Pillow does not recognise as an image (415), a truncated or corrupt file
(400), and a picture with more pixels than the limit (413), the last read from the header
before any pixel is decoded (a decompression bomb never expands). A decoded upload becomes
an RGB :class:`PIL.Image.Image` the way :func:`captionlab.vision.images.load_image` reads
files (EXIF orientation, any mode to RGB, alpha over white); :func:`square` then takes the
centre square at the size a network wants.

The example pictures are the scikit-image photos the project uses elsewhere
(``skimage:NAME``) and freshly drawn shapes scenes (:mod:`captionlab.data.shapes`).
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from captionlab.errors import UserError
from captionlab.vision.images import _to_rgb, center_crop_resize

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
EXAMPLE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")

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


def decode_upload(data: bytes, max_pixels: int, field: str = "image") -> Image.Image:
    """Bytes of an uploaded picture -> an RGB image, its longer side at most 1024 px.

    Raises :class:`BadImage` (with the HTTP status) for an empty, unreadable, truncated or
    oversized upload; the message names ``field``.
    """
    if not data:
        raise BadImage(f"{field}: the uploaded file is empty (0 bytes)", 400)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises at its global limit; ours is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(
                        f"{field}: image of {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{max_pixels} pixels (--max-pixels)",
                        413,
                    )
                if w < 1 or h < 1:
                    raise BadImage(f"{field}: image has no pixels ({w}x{h})", 400)
                if img.format == "JPEG":  # decode at a reduced scale that still covers 1024
                    img.draft("RGB", (_KEEP_SIDE, _KEEP_SIDE))
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
                if max(img.size) > _KEEP_SIDE:
                    img = img.copy()
                    img.thumbnail((_KEEP_SIDE, _KEEP_SIDE), Image.Resampling.BILINEAR)
                return img.copy() if img.mode == "RGB" else img.convert("RGB")
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage(
            f"{field}: not an image Pillow can read ({_describe(data)}); send a PNG, JPEG, "
            "GIF, BMP, TIFF or WebP file",
            415,
        ) from None
    except Image.DecompressionBombError as exc:
        raise BadImage(
            f"{field}: image over the limit of {max_pixels} pixels (--max-pixels), refused "
            f"as a decompression bomb ({exc})",
            413,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncated or corrupt streams with any of these.
        raise BadImage(f"{field}: corrupt or truncated image ({exc})", 400) from None


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
    if name not in EXAMPLE_PHOTOS:
        raise UserError(
            f"unknown example photo {name!r}; expected one of {', '.join(EXAMPLE_PHOTOS)}"
        )
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)


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
