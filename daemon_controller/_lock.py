"""The lock file that serialises management of one daemon.

An exclusive lock is held for a whole start or stop; a shared lock while reading
the daemon's state or connecting to it. The locks are ``flock``-style: they
belong to an open file, so they serialise threads of this process that open the
file separately just as they serialise processes, and the OS drops them when a
process dies.

The file is opened without truncation and, where the OS allows, without
following a symlink, so a lock path that points at a file somebody cares about
never damages it.

Each thread keeps its lock files open between calls (``is_running()`` at tens
of thousands of calls a second should not open and close a file each time).
The cache is per thread, because two threads must hold separate open files
for their locks to exclude each other; a cached file that has been deleted
(its link count is 0) is reopened, so a lock file removed and recreated by
someone is followed; and the cache is dropped in a forked child, which must
not share its parent's open files.

Work that can be cancelled (see ``_cancel``) does not block in ``flock()``
itself when the lock is busy: a helper thread waits for it, so the work can
give up at once, and the helper lets go of the lock if it is granted after that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import TYPE_CHECKING

from . import _cancel, _platform
from ._errors import DaemonError

if TYPE_CHECKING:
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


def _missing_dir(path: Path, identifier: str) -> DaemonError:
    msg = (
        f"Daemon '{identifier}': cannot create lock file {str(path)!r}: "
        f"directory {str(path.parent)!r} does not exist. Create it, or choose "
        "another path with .lock(path)."
    )
    return DaemonError(identifier, msg)


class _Claim:
    """A blocking lock request handed to a helper thread, so that its waiter can give up.

    ``flock()`` cannot be interrupted from another thread. A cancellable
    waiter therefore lets a helper thread block in it, on a descriptor of its
    own, and waits for that thread or for the cancellation. If the waiter gives
    up first, the descriptor is the helper's: once the lock is granted, the
    helper releases it and closes the descriptor. Whoever decides second
    cleans up, under one mutex, so the lock never stays held by nobody.
    """

    __slots__ = ("abandoned", "answered", "error", "fd", "guard", "shared", "token")

    def __init__(self, fd: int, *, shared: bool, token: _cancel.Token) -> None:
        self.fd = fd
        self.shared = shared
        self.token = token
        self.guard = threading.Lock()
        self.answered = False  # the lock was granted, or failed
        self.abandoned = False
        self.error: BaseException | None = None

    def run(self) -> None:
        """In the helper thread: wait for the lock, then hand it over or let it go."""
        try:
            _platform.lock_fd(self.fd, shared=self.shared)
        except BaseException as err:  # noqa: BLE001 - handed to the waiter, who raises it
            error: BaseException | None = err
        else:
            error = None
        with self.guard:
            self.error = error
            self.answered = True
            abandoned = self.abandoned
        if abandoned:
            _let_go(self.fd, locked=error is None)
        self.token.notify()

    def wait(self) -> None:
        """In the waiter: return holding the lock, or raise ``Cancelled`` (or the lock's error)."""
        self.token.wait_for(lambda: self.answered)
        with self.guard:
            if not self.answered:
                self.abandoned = True  # the helper lets go of it once granted
                raise _cancel.Cancelled
        if self.error is not None:
            os.close(self.fd)
            raise self.error


def _let_go(fd: int, *, locked: bool) -> None:
    try:
        if locked:
            _platform.unlock_fd(fd)
    finally:
        os.close(fd)


def _lock_cancellable(fd: int, *, shared: bool, token: _cancel.Token) -> None:
    """Lock ``fd`` (waiting), or raise ``Cancelled`` as soon as ``token`` is cancelled.

    On ``Cancelled`` (or another error) ``fd`` has been, or will be, closed
    by someone else: the caller must not touch it again.
    """
    try:
        token.check()
        if _platform.lock_fd(fd, shared=shared, blocking=False):
            return
    except BaseException:
        os.close(fd)
        raise
    claim = _Claim(fd, shared=shared, token=token)
    threading.Thread(target=claim.run, name="daemon_controller lock wait", daemon=True).start()
    claim.wait()


class Held:
    """An open lock file with a lock on it; ``release()`` drops both."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock and close; calling it twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                _platform.unlock_fd(fd)
            finally:
                os.close(fd)


def acquire(path: Path, identifier: str, *, shared: bool, blocking: bool = True) -> Held | None:
    """Lock ``path`` on a file descriptor of its own (created if missing, never truncated).

    For locks whose number matters (the ``running()`` leases): every call opens
    the file anew, so two calls in one thread hold two separate locks.

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
    token = _cancel.current()
    if blocking and token is not None:
        _lock_cancellable(fd, shared=shared, token=token)  # closes fd if it raises
        return Held(fd)
    try:
        if not _platform.lock_fd(fd, shared=shared, blocking=blocking):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return Held(fd)


class _OpenFiles(dict[str, int]):
    """path -> fd of the lock files one thread keeps open; closed with the thread."""

    def __del__(self) -> None:
        for fd in self.values():
            with contextlib.suppress(OSError):
                os.close(fd)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # Lock files this thread keeps open (closed when the thread ends).
        self.files: dict[str, int] = _OpenFiles()
        # path -> shared?: the daemon locks this thread holds right now.
        self.held: dict[str, bool] = {}


_state = _ThreadState()


def _forget_after_fork() -> None:
    # The child has copies of the parent's descriptors: locking them would
    # share the parent's locks. Start over (the copies are closed on exec).
    global _state  # noqa: PLW0603 - replaced wholesale in the child
    _state = _ThreadState()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _cached_fd(path: Path, identifier: str) -> int | None:
    """This thread's open descriptor for ``path`` (``None``: directory missing)."""
    files = _state.files
    key = str(path)
    cached = files.get(key)
    if cached is not None:
        # Still the file at that path? A deleted lock file (st_nlink 0) must not
        # be locked any more: others lock the new file at the same path.
        try:
            if os.fstat(cached).st_nlink > 0:
                return cached
        except OSError:
            pass
        del files[key]
        with contextlib.suppress(OSError):
            os.close(cached)
    fd = _open(path, identifier)
    if fd is None:
        return None
    files[key] = fd
    return fd


class locked:  # noqa: N801 - used like a function: ``with locked(...)``
    """Hold the daemon's lock file for the duration of a ``with`` block.

    Re-entrant within a thread: code running under the lock (a ``connect()``
    function, ``before_start``) may call ``is_running()`` or ``read_pid()``
    without deadlocking on its own lock.

    In work that can be cancelled (``_cancel.current()`` is a token), a wait
    for the lock ends with ``Cancelled`` as soon as the token is cancelled.

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

    __slots__ = ("_fd", "_key", "_own_fd", "identifier", "missing_dir_ok", "path", "shared")

    def __init__(
        self, path: Path, identifier: str, *, shared: bool, missing_dir_ok: bool = False
    ) -> None:
        self.path = path
        self.identifier = identifier
        self.shared = shared
        self.missing_dir_ok = missing_dir_ok
        self._fd: int | None = None
        self._own_fd = False  # a descriptor of its own, not the thread's cached one
        self._key = ""

    def __enter__(self) -> None:
        if not self.enter():  # pragma: no cover - a blocking enter waits until it holds it
            msg = f"Daemon '{self.identifier}': could not lock {str(self.path)!r}"
            raise DaemonError(self.identifier, msg)

    def enter(self, *, blocking: bool = True) -> bool:
        """Take the lock (``with`` does this); ``False`` if not ``blocking`` and taken.

        A lock this thread already holds strongly enough counts as taken by us.
        """
        key = str(self.path)
        state = _state
        current = state.held.get(key)
        if current is not None:
            if self.shared or not current:
                return True  # already held, strongly enough, by this very thread
            msg = (
                f"Daemon '{self.identifier}': cannot start or stop it from code that runs "
                "under its shared lock (for example inside the function given to "
                "connect()); that would wait for itself forever."
            )
            raise DaemonError(self.identifier, msg)
        fd = state.files.get(key)
        if fd is None or os.fstat(fd).st_nlink == 0:
            fd = _cached_fd(self.path, self.identifier)
            if fd is None:
                if self.missing_dir_ok:
                    return True
                raise _missing_dir(self.path, self.identifier)
        token = _cancel.current() if blocking else None
        if token is None:
            if not _platform.lock_fd(fd, shared=self.shared, blocking=blocking):
                return False
        elif not _platform.lock_fd(fd, shared=self.shared, blocking=False):
            # Somebody holds it: wait in a way that a cancellation can cut short,
            # on a descriptor of our own (the cached one is never handed away).
            fd = _open(self.path, self.identifier)
            if fd is None:
                raise _missing_dir(self.path, self.identifier)
            _lock_cancellable(fd, shared=self.shared, token=token)
            self._own_fd = True
        state.held[key] = self.shared
        self._fd, self._key = fd, key
        return True

    def __exit__(self, *exc_info: object) -> None:
        fd = self._fd
        if fd is not None:
            self._fd = None
            del _state.held[self._key]
            if self._own_fd:
                self._own_fd = False
                _let_go(fd, locked=True)
            else:
                _platform.unlock_fd(fd)
