"""``vireid demo``: synthetic SYSU-MM01 -> train a small model -> evaluate with the sysu protocol -> report."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "Run the whole pipeline on a synthetic SYSU-MM01 (no dataset needed): train, evaluate, report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="vireid-demo", help="folder for the dataset, the run and the report")
    parser.add_argument("--ids", type=int, default=None, help="identities in the synthetic dataset (default 120)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo recipe's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the run: initialisation, batches, augmentation (the result depends on it: see "
                             "the README)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the synthetic dataset (default 0, the README's numbers; another draws other "
                             "people, so its numbers are not comparable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from vireid.demo import DEMO_IDS, run_demo
    from vireid.errors import ConfigError

    if args.ids is not None and args.ids < 20:
        raise ConfigError(f"--ids {args.ids} is too small: the demo needs at least 20 identities")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs} is invalid: expected an integer >= 1")
    from vireid.outputs import check_writable_dir

    check_writable_dir(args.out, "--out folder")  # before the dataset is rendered
    run_demo(args.out, ids=args.ids or DEMO_IDS, epochs=args.epochs, seed=args.seed, device=args.device,
             progress=not args.quiet, data_seed=args.data_seed)
    return 0
