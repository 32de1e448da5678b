"""The lock file that serialises management of one daemon.

An exclusive lock is held for a whole start or stop; a shared lock while reading
the daemon's state or connecting to it. The locks are ``flock``-style: they
belong to an open file, so they serialise threads of this process that open the
file separately just as they serialise processes, and the OS drops them when a
process dies.

The file is opened without truncation and, where the OS allows, without
following a symlink, so a lock path that points at a file somebody cares about
never damages it. It is created 0600 (an existing one of ours is made so), and
one owned by another user is refused: ``flock`` needs only read access, so a
user who can open our lock file can hold it forever, blocking ``is_running()``
and ``stop()``.

Each thread keeps its lock files open between calls (``is_running()`` at tens
of thousands of calls a second should not open and close a file each time).
The cache is per thread, because two threads must hold separate open files
for their locks to exclude each other; a cached file that has been deleted
(its link count is 0) is reopened, so a lock file removed and recreated by
someone is followed (by exclusive locks at once, by shared ones within
``_RECHECK_AFTER``); it keeps at most ``_MAX_OPEN`` files, dropping deleted
ones first (a test suite with a daemon per temporary directory uses thousands
of lock files once each); and it is dropped in a forked child, which must not
share its parent's open files.

A ``KeyboardInterrupt`` may land between any two lines. Every lock is owned by
an object from the moment it may be taken, and that object releases it when it
is left (``with``) or, if the interrupt came before that could happen, when it
is dropped (``__del__``, once the interrupt has been handled).

Work that can be cancelled (see ``_cancel``) does not block in ``flock()``
itself when the lock is busy: a helper thread waits for it, so the work can
give up at once, and the helper lets go of the lock if it is granted after that.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING

from . import _cancel, _lock_wait, _platform
from ._errors import DaemonError, hide_frames
from ._files import UnsafeFileError, open_file, own_uids

if TYPE_CHECKING:
    from pathlib import Path

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT
#: Lock files one thread keeps open at most.
_MAX_OPEN = 64
#: A shared lock asks whether its cached file is still the one at the path
#: (link count not 0) at most this often, in seconds. That question is a
#: system call, as expensive as taking the lock: asked on every
#: ``is_running()`` it cost a tenth of the call. Exclusive locks always ask.
_RECHECK_AFTER = 0.01
_monotonic = time.monotonic


def _open(path: Path, identifier: str, *, create: bool = True) -> int | None:
    """Open (or create, 0600) one of our lock or lease files; ``None``: it is missing."""
    flags = _OPEN_FLAGS if create else _OPEN_FLAGS & ~os.O_CREAT
    try:
        fd = open_file(path, flags, mode=0o600, owners=own_uids())
    except FileNotFoundError:
        return None
    except UnsafeFileError as err:
        if err.owner is not None:
            why = "refusing it: whoever can open it can hold it locked for ever"
        elif "symbolic link" in err.problem:
            why = "refusing to follow it"
        else:
            why = "refusing it"
        msg = (
            f"Daemon '{identifier}': lock file {err}; {why}. "
            "Remove it, or choose another path with .lock(path)."
        )
        raise DaemonError(identifier, msg) from err
    except OSError as err:
        msg = (
            f"Daemon '{identifier}': cannot open lock file {str(path)!r}: "
            f"{err.strerror}. Choose another path with .lock(path)."
        )
        raise DaemonError(identifier, msg) from err
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_mode & 0o077:
                fchmod(fd, 0o600)  # made 0644 by an older version: others could lock it
    return fd


def _missing_dir(path: Path, identifier: str) -> DaemonError:
    msg = (
        f"Daemon '{identifier}': cannot create lock file {str(path)!r}: "
        f"directory {str(path.parent)!r} does not exist. Create it, or choose "
        "another path with .lock(path)."
    )
    return DaemonError(identifier, msg)


class Held:
    """An open lock file with a lock on it; ``release()`` drops both.

    Dropped without ``release()`` (an interrupt came first), it releases itself.
    """

    __slots__ = ("_fd", "_pid")

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._pid = os.getpid()

    def release(self) -> None:
        """Unlock and close; calling it twice is harmless."""
        fd = self._fd
        if fd is None:
            return
        try:
            if self._pid == os.getpid():  # a forked child's copy shares the parent's lock
                _platform.unlock_fd(fd)
        finally:
            self._fd = None  # first: a descriptor closed twice may be somebody else's by then
            os.close(fd)  # releases the lock too, if the unlock was interrupted

    def disown(self) -> None:
        """Forget the descriptor without closing it: someone else owns it now."""
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.release()


def acquire(path: Path, identifier: str, *, shared: bool, blocking: bool = True) -> Held | None:
    """Lock ``path`` on a file descriptor of its own (created if missing, never truncated).

    For locks whose number matters (the ``running()`` leases): every call opens
    the file anew, so two calls in one thread hold two separate locks.

    Returns:
        The held lock, or ``None`` if ``blocking`` is false and somebody else
        holds a conflicting lock.

    Raises:
        DaemonError: The lock file cannot be created (its directory is missing
            or not writable), or it is a symlink or somebody else's file.
    """
    # One line: from the open on, an object owns the descriptor (and the lock once taken).
    held = None if (fd := _open(path, identifier)) is None else Held(fd)
    if held is None or fd is None:
        raise _missing_dir(path, identifier)
    token = _cancel.current()
    if blocking and token is not None:
        held.disown()  # _lock_cancellable owns the descriptor while it waits
        _lock_wait.lock_cancellable(fd, shared=shared, token=token)  # closes fd if it raises
        return Held(fd)
    try:
        if not _platform.lock_fd(fd, shared=shared, blocking=blocking):
            held.release()
            return None
    except BaseException:
        held.release()
        raise
    return held


class _Slot:
    """One lock file as one thread keeps it: the open file, and who holds a lock on it."""

    __slots__ = ("entry", "fd", "fresh_until")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: Until when (monotonic) a shared lock may skip asking whether the
        #: file is still the one at its path.
        self.fresh_until = _monotonic() + _RECHECK_AFTER
        #: The holding ``locked``'s entry, ``(shared?,)``: a tuple of its own,
        #: whose identity tells that ``locked`` from any other; ``None``: free.
        self.entry: tuple[bool] | None = None


class _OpenFiles(dict[str, _Slot]):
    """path -> the lock files one thread keeps open; closed with the thread."""

    def __del__(self) -> None:
        for slot in self.values():
            with contextlib.suppress(OSError):
                os.close(slot.fd)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # Lock files this thread keeps open (closed when the thread ends), and
        # the locks it holds on them: one dictionary look-up finds both.
        self.files: dict[str, _Slot] = _OpenFiles()


_state = _ThreadState()


def held() -> dict[str, bool]:
    """The lock files this thread holds a lock on now: path -> whether shared."""
    return {key: slot.entry[0] for key, slot in _state.files.items() if slot.entry is not None}


def _forget_after_fork() -> None:
    # The child has copies of the parent's descriptors: locking them would
    # share the parent's locks. Start over (the copies are closed on exec).
    global _state  # noqa: PLW0603 - replaced wholesale in the child
    _state = _ThreadState()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _deleted(fd: int) -> bool:
    """Whether the open file has no name any more (or cannot be looked at)."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


