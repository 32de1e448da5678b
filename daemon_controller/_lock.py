"""The lock file that serialises management of one daemon.

An exclusive lock is held for a whole start or stop; a shared lock while reading
the daemon's state or connecting to it. The locks are ``flock``-style (through
portalocker): they belong to an open file, so they serialise threads of this
process that open the file separately just as they serialise processes, and the
OS drops them when a process dies.

The file is opened without truncation and, where the OS allows, without
following a symlink, so a lock path that points at a file somebody cares about
never damages it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING

import portalocker

from ._errors import DaemonError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_OPEN_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _open(path: Path, identifier: str) -> int | None:
    try:
        return os.open(path, _OPEN_FLAGS, 0o644)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            msg = (
                f"Daemon '{identifier}': lock file {str(path)!r} is a symbolic link; "
                "refusing to follow it. Choose another path with .lock(path)."
            )
        else:
            msg = (
                f"Daemon '{identifier}': cannot open lock file {str(path)!r}: "
                f"{err.strerror}. Choose another path with .lock(path)."
            )
        raise DaemonError(identifier, msg) from err


@contextlib.contextmanager
def locked(
    path: Path,
    identifier: str,
    *,
    shared: bool,
    missing_dir_ok: bool = False,
) -> Iterator[None]:
    """Hold the lock file locked for the duration of the block.

    Args:
        path: The lock file; created if missing, never truncated.
        identifier: The daemon's name, for error messages.
        shared: A shared (reader) lock instead of an exclusive one.
        missing_dir_ok: If the lock file's directory does not exist, run the
            block without a lock instead of failing. For read-only questions:
            without the directory there can be no PID file either.

    Raises:
        DaemonError: The lock file cannot be created (its directory is missing
            or not writable, or it is a symlink).
    """
    fd = _open(path, identifier)
    if fd is None:
        if missing_dir_ok:
            yield
            return
        msg = (
            f"Daemon '{identifier}': cannot create lock file {str(path)!r}: "
            f"directory {str(path.parent)!r} does not exist. Create it, or choose "
            "another path with .lock(path)."
        )
        raise DaemonError(identifier, msg)
    with os.fdopen(fd, "r+b", buffering=0) as handle:
        flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
        portalocker.lock(handle, flags)
        try:
            yield
        finally:
            portalocker.unlock(handle)
