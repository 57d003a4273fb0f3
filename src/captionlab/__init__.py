"""captionlab: image captioning from scratch in NumPy, and CNN visualization.

Packages (lower layers never import higher ones):

* :mod:`captionlab.nn`         -- NumPy layers with hand-written backward passes.
* :mod:`captionlab.captioning` -- CaptioningRNN, solver, decoding, metrics, checkpoints.
* :mod:`captionlab.data`       -- vocabulary, caption formats, shapes benchmark, feature store.
* :mod:`captionlab.vision`     -- pretrained backbone, saliency, fooling images, class viz.
* :mod:`captionlab.cli`        -- the ``captionlab`` command.
"""

__version__ = "0.1.0"
