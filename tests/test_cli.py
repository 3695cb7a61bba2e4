"""The `vireid` entry point: --version, --help listing every command on one line, `python -m vireid`."""

from __future__ import annotations

import subprocess
import sys

from vireid import __version__
from vireid.cli import _load_commands, build_parser, main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"vireid {__version__}"


def test_help_lists_every_command_on_one_line():
    text = build_parser().format_help()
    lines = text.splitlines()
    commands = _load_commands()
    assert len(commands) >= 1
    for mod in commands:
        hits = [ln for ln in lines if ln.strip().startswith(mod.NAME + " ")]
        assert hits, f"{mod.NAME} missing from --help"
        assert mod.HELP in hits[0], f"help of {mod.NAME} is wrapped or missing: {hits[0]!r}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "commands:" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "vireid", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vireid {__version__}"


def test_demo_help_states_the_real_default_identity_count():
    from vireid.demo import DEMO_IDS

    text = " ".join(_demo_help().split())   # argparse wraps the help text
    assert f"(default {DEMO_IDS})" in text


def _demo_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["demo"].format_help()
