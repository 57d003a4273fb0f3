"""The ASGI app: the page at ``/``, the JSON API under ``/api``, its docs at ``/docs``.

:func:`create_app` wires a :class:`~captionlab.serve.models.ModelRegistry` (the captioners
found at start-up), a :class:`~captionlab.serve.cnn.VisionEngine` (the pretrained CNN) and
one :class:`~captionlab.serve.work.WorkQueue` through which every piece of model work runs.

Requests never name a file: models are chosen by the names found at start-up, example
photos by a fixed list, jobs by random ids, and the page's own files come from the package.
Every error answer is JSON ``{"error": "..."}`` naming what was wrong:

* 400 empty, truncated or corrupt image; a body that is not multipart form data
* 404 unknown path, example or job;  405 wrong method
* 413 body or image over ``--max-upload-mb``, image over ``--max-pixels``
* 415 a file that is not an image
* 422 a missing or malformed field, an unknown model, class or saliency method, a model
  that cannot be explained, a grid explain method (gradcam) for a model of pooled features
* 503 the work queue is full (``--max-queue``), with ``Retry-After``
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from captionlab import __version__
from captionlab.errors import UserError
from captionlab.serve import schemas
from captionlab.serve.cnn import (
    CNN_SIZE,
    LIMITS,
    SALIENCY_METHODS,
    VisionEngine,
    find_class,
    parse_budget,
)
from captionlab.serve.imaging import (
    EXAMPLE_PHOTOS,
    BadImage,
    decode_upload,
    example_photo,
    png_bytes,
    png_data_url,
    shapes_scene,
    square,
)
from captionlab.serve.models import (
    EXPLAIN_LIMITS,
    EXPLAIN_METHODS,
    MAX_BEAM,
    ModelRegistry,
    UnknownModelError,
)
from captionlab.serve.work import JobStore, QueueFull, WorkQueue
from captionlab.vision.images import MAX_PIXELS

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("captionlab.serve")

# The page may load only what the server itself serves (no CDN, font or script elsewhere).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
BODY_SLACK = 64 * 1024  # multipart boundaries, headers and the small form fields


@dataclass
class ServeConfig:
    """What ``captionlab serve`` was given (host and port belong to the command)."""

    models: list[str] = field(default_factory=list)
    device: str = "cpu"
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    max_queue: int = 256
    keep_jobs: int = 32

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_queue", "keep_jobs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before parsing.

    A declared Content-Length over the limit is refused at once; a body without one is
    read up to the limit and refused when it goes over. The body read is handed on whole.
    """

    def __init__(self, app, max_bytes: int, upload_limit: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_limit = upload_limit

    async def _refuse(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = (
            f"request body over the limit of {self.upload_limit} bytes per image (--max-upload-mb)"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._refuse(send, 400, f"bad Content-Length header {length!r}")
            if declared > self.max_bytes:
                return await self._refuse(send, 413, too_big)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._refuse(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# ----------------------------------------------------------------------------- errors


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _field_name(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def _validation_message(exc: RequestValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = _field_name(err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], bytes | bytearray):
            shown = repr(err["input"])
            msg = f"{msg}, got {shown[:60] + '...' if len(shown) > 60 else shown}"
        lines.append(f"{name}: {msg}")
    return "; ".join(lines) or "invalid request"


_HTTP_MESSAGES = {
    404: "no such path: {path}",
    405: "method {method} is not allowed on {path}",
}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        template = _HTTP_MESSAGES.get(exc.status_code)
        if template and exc.detail in (None, "Not Found", "Method Not Allowed"):
            message = template.format(path=request.url.path, method=request.method)
        elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
            message = (
                "request body: not valid multipart/form-data (send the image as field 'image')"
            )
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, exc: BadImage):
        return _error(exc.status, str(exc))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return _error(422, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return _error(503, str(exc), headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # logged with its traceback
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has details")


# ----------------------------------------------------------------------------- the app

ERRORS = {
    code: {"model": schemas.ErrorOut, "description": text}
    for code, text in {
        400: "empty, truncated or corrupt image",
        413: "image over the byte or pixel limit",
        415: "not an image",
        422: "missing or bad field, unknown model or class",
        503: "work queue full",
    }.items()
}

ImageField = Annotated[
    UploadFile, File(description="the picture: PNG, JPEG, GIF, BMP, TIFF or WebP")
]
TargetField = Annotated[
    str | None,
    Form(description="ImageNet class by name, synonym or index (default: the top class)"),
]


def create_app(
    config: ServeConfig | None = None,
    registry: ModelRegistry | None = None,
    engine: VisionEngine | None = None,
) -> FastAPI:
    """The server's app. ``registry`` and ``engine`` are built from ``config`` when not given
    (models found in ``config.models``, the backbone on ``config.device``)."""
    config = config or ServeConfig()
    if registry is None:
        registry = ModelRegistry.discover(config.models, device=config.device)
    if engine is None:
        engine = VisionEngine(device=config.device)
    work = WorkQueue(max_pending=config.max_queue)
    jobs = JobStore(keep=config.keep_jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        work.close()

    app = FastAPI(
        title="captionlab",
        version=__version__,
        description=(
            "Captions from trained captionlab models (with per-word attention maps for "
            "models that attend), word-by-word explanations of those captions, and what a "
            "pretrained CNN (EfficientNet-Lite0) sees: top classes, saliency maps, fooling "
            "images and class visualization. Images go up as the multipart field `image`. "
            'Errors are JSON `{"error": "..."}`.'
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.config, app.state.registry, app.state.engine = config, registry, engine
    app.state.work, app.state.jobs = work, jobs
    app.add_middleware(
        BodyLimit,
        max_bytes=config.max_upload_bytes + BODY_SLACK,
        upload_limit=config.max_upload_bytes,
    )
    _install_error_handlers(app)
    app.mount("/static", StaticFiles(packages=[("captionlab.serve", "static")]), name="static")
    _install_docs(app)

    async def read_image(upload: UploadFile) -> bytes:
        data = await upload.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise BadImage(
                f"image: the file is over the limit of {config.max_upload_bytes} bytes "
                "(--max-upload-mb)",
                413,
            )
        return data

    def pixels_of(data: bytes, size: int):
        return square(decode_upload(data, config.max_pixels), size)

    # -- the page ----------------------------------------------------------------------------
    page = resources.files("captionlab.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    # -- about the server ------------------------------------------------------------------
    @app.get("/api/health", response_model=schemas.HealthOut, tags=["server"])
    async def health():
        """Whether the server is up, what it serves and how busy it is."""
        return {
            "status": "ok",
            "version": __version__,
            "device": str(engine.device),
            "models": registry.names,
            "skipped": registry.skipped,
            "queue": {
                "pending": work.pending,
                "completed": work.completed,
                "max": work.max_pending,
            },
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": config.max_pixels,
        }

    @app.get("/api/models", response_model=schemas.ModelsOut, tags=["server"])
    async def models():
        """The captioning models found at start-up (by name; requests use these names)."""
        return {"models": registry.describe(), "beam_max": MAX_BEAM}

    @app.get("/api/classes", response_model=schemas.ClassesOut, tags=["server"])
    async def classes():
        """The 1000 ImageNet classes with their synonyms (for completion)."""
        return _class_catalogue()

    @app.get("/api/examples", response_model=schemas.ExamplesOut, tags=["examples"])
    async def examples():
        """The example photos (bundled with scikit-image) and the shapes-scene generator."""
        return {
            "photos": [{"name": n, "url": f"/api/examples/{n}.png"} for n in EXAMPLE_PHOTOS],
            "shapes_url": "/api/shapes",
        }

    @app.get(
        "/api/examples/{name}.png",
        tags=["examples"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"model": schemas.ErrorOut}},
    )
    def example(name: str):
        """One example photo as PNG."""
        if name not in EXAMPLE_PHOTOS:
            return _error(
                404, f"unknown example photo {name!r}; expected one of {', '.join(EXAMPLE_PHOTOS)}"
            )
        return Response(_example_png(name), media_type="image/png")

    @app.get("/api/shapes", response_model=schemas.ShapesOut, tags=["examples"])
    def shapes(
        seed: Annotated[
            int | None, Query(ge=0, le=2**31 - 1, description="default: a random scene")
        ] = None,
    ):
        """A shapes scene like the training data, with its five true captions."""
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & (2**31 - 1)
        pixels, truth, references = shapes_scene(seed, size=CNN_SIZE)
        return {"seed": seed, "image": png_data_url(pixels), "references": references, **truth}

    # -- model work ------------------------------------------------------------------------
    @app.post(
        "/api/caption", response_model=schemas.CaptionResponse, responses=ERRORS, tags=["captions"]
    )
    async def caption(
        image: ImageField,
        model: Annotated[
            str | None, Form(description="a name from GET /api/models (default: every model)")
        ] = None,
        beam: Annotated[
            int, Form(ge=1, le=MAX_BEAM, description="beam size; 1 gives the greedy caption only")
        ] = 3,
    ):
        """Captions of the picture by each model: greedy, and beam search of size ``beam``.
        A model with attention gives, per word, the weights of its grid cells and the
        picture seen through them (``attention``; null for other models)."""
        names = [registry.get(model).name] if model else registry.names
        if not names:
            raise UnknownModelError(
                "this server has no captioning models (start it with --models DIR)"
            )
        data = await read_image(image)

        def run():
            start = time.perf_counter()
            img = decode_upload(data, config.max_pixels)
            results = []
            for name in names:
                size = registry.get(name).image_size
                captions = registry.caption(name, square(img, size), beam=beam)
                results.append(
                    {"model": name, "image_size": size, "captions": [vars(c) for c in captions]}
                )
            return {"results": results, "seconds": time.perf_counter() - start}

        return await work.run(run)

    @app.post(
        "/api/explain", response_model=schemas.ExplainOut, responses=ERRORS, tags=["captions"]
    )
    async def explain(
        image: ImageField,
        model: Annotated[
            str | None,
            Form(
                description="a name from GET /api/models (default: the first model with "
                "attention that can be explained, else the first that can)"
            ),
        ] = None,
        method: Annotated[
            Literal[EXPLAIN_METHODS],
            Form(
                description="vanilla gradient, SmoothGrad or Integrated Gradients; for a model "
                "over a grid of cells (GET /api/models: its explain_methods) also gradcam "
                "(Grad-CAM at the captioner's input grid) and guided-gradcam (SmoothGrad times "
                "gradcam's map)"
            ),
        ] = "smoothgrad",
        beam: Annotated[
            int, Form(ge=1, le=MAX_BEAM, description="beam size of the caption; 1 = greedy")
        ] = 1,
        samples: Annotated[
            int,
            Form(ge=1, le=EXPLAIN_LIMITS.samples_max, description="SmoothGrad: noisy copies"),
        ] = EXPLAIN_LIMITS.samples_default,
        steps: Annotated[
            int,
            Form(ge=1, le=EXPLAIN_LIMITS.steps_max, description="Integrated Gradients: points"),
        ] = EXPLAIN_LIMITS.steps_default,
        hold_attention: Annotated[
            bool,
            Form(
                description="every gradient with the attention weights held constant: what, "
                "in the cells it looked at, made it say the word (a model with "
                "hold_attention in GET /api/models: the attention captioner, the "
                "Transformer)"
            ),
        ] = False,
    ):
        """Why the model says each word of its caption: per word, a saliency map of the
        word's log-probability, through the captioner's own backward pass and the CNN to
        the pixels, with its peak; and the word's attention for a model that attends. Each
        word costs a CNN backward pass per SmoothGrad sample or IG step (gradcam: none, the
        captioner's backward pass only). A grid method for a model of pooled features is a
        422 naming the method and the model."""
        name = registry.explained(model, method)
        data = await read_image(image)

        def run():
            start = time.perf_counter()
            pixels = pixels_of(data, registry.get(name).image_size)
            out = registry.explain(name, pixels, method, beam=beam, samples=samples, steps=steps,
                                   hold_attention=hold_attention)  # fmt: skip
            return {**out, "seconds": time.perf_counter() - start}

        return await work.run(run)

    @app.post("/api/classify", response_model=schemas.ClassifyOut, responses=ERRORS, tags=["cnn"])
    async def classify(
        image: ImageField,
        top: Annotated[int, Form(ge=1, le=LIMITS.top_max, description="how many classes")] = 5,
    ):
        """The top ImageNet classes of the picture's centre square."""
        data = await read_image(image)

        def run():
            pixels = pixels_of(data, CNN_SIZE)
            start = time.perf_counter()
            found = engine.classify(pixels, top)
            return {"classes": found, "seconds": time.perf_counter() - start}

        return await work.run(run)

    @app.post("/api/saliency", response_model=schemas.SaliencyOut, responses=ERRORS, tags=["cnn"])
    async def saliency(
        image: ImageField,
        method: Annotated[
            Literal[SALIENCY_METHODS],
            Form(description="vanilla gradient, SmoothGrad or Integrated Gradients"),
        ] = "vanilla",
        target: TargetField = None,
        samples: Annotated[
            int, Form(ge=1, le=LIMITS.samples_max, description="SmoothGrad: noisy copies")
        ] = LIMITS.samples_default,
        steps: Annotated[
            int, Form(ge=1, le=LIMITS.steps_max, description="Integrated Gradients: path points")
        ] = LIMITS.steps_default,
    ):
        """Which pixels move the class score most, as a heat map over the picture."""
        index = find_class(target) if target else None
        data = await read_image(image)

        def run():
            pixels = pixels_of(data, CNN_SIZE)
            start = time.perf_counter()
            out = engine.saliency(pixels, method, index, samples=samples, steps=steps)
            return {**out, "seconds": time.perf_counter() - start}

        return await work.run(run)

    @app.post("/api/fool", response_model=schemas.FoolOut, responses=ERRORS, tags=["cnn"])
    async def fool(
        image: ImageField,
        target: Annotated[str, Form(description="the class to fool the network into")],
        epsilon: Annotated[
            str,
            Form(
                description="L-infinity budget as a fraction of the pixel range (2/255), "
                "or 'none' for cs231n's unbounded attack"
            ),
        ] = "2/255",
        max_iter: Annotated[
            int, Form(ge=1, le=LIMITS.fool_iter_max, description="step cap of the attack")
        ] = LIMITS.fool_iter_default,
    ):
        """A copy of the picture, changed imperceptibly, that the network takes for ``target``."""
        index = find_class(target)
        budget = parse_budget(epsilon)
        data = await read_image(image)

        def run():
            pixels = pixels_of(data, CNN_SIZE)
            start = time.perf_counter()
            out = engine.fool(pixels, index, epsilon=budget, max_iter=max_iter)
            return {**out, "seconds": time.perf_counter() - start}

        return await work.run(run)

    @app.post(
        "/api/dream",
        response_model=schemas.JobOut,
        status_code=202,
        responses={k: v for k, v in ERRORS.items() if k in (422, 503)},
        tags=["cnn"],
    )
    async def dream(
        target: Annotated[str, Form(description="ImageNet class by name, synonym or index")],
        iterations: Annotated[
            int, Form(ge=1, le=LIMITS.dream_iter_max, description="gradient steps")
        ] = LIMITS.dream_iter_default,
        seed: Annotated[int, Form(ge=0, le=2**31 - 1, description="start noise and jitter")] = 0,
    ):
        """Start a class visualization (an image grown from noise); poll GET /api/jobs/{id}."""
        index = find_class(target)
        job = jobs.new("dream", total=iterations)
        jobs.start(
            work, job, lambda j: engine.dream(index, iterations, seed=seed, progress=j.progress)
        )
        return job.describe()

    @app.get(
        "/api/jobs/{job_id}",
        response_model=schemas.JobOut,
        responses={404: {"model": schemas.ErrorOut}},
        tags=["cnn"],
    )
    async def job_status(job_id: str):
        """A job's state, progress, latest preview and, when done, its result."""
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"unknown job {job_id[:40]!r} (jobs are kept for a while only)")
        return job.describe()

    return app


@functools.cache
def _class_catalogue() -> dict:
    from captionlab.serve.cnn import class_catalogue

    return {"classes": class_catalogue()}


@functools.cache
def _example_png(name: str) -> bytes:
    return png_bytes(example_photo(name))


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files of the fastapi-offline package (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount(
        "/docs-static",
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-static",
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="captionlab API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
