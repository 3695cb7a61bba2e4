"""Error types whose message is meant for the user.

Every error raised because of bad input (a file, a config value, a checkpoint) is a :class:`VireidError`.
Its message is one line that names the file/line/field, says what was expected and what to do.
The command line prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class VireidError(Exception):
    """Bad input the user can fix; the message is shown as-is on one line."""


class ConfigError(VireidError):
    """A config file or override is invalid (unknown key, wrong type, value not allowed)."""


class DataError(VireidError):
    """A dataset layout, list file or image is unusable."""


class FeaturesError(VireidError):
    """A features file (.npz) does not follow the documented contract."""


class CheckpointError(VireidError):
    """A checkpoint cannot be used (missing, corrupt, another architecture or trial)."""


def where(file: object | None = None, line: int | None = None) -> str:
    """Format a location prefix such as ``exp/train_id.txt:3: `` (empty when nothing is known)."""
    if file is None:
        return ""
    return f"{file}:{line}: " if line is not None else f"{file}: "
