"""Loading a config for the command line so that a bad ``--set`` value is blamed on the ``--set`` argument."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_cli_config(path: str | None, overrides: list[str]) -> Any:
    """:func:`vireid.config.load_config` of ``path`` with ``overrides``; when that fails but the file alone is
    valid, the error names the ``--set KEY=VALUE`` argument responsible instead of the YAML file (issue 12).

    The file is parsed a second time only on that error path.
    """
    from vireid.config import load_config
    from vireid.errors import ConfigError

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        if not overrides:
            raise
        try:
            load_config(path, [])
        except ConfigError:
            raise exc from None  # the file itself is wrong: its own message names it
        message = str(exc)
        source = str(Path(path)) if path is not None else "<defaults>"
        if message.startswith(f"{source}: "):
            message = message[len(source) + 2:]
        guilty = [ov for ov in overrides if _mentions(message, ov.partition("=")[0].strip())]
        named = " ".join(guilty or overrides)
        raise ConfigError(f"--set {named}: {message}") from None


def _mentions(message: str, key: str) -> bool:
    return bool(key) and any(form in message for form in (f"'{key}'", f"{key}=", f" {key} ", f"'{key}."))
