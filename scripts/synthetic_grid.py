"""Regenerate docs/images/synthetic_pairs.png: synthetic SYSU-MM01 identities seen by two RGB and two IR cameras.

Usage: python scripts/synthetic_grid.py [--out docs/images/synthetic_pairs.png] [--seed 0] [--people 8]

The images are rendered exactly as ``vireid synth sysu_mm01 --seed S`` writes them (same plan, same per-image
seeds), without touching the disk, so the picture shows what the generator produces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from vireid.data.synthetic.writer import _Renderer, make_plan

TILE_W, TILE_H = 64, 128
GAP, HEADER, LABEL = 4, 18, 44


def grid(seed: int = 0, people: int = 8, ids: int = 60) -> Image.Image:
    """A labelled grid: ``people`` identities in two column blocks, each row RGB camA, RGB camB, IR cam3, IR cam6."""
    _, _, plan = make_plan("sysu_mm01", ids=ids, seed=seed, scale="mini")
    renderer = _Renderer("", "sysu_mm01", seed, (128, 64), plan.sensors, plan.scenes, plan.vary_size,
                         plan.size_jitter)
    first: dict[tuple[int, int], object] = {}
    for job in plan.jobs:
        first.setdefault((job.pid, job.camid), job)
    chosen = []
    for pid in sorted({j.pid for j in plan.jobs}):
        rgb = [c for c in (1, 2, 4, 5) if (pid, c) in first]
        if len(rgb) >= 2 and (pid, 3) in first and (pid, 6) in first:
            chosen.append((pid, [rgb[0], rgb[-1], 3, 6]))
        if len(chosen) == people:
            break
    rows = (len(chosen) + 1) // 2
    block_w = LABEL + 4 * (TILE_W + GAP)
    canvas = Image.new("RGB", (2 * block_w + GAP * 3, HEADER + rows * (TILE_H + GAP) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for b in range(2):
        x0 = GAP + b * (block_w + GAP)
        for k, text in enumerate(("RGB", "RGB", "IR", "IR")):
            draw.text((x0 + LABEL + k * (TILE_W + GAP) + 2, 3), text, fill=(0, 0, 0))
    for n, (pid, cams) in enumerate(chosen):
        b, r = divmod(n, rows)
        x0 = GAP + b * (block_w + GAP)
        y0 = HEADER + r * (TILE_H + GAP)
        draw.text((x0, y0 + TILE_H // 2 - 6), f"id {pid}", fill=(0, 0, 0))
        for k, cam in enumerate(cams):
            (_, img, _), = renderer.render(first[(pid, cam)])
            tile = img.resize((TILE_W, TILE_H), Image.LANCZOS)
            x = x0 + LABEL + k * (TILE_W + GAP)
            canvas.paste(tile, (x, y0))
            draw.rectangle((x, y0 + TILE_H - 11, x + 30, y0 + TILE_H), fill=(255, 255, 255))
            draw.text((x + 2, y0 + TILE_H - 11), f"cam{cam}", fill=(0, 0, 0))
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images/synthetic_pairs.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--people", type=int, default=8)
    args = ap.parse_args()
    img = grid(args.seed, args.people)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps the committed PNG small (< 300 KB) with no visible loss at this size
    img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height}, {Path(args.out).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
