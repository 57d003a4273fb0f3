"""Feature extraction speed: images/s of EfficientNet-Lite0 by image size and speed setting.

For each image size it times the network (preprocess + forward to the pooled features) in
four settings, measured in the same run, and prints each one's speed-up over the plain
model (batch norm separate, NCHW memory layout):

    plain | fold_bn | channels_last | fold_bn + channels_last

and, separately, image decoding (``load_image`` of a 640x480 PNG and JPEG: decode, resize,
crop), which runs in worker threads beside the network during extraction.

    python benchmarks/bench_features.py [--sizes 128 160 224] [--batch 64] [--device cpu]

Timings on a shared machine are noisy: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionlab.extract import pool_grid
from captionlab.vision.backbone import load_backbone, preprocess, resolve_device
from captionlab.vision.images import load_image

SETTINGS = [
    ("plain", False, False),
    ("fold_bn", True, False),
    ("channels_last", False, True),
    ("fold+cl", True, True),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(model, images: np.ndarray, device, channels_last: bool, repeats: int) -> float:
    """Median seconds per batch: preprocess, copy to device, forward, pool, copy back."""

    def once() -> None:
        with torch.inference_mode():
            x = preprocess(images).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pool_grid(model.features(x, "grid"), "avg").cpu()

    once()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        once()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_decoding(size: int, n: int = 20) -> dict[str, float]:
    rng = np.random.default_rng(0)
    # a smooth photo-like image (random pixels would make PNG/JPEG unrealistically slow)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("png", "jpg"):
            path = Path(tmp) / f"photo.{fmt}"
            Image.fromarray(pixels).save(path)
            load_image(path, size)
            t = time.perf_counter()
            for _ in range(n):
                load_image(path, size)
            out[fmt] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224], help="image sides")
    parser.add_argument("--batch", type=int, default=64, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per setting")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, median of {args.repeats} batches; noisy on a shared machine"
    )
    models = {s: load_backbone(device, fold_bn=f, channels_last=c) for s, f, c in SETTINGS}
    rng = np.random.default_rng(0)
    header = f"{'size':>5} " + " ".join(f"{s:>22}" for s, _, _ in SETTINGS)
    print(header)
    for size in args.sizes:
        images = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        rates = {}
        for setting, _, channels_last in SETTINGS:
            seconds = time_network(models[setting], images, device, channels_last, args.repeats)
            rates[setting] = args.batch / seconds
        base = rates["plain"]
        cells = [f"{rates[s]:9.1f} img/s ({rates[s] / base:4.2f}x)" for s, _, _ in SETTINGS]
        print(f"{size:>5} " + " ".join(f"{c:>22}" for c in cells))
    for size in args.sizes:
        dec = time_decoding(size)
        print(
            f"decode 640x480 -> {size}: png {dec['png']:.0f} img/s, jpg {dec['jpg']:.0f} img/s "
            f"(one thread; jpg/png {dec['jpg'] / dec['png']:.2f}x)"
        )


if __name__ == "__main__":
    main()
