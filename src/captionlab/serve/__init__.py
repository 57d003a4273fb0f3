"""captionlab.serve: a local web page and JSON API over the trained captioners and the CNN.

``captionlab serve`` starts it; :func:`create_app` builds the ASGI app for any ASGI server
or test client. Modules:

* :mod:`~captionlab.serve.app`     -- the app: routes, limits, JSON errors, the docs page
* :mod:`~captionlab.serve.models`  -- the captioners found at start-up: captions, per-word
  attention and word-by-word explanations (the only user of the captioning and explain
  libraries here)
* :mod:`~captionlab.serve.cnn`     -- classes, saliency, fooling and class visualization
* :mod:`~captionlab.serve.imaging` -- uploads decoded safely, PNG answers, example pictures
* :mod:`~captionlab.serve.work`    -- the one work queue, and jobs with progress
* ``static/``                      -- the page (HTML, CSS, JavaScript; nothing external)

Importing this package loads FastAPI but no network weights.
"""

from captionlab.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
