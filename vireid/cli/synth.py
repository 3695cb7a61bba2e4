"""``vireid synth DATASET --out DIR``: write a synthetic cross-modality dataset in a real dataset's layout."""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "Write a synthetic cross-modality dataset in a real layout (SYSU-MM01, RegDB, ...)."

_CHOICES = "sysu_mm01, regdb, sysu_mm02, llcm, market1501, market1501_gen"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help=f"layout to write: {_CHOICES} ('-' or '_', any case)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataset root to create (empty or new; a previous synthetic dataset needs --overwrite)")
    parser.add_argument("--ids", type=int, default=None, metavar="N",
                        help="identities over all splits (default: a small demo size, or the real count with "
                             "--scale full)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--scale", choices=("mini", "full"), default="mini",
                        help="mini: seconds, for demos and tests; full: real identity/camera/image counts")
    parser.add_argument("--workers", type=int, default=1, metavar="W",
                        help="rendering processes; output is identical for any W (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from vireid.data.synthetic import describe, write_synthetic
    from vireid.outputs import check_writable_dir

    check_writable_dir(args.out, "--out folder")
    start = time.perf_counter()
    manifest = write_synthetic(
        args.dataset, args.out, ids=args.ids, seed=args.seed, scale=args.scale, workers=args.workers,
        progress=not args.quiet, overwrite=args.overwrite,
    )
    print(f"{describe(manifest)} ({time.perf_counter() - start:.1f} s)")
    return 0
