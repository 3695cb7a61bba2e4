"""``vireid train CONFIG [--set k=v ...] [--resume]``: train a published recipe, then test with the protocol."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "Train a method's YAML recipe (AGW, CAJ, MSCLNet, AML, DEEN, ...), then test it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML, e.g. configs/agw/sysu.yaml")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. --set data.root=/data/SYSU-MM01 train.epochs=5")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt (mid-epoch)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from vireid.cli._overrides import load_cli_config
    from vireid.engine.lock import lock_run_folder
    from vireid.training import train

    cfg = load_cli_config(args.config, args.overrides)
    # before any work: output_dir must be writable and not in use by another run (released when we end; a run
    # killed with SIGKILL leaves a stale lock that the next run, e.g. --resume, takes over)
    lock = lock_run_folder(cfg.output_dir, "output_dir")
    try:
        result = train(cfg, resume=args.resume, progress=not args.quiet)
    finally:
        if lock is not None:
            lock.release()
    if "rank1" in result:
        print(f"{cfg.output_dir}: Rank-1 {result['rank1']:.2f}  mAP {result['mAP']:.2f}  "
              f"mINP {result.get('mINP', 0):.2f}")
    return 0
