"""The ``vireid`` command line: thin argument parsing that calls the Python API.

Each command lives in its own module of this package and exposes ``NAME``, ``HELP`` (one line for ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch, models) happen inside ``run`` so that
``vireid --help`` stays instant.

Errors caused by bad input are :class:`vireid.errors.VireidError`; they are printed as one line
(``vireid: error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from vireid import __version__
from vireid.errors import VireidError

# Commands are discovered from the modules of this package; this is their order in ``vireid --help``
# (the main job first, then the research loop, then practitioner tools, then utilities). Unlisted ones come last.
_ORDER = (
    "demo", "train", "test", "evaluate", "synth", "data", "extract", "search", "report", "calibrate", "export",
    "config",
)


def _load_commands() -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    mods = [importlib.import_module(f"vireid.cli.{name}") for name in names]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(mods, key=lambda m: (rank.get(m.NAME, len(rank)), m.NAME))


class _OneLineCommands(argparse.RawDescriptionHelpFormatter):
    """Keeps every command's help on its name's line: argparse sizes the name column without the sub-command
    indent, so names longer than 8 characters (``calibrate``) would otherwise wrap onto a line of their own."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.help is argparse.SUPPRESS or not isinstance(action, argparse._SubParsersAction):
            return
        names = [self._format_action_invocation(choice) for choice in action._get_subactions()]
        if names:
            width = max(map(len, names)) + self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vireid",
        description="vireid: visible-infrared person re-identification toolkit.",
        formatter_class=lambda prog: _OneLineCommands(prog, max_help_position=16, width=110),
        epilog="Run `vireid COMMAND --help` for a command's options. Start with `vireid demo`.",
    )
    parser.add_argument("--version", action="version", version=f"vireid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except VireidError as exc:
        print(f"vireid: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vireid: interrupted", file=sys.stderr)
        return 130
