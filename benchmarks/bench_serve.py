"""`captionlab serve` under load: many clients at once against a real server process.

Starts ``captionlab serve --port 0`` on this machine, then sends ``--requests`` requests
(``classify`` and ``caption`` alternating, each with the same photo) from ``--clients``
concurrent clients, each client on its own keep-alive connection. Every answer must be a
200 (the script exits 1 otherwise). It prints p50 / p95 latency and throughput, beside the
same work done in this process without HTTP (decode the upload, run the network or the
captioners, encode the JSON answer), one request after another on one worker thread as in
the server; the ratio of the two throughputs is the server's overhead. Rounds alternate
server and in-process, and the best round of each is reported, so that noise from other
work on the machine counts least.

    python benchmarks/bench_serve.py [--models demo_out/runs] [--requests 200] [--clients 16]

Without ``--models`` it uses ``demo_out/runs`` when there is one, else two untrained tiny
captioners written to a temporary folder (160 px features, like the demo's).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

KINDS = ("classify", "caption")


def photo_png(name: str = "chelsea") -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(buf, format="PNG")
    return buf.getvalue()


def tiny_runs(root: Path) -> Path:
    """Two untrained captioners (lstm, rnn) with the demo's feature settings minus PCA."""
    from captionlab.captioning import CaptioningRNN, save_checkpoint
    from captionlab.data.features import FeatureExtractorConfig

    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "circle", "square"]
    extra = {"features": dataclasses.asdict(FeatureExtractorConfig(image_size=160))}
    for seed, cell in enumerate(("lstm", "rnn")):
        model = CaptioningRNN(
            {w: i for i, w in enumerate(words)}, input_dim=1280, wordvec_dim=256,
            hidden_dim=512, cell_type=cell, seed=seed,
        )  # fmt: skip
        (root / cell).mkdir(parents=True, exist_ok=True)
        save_checkpoint(root / cell / "best.npz", model, extra=extra)
    return root


def start_server(models: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "captionlab.cli", "serve", "--port", "0", "--models", str(models)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        print("  server: " + line.rstrip())
        if "open http://" in line:
            return proc, line.split("open ", 1)[1].split()[0]
    proc.kill()
    raise SystemExit("captionlab serve did not start")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_round(url: str, image: bytes, n: int, clients: int) -> dict:
    """``n`` requests from ``clients`` threads, each with its own keep-alive connection."""
    local = threading.local()

    def one(i: int) -> tuple[str, int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        kind = KINDS[i % 2]
        start = time.perf_counter()
        r = local.client.post(f"/api/{kind}", files={"image": ("chelsea.png", image, "image/png")})
        r.json()
        return kind, r.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {"results": results, "wall": wall}


def in_process_round(app_parts, image: bytes, n: int) -> dict:
    """The work of ``n`` requests, one after another, without HTTP or the queue."""
    from captionlab.serve.cnn import CNN_SIZE
    from captionlab.serve.imaging import decode_upload, square

    registry, engine, max_pixels = app_parts
    times = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        img = decode_upload(image, max_pixels)
        if KINDS[i % 2] == "classify":
            out = {"classes": engine.classify(square(img, CNN_SIZE), 5)}
        else:
            out = {
                "results": [
                    [vars(c) for c in registry.caption(name, square(img, size), beam=3)]
                    for name, size in ((m, registry.get(m).image_size) for m in registry.names)
                ]
            }
        json.dumps(out)
        times.append(time.perf_counter() - t)
    return {"times": times, "wall": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="folder of trained runs to serve")
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    args = parser.parse_args()

    from captionlab.serve.cnn import VisionEngine
    from captionlab.serve.models import ModelRegistry
    from captionlab.vision.images import MAX_PIXELS

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(args.models) if args.models else Path("demo_out/runs")
        if not args.models and not models.is_dir():
            models = tiny_runs(Path(tmp) / "runs")
        image = photo_png()
        proc, url = start_server(models)
        try:
            registry = ModelRegistry.discover([models])
            parts = (registry, VisionEngine("cpu"), MAX_PIXELS)
            print(
                f"bench_serve: {args.requests} requests ({' and '.join(KINDS)} alternating, "
                f"{len(image)} B PNG) from {args.clients} clients; models: "
                f"{', '.join(registry.names)}"
            )
            # The peer runs on one worker thread, as the server's work does: on a loaded
            # 2-core machine, torch's convolutions on the main thread measured 15x slower
            # than on a worker thread (OpenMP teams spinning against other processes).
            in_thread = ThreadPoolExecutor(1)
            in_thread.submit(in_process_round, parts, image, 4).result()  # warm-up
            load_round(url, image, 4, 2)
            served, local = [], []
            for r in range(args.rounds):
                s = load_round(url, image, args.requests, args.clients)
                codes = [code for _, code, _ in s["results"]]
                bad = [c for c in codes if c != 200]
                print(
                    f"round {r + 1}: server answered {codes.count(200)}/{len(codes)} with 200 "
                    f"in {s['wall']:.1f} s",
                    flush=True,
                )
                if bad:
                    print(f"  FAILED: {len(bad)} answers were not 200: {sorted(set(bad))}")
                    return 1
                served.append(s)
                p = in_thread.submit(in_process_round, parts, image, args.requests).result()
                print(f"round {r + 1}: in-process did the same work in {p['wall']:.1f} s")
                local.append(p)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)

    best_s = min(served, key=lambda s: s["wall"])
    best_p = min(local, key=lambda p: p["wall"])
    n = args.requests
    lat = [t for _, _, t in best_s["results"]]
    thr_s, thr_p = n / best_s["wall"], n / best_p["wall"]
    print()
    print(f"best of {args.rounds} rounds          throughput   p50 latency   p95 latency")
    print(
        f"server, {args.clients} clients        {thr_s:6.2f} req/s   {percentile(lat, 50):8.3f} s"
        f"    {percentile(lat, 95):8.3f} s"
    )
    print(
        f"in-process, one at a time  {thr_p:6.2f} req/s   "
        f"{percentile(best_p['times'], 50):8.3f} s    {percentile(best_p['times'], 95):8.3f} s"
    )
    for kind in KINDS:
        ks = [t for k, _, t in best_s["results"] if k == kind]
        kp = best_p["times"][KINDS.index(kind) :: 2]
        print(
            f"  {kind:8s}  server p50 {percentile(ks, 50):.3f} s (waiting included), "
            f"in-process p50 {statistics.median(kp):.3f} s"
        )
    print(
        f"server overhead: in-process throughput / server throughput = {thr_p / thr_s:.3f} "
        f"(1.0 = none; the server's latency is mostly waiting in the one queue behind "
        f"{args.clients - 1} other clients)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
