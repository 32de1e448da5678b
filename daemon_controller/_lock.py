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
import threading
from typing import TYPE_CHECKING, BinaryIO

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


class Held:
    """An open lock file with a lock on it; ``release()`` drops both."""

    __slots__ = ("_handle",)

    def __init__(self, handle: BinaryIO) -> None:
        self._handle: BinaryIO | None = handle

    def release(self) -> None:
        """Unlock and close; calling it twice is harmless."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                portalocker.unlock(handle)
            finally:
                handle.close()


def _missing_dir(path: Path, identifier: str) -> DaemonError:
    msg = (
        f"Daemon '{identifier}': cannot create lock file {str(path)!r}: "
        f"directory {str(path.parent)!r} does not exist. Create it, or choose "
        "another path with .lock(path)."
    )
    return DaemonError(identifier, msg)


def acquire(path: Path, identifier: str, *, shared: bool, blocking: bool = True) -> Held | None:
    """Lock ``path`` (created if missing, never truncated).

    Returns:
        The held lock, or ``None`` if ``blocking`` is false and somebody else
        holds a conflicting lock.

    Raises:
        DaemonError: The lock file cannot be created (its directory is missing
            or not writable, or it is a symlink).
    """
    fd = _open(path, identifier)
    if fd is None:
        raise _missing_dir(path, identifier)
    handle = os.fdopen(fd, "r+b", buffering=0)
    flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
    if not blocking:
        flags |= portalocker.LockFlags.NON_BLOCKING
    try:
        portalocker.lock(handle, flags)
    except portalocker.AlreadyLocked:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return Held(handle)


#: The daemon locks this thread holds: path -> shared? (True) or exclusive (False).
_thread_state = threading.local()


def _held_here() -> dict[str, bool]:
    held: dict[str, bool] | None = getattr(_thread_state, "held", None)
    if held is None:
        held = _thread_state.held = {}
    return held


@contextlib.contextmanager
def locked(
    path: Path,
    identifier: str,
    *,
    shared: bool,
    missing_dir_ok: bool = False,
) -> Iterator[None]:
    """Hold the lock file locked for the duration of the block.

    Re-entrant within a thread: code running under the lock (a ``connect()``
    function, ``before_start``) may call ``is_running()`` or ``read_pid()``
    without deadlocking on its own lock.

    Args:
        path: The lock file; created if missing, never truncated.
        identifier: The daemon's name, for error messages.
        shared: A shared (reader) lock instead of an exclusive one.
        missing_dir_ok: If the lock file's directory does not exist, run the
            block without a lock instead of failing. For read-only questions:
            without the directory there can be no PID file either.

    Raises:
        DaemonError: The lock file cannot be created (its directory is missing
            or not writable, or it is a symlink), or this thread asks for an
            exclusive lock while holding the shared one (which would deadlock).
    """
    held_here = _held_here()
    key = str(path)
    current = held_here.get(key)
    if current is not None:
        if shared or not current:
            yield  # already held, strongly enough, by this very thread
            return
        msg = (
            f"Daemon '{identifier}': cannot start or stop it from code that runs under "
            "its shared lock (for example inside the function given to connect()); "
            "that would wait for itself forever."
        )
        raise DaemonError(identifier, msg)
    if missing_dir_ok and not path.parent.is_dir():
        yield
        return
    held = acquire(path, identifier, shared=shared)
    assert held is not None  # noqa: S101 - a blocking acquire returns a lock
    held_here[key] = shared
    try:
        yield
    finally:
        del held_here[key]
        held.release()
