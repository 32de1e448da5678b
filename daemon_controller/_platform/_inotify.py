"""Linux inotify in a few lines of ctypes: a descriptor that wakes a wait when a file changes.

A start waits for files that may not exist yet (a PID file, a log that is
created, rotated or truncated meanwhile), so it watches their *directories*
and picks out the events that name them. A symlinked file is watched where
its link lives and where it points.

Closing an inotify descriptor makes the kernel wait for a grace period
(5-25 ms on a busy VM), which a start that is ready must not spend. So a
finished watch only removes its watches (microseconds) and its descriptor
waits, idle, for the next start of this process; a forked child drops the
idle ones (closing its copies is cheap: the parent still holds them).

Why not a dependency: ``inotify_simple`` (the smallest well-kept one) wraps
the same three libc calls; for us it would add a package and its import time
without saving more than the thirty lines below. Where libc has no
``inotify_init1`` (macOS, the BSDs), :func:`watch_files` returns ``None``
and the caller polls.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

# The type checker reads this module for POSIX only (see _posix).
assert sys.platform != "win32" or not TYPE_CHECKING  # noqa: S101 - a type-checker directive

# From <sys/inotify.h>: what happens to a file inside a watched directory.
_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000  # the watch is gone (its directory was removed)
_IN_ONLYDIR = 0x1000000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_libc: Any = None
#: Descriptors without watches, kept for the next start (see the module's docstring).
_idle: list[int] = []
_idle_lock = threading.Lock()
_MAX_IDLE = 4


def _forget_idle() -> None:
    for fd in _idle:
        with contextlib.suppress(OSError):
            os.close(fd)
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle)


def _inotify() -> Any:  # noqa: ANN401 - a ctypes library, or False where there is none
    """The C library if it has inotify (looked up once), else ``False``."""
    global _libc  # noqa: PLW0603 - a cache of one ctypes handle
    if _libc is None:
        _libc = False
        with contextlib.suppress(OSError, AttributeError, ImportError):
            import ctypes  # noqa: PLC0415 - 2 ms of import time, only when a start waits

            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc = libc
    return _libc


class FileWatch:
    """Readable when one of the watched files is created, written, renamed or removed.

    Attributes:
        complete: Whether every file is watched (a missing directory cannot
            be): where not, the caller must also poll.
    """

    __slots__ = ("_fd", "_names", "complete")

    def __init__(self, fd: int, names: dict[int, set[bytes]], *, complete: bool) -> None:
        self._fd = fd
        self._names = names
        self.complete = complete

    def fileno(self) -> int:
        """The inotify descriptor, for a wait on several descriptors."""
        return self._fd

    def changed(self) -> bool:
        """Read the pending events: whether any of them concerns a watched file.

        Events about other files in the same directories are dropped. A lost
        event (the kernel's queue overflowed) counts as a change, and so does
        a directory that went away, after which the watch is no longer complete.
        """
        found = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                return found
            except OSError:
                self.complete = False
                return True
            if not data:
                return found
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if mask & _IN_Q_OVERFLOW:
                    found = True
                elif mask & _IN_IGNORED:
                    if wd in self._names:  # (not an earlier user's watch)
                        self.complete = False
                        found = True
                elif name in self._names.get(wd, ()):
                    found = True

    def close(self) -> None:
        """Stop watching; the descriptor is kept for reuse (see the module's docstring)."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        libc = _inotify()
        for wd in self._names:
            libc.inotify_rm_watch(fd, wd)
        self._names = {}
        with contextlib.suppress(OSError):
            while os.read(fd, 64 * 1024):  # the IN_IGNORED events of those removals
                pass
        with _idle_lock:
            if len(_idle) < _MAX_IDLE:
                _idle.append(fd)
                return
        os.close(fd)


def watch_files(paths: Iterable[Path]) -> FileWatch | None:
    """A :class:`FileWatch` on ``paths``, or ``None`` where there is no inotify."""
    libc = _inotify()
    if not libc:
        return None
    with _idle_lock:
        fd = _idle.pop() if _idle else libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    names: dict[int, set[bytes]] = {}
    complete = True
    for path in paths:
        places = {os.path.abspath(path), os.path.realpath(path)}
        for place in places:
            directory, name = os.path.split(place)
            wd = libc.inotify_add_watch(fd, os.fsencode(directory), _MASK)
            if wd < 0:
                complete = False  # no such directory (yet), or no permission
                continue
            names.setdefault(wd, set()).add(os.fsencode(name))
    return FileWatch(fd, names, complete=complete)
