"""Benchmark: decoding JPEGs every time (the ImageFolder/PIL path) vs reading batches from the image cache.

Generates a folder of JPEGs of person-crop sizes (128x64 .. 288x144, smooth random content plus noise, so they
compress and decode like photos rather than like white noise), then in the same run measures

  (a) baseline: for each image, PIL open + convert RGB + Lanczos resize to HxW + numpy + torch.from_numpy, as a
      torchvision ImageFolder pipeline does in its DataLoader workers (one thread here, like one worker);
  (b) cache: random batches of 64 indices, memmap fancy index + torch.from_numpy + permute to [B, 3, H, W]
      (one thread, page cache warm, as in every epoch after the first);

prints images/s of both and the ratio, the one-off build time, and appends a row to benchmarks/results/cache.csv.
Run: ``python benchmarks/bench_cache.py [--images 3000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vireid.data.cache import ImageCache, batch_to_tensor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cache.csv"


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[str]:
    """Write ``n`` JPEGs of random person-crop sizes under ``root``; return their relative paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        s = rng.uniform(1.0, 2.25)
        h, w = int(round(128 * s)), int(round(64 * s))
        coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
        rel = f"{i // 500:03d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, quality=90)
        paths.append(rel)
    return paths


def baseline_decode(root: Path, paths: list[str], height: int, width: int) -> float:
    """Images/s of decode + resize + to tensor per image, every time."""
    t0 = time.perf_counter()
    for rel in paths:
        with Image.open(root / rel) as img:
            img = img.convert("RGB").resize((width, height), Image.LANCZOS)
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # copy, as ToTensor does
        assert t.shape[0] == 3
    return len(paths) / (time.perf_counter() - t0)


def cached_batches(cache: ImageCache, batches: int, batch_size: int = 64, seed: int = 0) -> float:
    """Images/s of random batches from the cache, as uint8 tensors [B, 3, H, W]."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cache), size=(batches, batch_size))
    t0 = time.perf_counter()
    for row in idx:
        t = batch_to_tensor(cache.batch(row))
        assert t.shape[0] == batch_size
    return batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--workers", type=int, default=2, help="decoding threads for the one-off build")
    ap.add_argument("--batches", type=int, default=300, help="cache batches of 64 to time")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vireid-bench-") as tmp:
        root, cdir = Path(tmp) / "images", Path(tmp) / "cache"
        t0 = time.perf_counter()
        paths = make_jpegs(root, args.images)
        print(f"generated {len(paths)} JPEGs in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        cache = ImageCache.open_or_build(root, paths, args.height, args.width, cache_dir=cdir,
                                         workers=args.workers, progress=True)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ImageCache.open_or_build(root, paths, args.height, args.width, cache_dir=cdir, progress=False)
        reopen_s = time.perf_counter() - t0

        cached_batches(cache, 20)  # warm-up: page cache, allocator
        base = baseline_decode(root, paths, args.height, args.width)
        fast = cached_batches(cache, args.batches)
        ratio = fast / base
        size_mb = cache.path.stat().st_size / 2**20

    print(f"one-off build      : {build_s:8.2f} s  ({len(paths) / build_s:,.0f} img/s, {args.workers} threads, "
          f"{size_mb:,.0f} MiB)")
    print(f"reopen (cache hit) : {reopen_s * 1000:8.1f} ms (stat of every file + key)")
    print(f"(a) decode+resize  : {base:10,.0f} img/s  (PIL, 1 thread)")
    print(f"(b) cache batches  : {fast:10,.0f} img/s  (memmap fancy index, batches of 64, 1 thread)")
    print(f"ratio (b)/(a)      : {ratio:10.1f}x")

    if not args.no_csv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS.exists()
        with RESULTS.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["date", "images", "height", "width", "build_workers", "build_s", "reopen_ms",
                            "decode_img_s", "cache_img_s", "ratio", "cpus", "machine", "python", "torch"])
            w.writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), len(paths), args.height, args.width, args.workers,
                        f"{build_s:.2f}", f"{reopen_s * 1000:.1f}", f"{base:.0f}", f"{fast:.0f}", f"{ratio:.1f}",
                        os.cpu_count(), platform.machine(), platform.python_version(), torch.__version__])
        print(f"appended a row to {RESULTS}")


if __name__ == "__main__":
    main()
