"""Word-level explanations of captions: why did the captioner say "red"?

The gradient of one generated word's log-probability, through the captioner's own
hand-written backward pass to its input features, then through the feature extraction the
checkpoint stores (image size, pooling, PCA) and the pretrained CNN to the pixels, as a
vanilla-gradient, SmoothGrad or Integrated-Gradients map per word; for captioners over a
grid of cells also Grad-CAM at the captioner's input grid and Guided Grad-CAM.

* :mod:`~captionlab.explain.pipeline` -- the torch side: :class:`FeaturePipeline` (pixels ->
  features, equal to :class:`captionlab.extract.FeatureExtractor`'s), the
  ``torch.autograd.Function`` around the NumPy captioner, :class:`CaptionScores`.
* :mod:`~captionlab.explain.words` -- :class:`Explainer` (decode, then a map per word, the
  word's attention for captioners that have it, the deletion metric), crop geometry.
* :mod:`~captionlab.explain.figure` -- the figure: the image, one panel per word.

This package sits beside :mod:`captionlab.extract`, above :mod:`captionlab.captioning` and
:mod:`captionlab.vision`, which know nothing of each other.
"""

from captionlab.explain.pipeline import (
    CaptionerLogProbs,
    CaptionScores,
    FeaturePipeline,
    StepScores,
    feature_layout,
    word_cell_relevance,
    word_feature_grads,
    word_logprobs,
)
from captionlab.explain.words import (
    CropGeometry,
    Explainer,
    Explanation,
    WordMap,
    attention_to_pixels,
    cell_peak,
    guided_gradcam,
    map_peak,
)

__all__ = [
    "CaptionScores",
    "CaptionerLogProbs",
    "CropGeometry",
    "Explainer",
    "Explanation",
    "FeaturePipeline",
    "StepScores",
    "WordMap",
    "attention_to_pixels",
    "cell_peak",
    "feature_layout",
    "guided_gradcam",
    "map_peak",
    "word_cell_relevance",
    "word_feature_grads",
    "word_logprobs",
]
