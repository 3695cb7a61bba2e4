"""``vireid config show FILE [--set k=v ...]``: print the resolved config (defaults + file + overrides)."""

from __future__ import annotations

import argparse
import json

NAME = "config"
HELP = "Show a config resolved from defaults, a YAML file and --set overrides."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config as YAML (or JSON)")
    show.add_argument("file", nargs="?", help="YAML config file (omit for the defaults)")
    show.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                      help="dotted overrides, e.g. --set data.root=/x train.epochs=5")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    from vireid.cli._overrides import load_cli_config
    from vireid.config import dump_yaml, to_dict

    cfg = load_cli_config(args.file, args.overrides)
    print(json.dumps(to_dict(cfg), indent=2) if args.json else dump_yaml(cfg), end="" if not args.json else "\n")
    return 0
