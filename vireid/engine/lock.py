"""The run-folder lock: one output folder is written by one run at a time.

Two runs writing into one folder at once interleave their checkpoints, logs and results. :class:`RunLock` marks a
folder as owned by one process: ``FOLDER/.vireid.lock`` holds the owner's pid, host, start time and command line,
and the owner holds an exclusive ``flock`` on it. A second process fails at once with an
:class:`~vireid.outputs.OutputError` naming the folder and the owner's pid. The operating system drops a ``flock``
when its process dies, however it dies (``kill -9`` included), so a lock file left by a killed run is recognised as
stale and taken over, with a note naming the previous pid. Where ``flock`` is not available (Windows, some network
file systems) the lock falls back to "the file exists and its pid is alive on this host". A normal exit releases
the lock (the file is removed).

Under ``torchrun`` only one process (global ``RANK`` 0, else ``LOCAL_RANK`` 0) takes the lock: every rank of one
job writes into the same folder on purpose. Writability checks are in :mod:`vireid.outputs`.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import errno
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from vireid.outputs import OutputError, check_writable_dir, os_reason

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".vireid.lock"

__all__ = ["LOCK_NAME", "OutputError", "RunLock", "is_lock_rank", "lock_run_folder"]


# --------------------------------------------------------------------------------------------------------------------
# the run-folder lock


def is_lock_rank() -> bool:
    """True in the one process of a job that takes output locks: not under torchrun, or global rank 0 (else local
    rank 0 when only LOCAL_RANK is set)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.strip():
            try:
                return int(value) == 0
            except ValueError:
                return True
    return True


def _owner_record() -> dict[str, Any]:
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name == "__main__.py" and Path(argv[0]).parent.name == "vireid":  # python -m vireid ...
        name = "vireid"
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([name, *argv[1:]])}


def _parse_owner(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "pid unknown"
    parts = [f"pid {owner['pid']}"]
    if owner.get("host") and owner.get("host") != socket.gethostname():
        parts.append(f"on {owner['host']}")
    if owner.get("started"):
        parts.append(f"started {owner['started']}")
    text = ", ".join(parts)
    if owner.get("command"):
        text += f": {owner['command']}"
    return text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# folder (resolved) -> [lock, depth]: a process may claim a folder it already owns (re-entrant)
_HELD: dict[str, list[Any]] = {}


class RunLock:
    """Exclusive ownership of an output folder by this process (module docstring).

    >>> with RunLock("runs/x"):          # doctest: +SKIP
    ...     train(cfg)

    ``acquire`` creates the folder if needed. ``stale`` is the previous owner's record when a lock left by a dead
    process was taken over (else None). Re-entrant within one process.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "output folder") -> None:
        self.folder = Path(folder).expanduser()
        self.what = what
        self.path = self.folder / LOCK_NAME
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None
        self._key = str(self.folder.resolve())

    # -- public -------------------------------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.what} {self.folder}: cannot be created ({os_reason(exc)})") from None
        if fcntl is not None:
            try:
                self._acquire_flock()
            except _NoFlock:
                self._acquire_pidfile()
        else:  # pragma: no cover - Windows
            self._acquire_pidfile()
        _HELD[self._key] = [self, 1]
        if self.stale is not None:
            print(f"vireid: note: {self.folder}: took over the lock of a run that is no longer running "
                  f"({_describe(self.stale)})", file=sys.stderr)
        return self

    def release(self) -> None:
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self._key]
        owner: RunLock = held[0]
        owner._release()

    def __enter__(self) -> RunLock:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- flock --------------------------------------------------------------------------------------------------
    def _acquire_flock(self) -> None:
        assert fcntl is not None
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.what} {self.folder}: cannot create its lock file "
                                  f"({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(self._read_owner(wait=True)) from None
                raise _NoFlock() from None  # ENOLCK, EINVAL, ENOTSUP: no flock on this file system
            # the file may have been removed (released) between our open and our flock: then lock the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _parse_owner(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
            self.stale = previous if previous is not None and previous["pid"] != os.getpid() else None
            data = (json.dumps(_owner_record()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise OutputError(f"{self.what} {self.folder}: its lock file keeps changing; another process is "
                          "claiming the folder")

    # -- pid file (no flock) ------------------------------------------------------------------------------------
    def _acquire_pidfile(self) -> None:
        data = json.dumps(_owner_record()) + "\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._read_owner(wait=True)
                same_host = owner is not None and owner.get("host", socket.gethostname()) == socket.gethostname()
                if owner is None or not same_host or _pid_alive(int(owner["pid"])):
                    raise self._busy(owner) from None
                # stale: replace it atomically, then check that ours is the one that stayed
                fd_tmp, tmp = tempfile.mkstemp(prefix=".vireid.lock.", dir=self.folder)
                with os.fdopen(fd_tmp, "w") as f:
                    f.write(data)
                os.replace(tmp, self.path)
                if self._read_owner() == json.loads(data):
                    self.stale = owner
                    return
                continue
            except OSError as exc:
                raise OutputError(f"{self.what} {self.folder}: cannot create its lock file "
                                  f"({os_reason(exc)})") from None
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return
        raise self._busy(self._read_owner())

    # -- helpers ------------------------------------------------------------------------------------------------
    def _read_owner(self, wait: bool = False) -> dict[str, Any] | None:
        """The owner record in the lock file; the owner writes it right after locking, so wait a moment for it."""
        import time

        for _ in range(20 if wait else 1):
            try:
                owner = _parse_owner(self.path.read_text(encoding="utf-8"))
            except OSError:
                owner = None
            if owner is not None or not wait:
                return owner
            time.sleep(0.05)
        return None

    def _busy(self, owner: dict[str, Any] | None) -> OutputError:
        return OutputError(f"{self.what} {self.folder} is in use by another vireid run ({_describe(owner)}); wait "
                           f"for it to finish or choose another output folder (a lock left by a killed run is taken "
                           f"over automatically: {self.path})")

    def _release(self) -> None:
        if self._fd is not None:  # flock: remove the file while still holding the lock, then unlock
            try:
                self.path.unlink()
            except OSError:
                pass
            try:
                os.close(self._fd)  # closing drops the flock
            finally:
                self._fd = None
            return
        try:  # pid file: remove it if it is still ours
            owner = self._read_owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink()
        except OSError:
            pass


@atexit.register
def _release_all() -> None:
    """A normal interpreter exit releases every lock still held (a killed process leaves a stale one instead)."""
    for key in list(_HELD):
        held = _HELD.pop(key, None)
        if held is not None:
            held[0]._release()


class _NoFlock(Exception):
    """flock is not supported on this file system."""


def lock_run_folder(folder: str | os.PathLike[str], what: str = "output folder") -> RunLock | None:
    """Check that ``folder`` is writable and lock it for this run (:class:`RunLock`, acquired); None in the
    processes of a torchrun job other than rank 0 (they only check writability). Release it with ``.release()``."""
    check_writable_dir(folder, what)
    if not is_lock_rank():
        return None
    return RunLock(folder, what).acquire()
