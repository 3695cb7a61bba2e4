"""Benchmark: training images/s of the real training step, with its speed-ups on and off in the same run.

The loop is the one :class:`vireid.engine.Trainer` runs per step, without the logging and checkpoints around it:
sampler indices -> uint8 batch from the image cache -> ``method.make_batch`` (augmentation) -> autocast
``method.training_step`` -> backward -> optimiser step. Variants, each from the same seed and the same batches:

  CPU, the demo recipe (configs/demo.yaml: half-width two-stream ResNet-18, 128x64, 8x4 RGB + 8x4 IR images per
  step; img/s counts the images the model sees, as the trainer's log does: CAJ's three views make 96) on a
  synthetic SYSU-MM01 read from the image cache:
      channels_last off / on  x  1 / 2 threads          (ratios against channels_last off, 1 thread)
  CUDA, when available (AGW at the published size: ResNet-50 + non-local, 288x144, batch 64, random init, random
  uint8 images already on the GPU so only the model is timed):
      fp32 (baseline)  |  bf16 autocast + channels_last  |  + torch.compile            (ratios against fp32)

Prints a table with img/s and ratios and appends one row per variant to benchmarks/results/train.csv.
Run: ``python benchmarks/bench_train.py [--steps 12] [--warmup 3] [--gpu-steps 30] [--no-gpu]``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vireid import build  # noqa: E402
from vireid.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train.csv"
FIELDS = ["date", "device", "recipe", "arch", "height", "width", "batch", "variant", "channels_last", "amp",
          "compile", "threads", "steps", "img_per_s", "ratio", "final_loss", "load_avg_1min", "cpus", "torch"]


def make_step(cfg, method, optimizer, device: torch.device, amp: torch.dtype | None, channels_last: bool):
    """One optimiser step on a uint8 batch, as the trainer does it (accumulation 1, no GradScaler needed)."""
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(rgb_u8, ir_u8, rgb_labels, ir_labels, rgb_cams, ir_cams) -> tuple[float, int]:
        batch = method.make_batch(rgb_u8.to(device), ir_u8.to(device), rgb_labels.to(device), ir_labels.to(device),
                                  gen, rgb_cams=rgb_cams.to(device), ir_cams=ir_cams.to(device))
        if channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            losses = method.training_step(batch)
        losses["loss"].float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(losses["loss"].detach()), len(batch)  # images as the trainer counts them (CAJ: 3 views)

    return step


def build_method(cfg, num_classes: int, device: torch.device, channels_last: bool):
    torch.manual_seed(cfg.seed)
    model = build.model_from_config(cfg.model, num_classes)
    method = build.method_from_config(cfg, model, num_classes).to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.train()
    return method, build.optimizer_from_config(cfg, method)


def time_loop(step, batches, warmup: int, sync) -> tuple[float, float]:
    """img/s over ``batches`` after ``warmup`` untimed steps; returns (img/s, last loss)."""
    for b in batches[:warmup]:
        step(*b)
    sync()
    t0, images, loss = time.perf_counter(), 0, float("nan")
    for b in batches[warmup:]:
        loss, n = step(*b)
        images += n
    sync()
    return images / (time.perf_counter() - t0), loss


# --------------------------------------------------------------------------------------------------------------------
# CPU: the demo recipe from the image cache


def cpu_rows(args) -> list[dict]:
    from vireid.data.sampling import CrossModalIdentitySampler
    from vireid.data.synthetic import write_synthetic
    from vireid.training import TrainArrays, open_cache, split_train_val

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    root = tmp / "SYSU-MM01"
    write_synthetic("sysu_mm01", root, ids=args.ids, seed=0, workers=2)
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.root={root}", f"data.cache_dir={tmp / 'cache'}",
                                                       "train.device=cpu"])
    ds = build.dataset_from_config(cfg.data)
    samples, _ = split_train_val(ds, cfg.train.validation, cfg.train.holdout_ids, cfg.seed)
    arrays = TrainArrays.build(open_cache(ds.root, samples, cfg, progress=False), samples)
    sampler = CrossModalIdentitySampler(arrays.labels[arrays.rgb_rows], arrays.labels[arrays.ir_rows],
                                        cfg.sampler.num_ids, cfg.sampler.num_instances, seed=cfg.seed)
    sampler.set_epoch(0)
    indices = []
    while len(indices) < args.warmup + args.steps:
        indices += list(sampler)
    # fetch once: every variant trains on exactly the same uint8 batches (the cache read itself is ~1% of a step)
    batches = [arrays.fetch(r, i) for r, i in indices[: args.warmup + args.steps]]
    num_classes = len(set(arrays.labels.tolist()))
    device = torch.device("cpu")
    rows = []
    for threads in (1, 2):
        for cl in (False, True):
            torch.set_num_threads(threads)
            method, opt = build_method(cfg, num_classes, device, cl)
            ips, loss = time_loop(make_step(cfg, method, opt, device, None, cl), batches, args.warmup, lambda: None)
            rows.append(_row("cpu", f"demo ({cfg.method.name})", cfg, len(batches[0][0]) * 2,
                             f"threads={threads} channels_last={cl}", cl, "none", False, threads, args.steps, ips,
                             loss))
            print(f"  cpu threads={threads} channels_last={cl!s:5}: {ips:7.1f} img/s (loss {loss:.3f})", flush=True)
    base = rows[0]["img_per_s"]
    for r in rows:
        r["ratio"] = r["img_per_s"] / base
    return rows


# --------------------------------------------------------------------------------------------------------------------
# CUDA: AGW at the published size


def gpu_rows(args) -> list[dict]:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cfg = load_config(REPO / "configs" / "agw" / "sysu.yaml", ["model.pretrained=none", "train.device=cuda",
                                                               "data.height=288", "data.width=144",
                                                               "sampler.num_ids=8", "sampler.num_instances=4"])
    p, k, num_classes = cfg.sampler.num_ids, cfg.sampler.num_instances, 395
    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.arange(p).repeat_interleave(k)
    batches = []
    for _ in range(args.gpu_warmup + 5 + args.gpu_steps):  # +5: torch.compile warms up longer
        rgb = torch.randint(0, 256, (p * k, 3, 288, 144), generator=g, dtype=torch.uint8).to(device)
        ir = torch.randint(0, 256, (p * k, 3, 288, 144), generator=g, dtype=torch.uint8).to(device)
        cams = torch.zeros(p * k, dtype=torch.long)
        batches.append((rgb, ir, labels.to(device), labels.to(device), cams.to(device), cams.to(device)))
    variants = [("fp32", None, False, False), ("bf16+channels_last", torch.bfloat16, True, False)]
    if not args.no_compile:
        variants.append(("bf16+channels_last+compile", torch.bfloat16, True, True))
    rows = []
    for name, amp, cl, compiled in variants:
        method, opt = build_method(cfg, num_classes, device, cl)
        if compiled:
            method.model = torch.compile(method.model)
        step = make_step(cfg, method, opt, device, amp, cl)
        warmup = args.gpu_warmup + 5  # the same timed batches for every variant
        try:
            ips, loss = time_loop(step, batches, warmup, torch.cuda.synchronize)
        except Exception as exc:  # torch.compile can fail on a given toolchain: report it, keep the other rows
            print(f"  cuda {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        rows.append(_row(torch.cuda.get_device_name(0), "agw/sysu", cfg, 2 * p * k, name, cl,
                         "bf16" if amp is not None else "none", compiled, torch.get_num_threads(), args.gpu_steps,
                         ips, loss))
        print(f"  cuda {name:28}: {ips:7.1f} img/s (loss {loss:.3f})", flush=True)
        del method, opt
        torch.cuda.empty_cache()
    if rows:
        base = rows[0]["img_per_s"]
        for r in rows:
            r["ratio"] = r["img_per_s"] / base
    return rows


def _row(device, recipe, cfg, batch, variant, cl, amp, compiled, threads, steps, ips, loss) -> dict:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device, "recipe": recipe, "arch": cfg.model.arch,
            "height": cfg.data.height, "width": cfg.data.width, "batch": batch, "variant": variant,
            "channels_last": cl, "amp": amp, "compile": compiled, "threads": threads, "steps": steps,
            "img_per_s": round(ips, 2), "ratio": 1.0, "final_loss": round(loss, 4),
            "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed CPU steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed CPU steps per variant")
    ap.add_argument("--ids", type=int, default=60, help="identities of the synthetic SYSU-MM01")
    ap.add_argument("--gpu-steps", type=int, default=30)
    ap.add_argument("--gpu-warmup", type=int, default=5)
    ap.add_argument("--no-gpu", action="store_true", help="skip the CUDA part even when a GPU is present")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args()

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{platform.machine()}")
    rows: list[dict] = []
    if not args.no_cpu:
        print(f"CPU: configs/demo.yaml (resnet18_half, 128x64), {args.steps} timed steps per variant")
        rows += cpu_rows(args)
    if torch.cuda.is_available() and not args.no_gpu:
        print(f"CUDA: AGW resnet50 + non-local, 288x144, batch 64, {args.gpu_steps} timed steps per variant")
        rows += gpu_rows(args)
    elif not args.no_gpu:
        print("CUDA: no GPU here; the AMP / channels_last / torch.compile comparison needs one")

    print(f"\n{'device':22} {'variant':32} {'img/s':>9} {'ratio':>7}")
    for r in rows:
        print(f"{str(r['device'])[:22]:22} {r['variant']:32} {r['img_per_s']:9.1f} {r['ratio']:7.2f}x")
    if rows and not args.no_csv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS.is_file()
        with open(RESULTS, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
