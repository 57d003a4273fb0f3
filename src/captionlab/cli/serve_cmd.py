"""``captionlab serve``: the local web page and JSON API (see :mod:`captionlab.serve`)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from captionlab.cli import add_json_flag
from captionlab.errors import UserError

DEFAULT_MODELS = Path("demo_out") / "runs"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a local web page (and JSON API) for captions, classes, saliency and fooling",
        description=(
            "Start a local web server: a page to drop a photo on and see each trained model's "
            "caption (with per-word attention maps for models that attend), why it said each "
            "word, the CNN's top classes, saliency maps, a fooling image and class "
            "visualization; and the JSON API the page uses (documented at /docs). Binds to "
            "127.0.0.1 unless --host says otherwise. Ctrl-C stops it."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it "
        "to the network)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to listen on (default 8000; 0 picks a free one)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        metavar="DIR",
        default=None,
        help=f"folders of trained runs to serve, each run a folder holding best.npz "
        f"(default: {DEFAULT_MODELS} when it exists)",
    )
    p.add_argument("--device", default="cpu", help="where the networks run: cpu or cuda[:N]")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="largest image file accepted, in MiB (default 20)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image accepted, in pixels, checked before decoding (default 64000000)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests that may wait for the network at once; more get 503 (default 256)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (UserError when it cannot be had)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r}: not an address of this machine ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
            "(0 picks a free one)"
        ) from None
    sock.listen(2048)  # connections wait in the backlog until the server accepts them
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = "[::1]" if shown == "::" else shown
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def run(args) -> dict:
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.max_queue < 1:
        raise UserError(f"--max-queue must be >= 1, got {args.max_queue}")
    folders = args.models
    if folders is None:
        folders = [str(DEFAULT_MODELS)] if DEFAULT_MODELS.is_dir() else []
    for folder in folders:  # checked before the slow imports: a typo fails at once
        if not Path(folder).is_dir():
            raise UserError(f"--models {folder}: no such folder of trained runs")
    sock = _bind(args.host, args.port)  # likewise a busy port
    try:
        return _serve(args, folders, sock)
    finally:
        sock.close()


def _serve(args, folders: list[str], sock: socket.socket) -> dict:
    import uvicorn

    from captionlab.serve import ServeConfig, create_app
    from captionlab.vision.images import MAX_PIXELS

    config = ServeConfig(
        models=folders,
        device=args.device,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels or MAX_PIXELS,
        max_queue=args.max_queue,
    )
    app = create_app(config)
    registry = app.state.registry
    port = sock.getsockname()[1]
    url = _url(args.host, port)
    out = sys.stderr if args.json else sys.stdout
    if len(registry):
        where = ", ".join(folders)
        print(
            f"captionlab serve: {len(registry)} model(s) ({', '.join(registry.names)}) "
            f"from {where}; networks on {args.device}",
            file=out,
        )
    else:
        print(
            "captionlab serve: no captioning models (give --models DIR, e.g. demo_out/runs "
            "after `make demo`); the CNN panels work without them",
            file=out,
        )
    for line in registry.skipped:
        print(f"  skipped {line}", file=out)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  note: listening on {args.host}, reachable from other machines", file=out)
    print(f"  open {url}   (API docs: {url}docs; Ctrl-C stops)", file=out, flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown
        pass
    print("captionlab serve: stopped", file=out)
    return {
        "url": url,
        "models": registry.names,
        "skipped": registry.skipped,
        "requests_completed": app.state.work.completed,
    }
