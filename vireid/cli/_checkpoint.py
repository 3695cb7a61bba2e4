"""Command-line options shared by the commands that load a checkpoint of any format (extract, search, export)."""

from __future__ import annotations

import argparse
from typing import Any


def add_checkpoint_source_options(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-format``, ``--arch``, ``--size``: which file format, and what a foreign file cannot say."""
    parser.add_argument("--checkpoint-format", choices=("vireid", "agw", "fastreid"), default="vireid",
                        help="vireid (default), agw (AGW/CAJ {'net': ...}) or fastreid (AML model1); "
                             "see docs/checkpoints.md")
    parser.add_argument("--arch", default=None, metavar="NAME",
                        help="backbone of an agw/fastreid checkpoint (resnet50, resnet18, ...; default: inferred "
                             "from its tensors)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size (default: the checkpoint's config; agw 288 144, fastreid 384 128)")


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """The source options and ``--flip on|off`` (extract, search; export's ``--flip`` builds the average into its
    graph and is its own)."""
    add_checkpoint_source_options(parser)
    parser.add_argument("--flip", choices=("on", "off"), default=None,
                        help="flip-averaged features (default: the checkpoint's config; agw off, fastreid on)")


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :meth:`vireid.inference.embed.Embedder.load` keyword arguments of those options."""
    return {"checkpoint_format": args.checkpoint_format, "size": tuple(args.size) if args.size else None,
            "flip": None if args.flip is None else args.flip == "on", "arch": args.arch}


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse integer options below 1 (``--batch-size 0`` would otherwise mean "the default" or loop forever)."""
    from vireid.errors import ConfigError

    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least 1")
