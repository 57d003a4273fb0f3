"""Word-level explanations of captions: why did the captioner say "red"?

The gradient of one generated word's log-probability, through the captioner's own
hand-written backward pass to its input features, then through the feature extraction the
checkpoint stores (image size, pooling, PCA) and the pretrained CNN to the pixels, as a
vanilla-gradient, SmoothGrad or Integrated-Gradients map per word; for captioners over a
grid of cells also Grad-CAM at the captioner's input grid and Guided Grad-CAM; for every
captioner LayerCAM at a backbone block, or at several fused. For the attention captioner and
the Transformer every gradient can be taken with their attention weights held constant
(``Explainer(..., hold_attention=True)``; the Transformer's layer norms' scales too).

* :mod:`~captionlab.explain.pipeline` -- the torch side: :class:`FeaturePipeline` (pixels ->
  features, equal to :class:`captionlab.extract.FeatureExtractor`'s), the
  ``torch.autograd.Function`` around the NumPy captioner, :class:`CaptionScores`.
* :mod:`~captionlab.explain.words` -- :class:`Explainer` (decode, then a map per word, the
  word's attention for captioners that have it, the deletion metric), crop geometry.
* :mod:`~captionlab.explain.figure` -- the figure: the image, one panel per word.
* :mod:`~captionlab.explain.methods` -- the methods by name and which captioners each
  explains (torch-free, for the command line and the server).

The names above are importable from this package too; they are loaded on first use, so
``import captionlab.explain.methods`` stays cheap (torch is imported only when a map is).

This package sits beside :mod:`captionlab.extract`, above :mod:`captionlab.captioning` and
:mod:`captionlab.vision`, which know nothing of each other.
"""

from __future__ import annotations

from captionlab._lazy import lazy_exports

_EXPORTS = {
    "CaptionScores": "pipeline",
    "CaptionerLogProbs": "pipeline",
    "FeaturePipeline": "pipeline",
    "StepScores": "pipeline",
    "feature_layout": "pipeline",
    "word_cell_relevance": "pipeline",
    "word_feature_grads": "pipeline",
    "word_logprobs": "pipeline",
    "CropGeometry": "words",
    "Explainer": "words",
    "Explanation": "words",
    "WordMap": "words",
    "attention_to_pixels": "words",
    "cell_peak": "words",
    "fuse_maps": "words",
    "guided_gradcam": "words",
    "layer_cam_maps": "words",
    "map_peak": "words",
    "GRID_METHODS": "methods",
    "LAYERCAM_TAP": "methods",
    "LAYER_METHODS": "methods",
    "METHODS": "methods",
    "PIXEL_METHODS": "methods",
    "can_hold_attention": "methods",
    "check_method": "methods",
    "methods_for": "methods",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
