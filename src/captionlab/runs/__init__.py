"""Runs: the wiring behind ``captionlab train | evaluate | caption`` and the demo.

It joins :mod:`captionlab.data` (datasets, vocabulary, feature store),
:mod:`captionlab.captioning` (models, solver, decoding, metrics) and, for new images,
:mod:`captionlab.extract`. One module per concern; import the one you need, so that using a
trained model does not load the training code:

* :mod:`~captionlab.runs.config`    -- ``TrainConfig``, the defaults of ``captionlab train``;
* :mod:`~captionlab.runs.train`     -- dataset + feature store -> a run folder;
* :mod:`~captionlab.runs.inference` -- a trained run: find its checkpoint, rebuild its feature
  extractor, caption features or image files;
* :mod:`~captionlab.runs.evaluate`  -- caption a dataset split and score it;
* :mod:`~captionlab.runs.report`    -- the printed metrics table.

A run folder holds::

    RUN/config.json   the TrainConfig and where data and features came from
    RUN/vocab.json    the vocabulary
    RUN/last.npz      checkpoint after the latest epoch (parameters, optimizer, RNG state)
    RUN/best.npz      checkpoint of the best epoch by the validation metric
    RUN/loss.png      loss curves, rewritten after every epoch
    RUN/log.json      one record per epoch

Every checkpoint carries, in its ``extra``, the feature-extractor config and the PCA basis,
so ``caption`` turns a new photo into exactly the features the model was trained on.
"""