def _make_room(state: _ThreadState) -> None:
    """Close cached files until there is room for one more: deleted ones, then the oldest.

    Files this thread holds a lock on stay open.
    """
    files = state.files
    idle = [key for key, slot in files.items() if slot.entry is None]
    drop = [key for key in idle if _deleted(files[key].fd)]
    if len(files) - len(drop) >= _MAX_OPEN:
        drop += [key for key in idle if key not in drop][: len(files) - len(drop) - _MAX_OPEN + 1]
    for key in drop:
        with contextlib.suppress(OSError):
            os.close(files.pop(key).fd)


def _cached_slot(path: Path, identifier: str, *, create: bool = True) -> _Slot | None:
    """This thread's open lock file at ``path``, checked; ``None``: it or its directory is missing.

    Not for a file this thread holds a lock on: that one is not replaced.
    """
    state = _state
    files = state.files
    key = str(path)
    cached = files.get(key)
    if cached is not None:
        # Still the file at that path? A deleted lock file (st_nlink 0) must not
        # be locked any more: others lock the new file at the same path.
        if not _deleted(cached.fd):
            cached.fresh_until = _monotonic() + _RECHECK_AFTER
            return cached
        del files[key]
        with contextlib.suppress(OSError):
            os.close(cached.fd)
    fd = _open(path, identifier, create=create)
    if fd is None:
        return None
    if len(files) >= _MAX_OPEN:
        _make_room(state)
    files[key] = slot = _Slot(fd)
    return slot


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
        create: Create the lock file if it is missing. Without it, a missing
            lock file (or directory) runs the block without a lock: for
            read-only questions, which must not leave files behind. A daemon
            never started by us has no lock file; once created it stays, so
            only a very first start can run beside such a question.

    Raises:
        DaemonError: The lock file cannot be created (its directory is missing
            or not writable, or it is a symlink), or this thread asks for an
            exclusive lock while holding the shared one (which would deadlock).
    """

    __slots__ = ("_entry", "_local", "_own_fd", "_slot", "create", "identifier", "path", "shared")

    def __init__(self, path: Path, identifier: str, *, shared: bool, create: bool = True) -> None:
        self.path = path
        self.identifier = identifier
        self.shared = shared
        self.create = create
        # The rest is set by enter() before _slot: nothing reads it while _slot is None.
        self._slot: _Slot | None = None

    def __enter__(self) -> None:
        if not self.enter():  # pragma: no cover - a blocking enter waits until it holds it
            msg = f"Daemon '{self.identifier}': could not lock {str(self.path)!r}"
            raise DaemonError(self.identifier, msg)

    def enter(self, *, blocking: bool = True) -> bool:
        """Take the lock (``with`` does this); ``False`` if not ``blocking`` and taken.

        A lock this thread already holds strongly enough counts as taken by us.
        """
        state = _state
        slot = state.files.get(str(self.path))
        if slot is not None and slot.entry is not None:
            if self.shared or not slot.entry[0]:
                return True  # already held, strongly enough, by this very thread
            msg = (
                f"Daemon '{self.identifier}': cannot start or stop it from code that runs "
                "under its shared lock (for example inside the function given to "
                "connect()); that would wait for itself forever."
            )
            raise DaemonError(self.identifier, msg)
        if slot is None or not self.shared or _monotonic() >= slot.fresh_until:
            slot = _cached_slot(self.path, self.identifier, create=self.create)
            if slot is None:
                if not self.create:
                    return True
                raise _missing_dir(self.path, self.identifier)
        # From here on this object answers for the lock, taken or not yet: an
        # interrupt anywhere below leaves it to __exit__ or __del__ to unlock
        # (unlocking a descriptor not locked yet is harmless).
        self._entry = entry = (self.shared,)
        self._own_fd: int | None = None  # a descriptor of its own, once waited for on one
        self._local = state
        self._slot = slot  # last but one: _release() reads the others once this is set
        slot.entry = entry
        token = _cancel.current() if blocking else None
        if token is None:
            if not _platform.lock_fd(slot.fd, shared=self.shared, blocking=blocking):
                self._release()
                return False
        elif not _platform.lock_fd(slot.fd, shared=self.shared, blocking=False):
            self._wait_cancellable(token)
        return True

    def _wait_cancellable(self, token: _cancel.Token) -> None:
        """Somebody holds the lock: wait in a way that a cancellation can cut short.

        On a descriptor of our own: the thread's cached one is never handed
        to the helper thread that waits.
        """
        try:
            own = _open(self.path, self.identifier)
            if own is None:
                raise _missing_dir(self.path, self.identifier)  # noqa: TRY301 - undone below too
            _lock_wait.lock_cancellable(own, shared=self.shared, token=token)  # closes it on errors
        except BaseException:
            self._release()  # the cached descriptor was not locked: only the entry to undo
            raise
        self._own_fd = own

    def _release(self, *exc_info: object) -> None:  # noqa: ARG002 - also __exit__
        # Whatever line an interrupt stops this at, calling it again (from
        # __del__) finishes the job, and never unlocks a lock taken since by
        # another object on the same descriptor: the slot's entry must still
        # be this object's.
        slot = self._slot
        if slot is None:
            return
        if slot.entry is self._entry:
            own = self._own_fd
            if own is not None:  # waited for on a descriptor of our own: unlock and close it
                self._own_fd = None
                _lock_wait.let_go(own, locked=True)
            elif self._local is _state:  # not a forked child's copy of the parent's lock
                _platform.unlock_fd(slot.fd)
            slot.entry = None
        self._slot = None

    __exit__ = _release

    def __del__(self) -> None:
        if self._slot is not None:  # checked first: this runs after every is_running()
            with contextlib.suppress(OSError, ValueError):
                self._release()
