"""Output locations checked before any work starts: an unwritable output is one line up front, not a traceback
after minutes of work.

:func:`check_writable_dir` and :func:`check_writable_file` find the nearest existing folder on the way to the output
and *try* to create a probe file there: permission bits say nothing when running as root, and nothing about
read-only or virtual file systems (a path under ``/proc``). A path under a regular file is named as such. Nothing is
left behind and no folder is created. This module imports neither torch nor NumPy (``vireid evaluate`` stays
torch-free); the run-folder lock is :mod:`vireid.engine.lock`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from vireid.errors import VireidError

__all__ = ["OutputError", "check_writable_dir", "check_writable_file", "os_reason"]


class OutputError(VireidError):
    """An output location cannot be used: it cannot be written, or another run owns it."""


# --------------------------------------------------------------------------------------------------------------------
# writability


def os_reason(exc: OSError) -> str:
    """A short reason for a failed probe (the errno text, with what it usually means here)."""
    code = exc.errno
    if code == errno.EROFS:
        return "read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOSPC:
        return "no space left on the device"
    if code == errno.ENOENT:
        return "the file system does not allow new files there (a virtual file system such as /proc?)"
    return exc.strerror or type(exc).__name__


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (as anything: folder, file, link target)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return p
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check that ``path`` is (or can become) a folder this process can write files into; returns it as a Path.

    Nothing is created: the nearest existing folder on the way (``path`` itself when it exists) gets a probe file
    that is removed at once. Raises :class:`OutputError` (one line: ``what``, the path, the reason) when an
    existing part of the path is a file, or when the probe cannot be created.
    """
    out = Path(path).expanduser()
    if str(out) == "":
        raise OutputError(f"{what}: empty path; give a folder")
    base = _nearest_existing(out.absolute())
    if base == out.absolute() and not base.is_dir():
        raise OutputError(f"{what} {out}: is a file, not a folder; give a folder (or remove the file)")
    if not base.is_dir():
        raise OutputError(f"{what} {out}: cannot be created because {base} is a file, not a folder; "
                          "choose another location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vireid-write-probe-", dir=base)
    except OSError as exc:
        where = "in it" if base == out.absolute() else f"in {base}"
        raise OutputError(f"{what} {out}: cannot write {where} ({os_reason(exc)}); "
                          "choose a writable location") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return out


def check_writable_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Check that the file ``path`` can be (re)written: its folder is writable (:func:`check_writable_dir`), it is
    not a folder, and an existing file can be opened for writing (its content is left untouched)."""
    out = Path(path).expanduser()
    if str(out) in ("", "."):
        raise OutputError(f"{what}: empty path; give a file name")
    if out.is_dir():
        raise OutputError(f"{what} {out}: is a folder; give a file name")
    check_writable_dir(out.parent if str(out.parent) else Path("."), f"folder of the {what}")
    if out.exists():
        try:
            with open(out, "ab"):
                pass
        except OSError as exc:
            raise OutputError(f"{what} {out}: exists and cannot be overwritten ({os_reason(exc)})") from None
    return out
