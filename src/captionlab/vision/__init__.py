"""captionlab.vision: the pretrained CNN, image loading, and CNN visualization.

* :mod:`captionlab.vision.backbone` -- ``EfficientNetLite0``, ``load_backbone``,
  ``preprocess`` / ``deprocess`` (``(pixel - 127) / 128``), ``INPUT_RANGE``.
* :mod:`captionlab.vision.images`   -- ``load_image(path, size)``: any photo -> uint8 RGB.
* :mod:`captionlab.vision.imagenet` -- ``CLASS_NAMES``, ``resolve_class``, ``decode_predictions``.

The names above are importable from this package too; they are loaded on first use, so
``import captionlab.vision`` stays cheap (torch is imported only when the backbone is).
"""

from __future__ import annotations

from captionlab._lazy import lazy_exports

_EXPORTS = {
    "EfficientNetLite0": "backbone",
    "INPUT_RANGE": "backbone",
    "FEATURE_DIM": "backbone",
    "load_backbone": "backbone",
    "preprocess": "backbone",
    "deprocess": "backbone",
    "resolve_device": "backbone",
    "load_image": "images",
    "load_images": "images",
    "list_image_files": "images",
    "CLASS_NAMES": "imagenet",
    "resolve_class": "imagenet",
    "decode_predictions": "imagenet",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
