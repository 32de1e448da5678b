"""Reading, validating and removing PID files.

A PID file is trusted only as far as it can be checked: the PID is the first
line (PostgreSQL's ``postmaster.pid`` has more lines; they are ignored), it must
be a plain decimal number in the range of real PIDs, and it must not name PID 0
or 1, this process or its parent: signalling any of those would hit something we
did not start. Anything else (missing, empty, binary, huge, a directory, a FIFO,
unreadable) reads as "no PID", never as an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _platform, _process
from ._errors import hide_frames
from ._files import atomic_write

if TYPE_CHECKING:
    from pathlib import Path

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

#: Only this much of a PID file is read: a PID and its newline fit easily.
_READ_LIMIT = 4096
#: ``kill()`` takes a C int; anything larger is not a PID on any platform.
_MAX_PID = 2**31 - 1
_DECIMAL = re.compile(rb"[0-9]{1,10}")
#: A process's recorded creation time may be this much later than the moment it
#: wrote its PID file (boot time is computed in whole seconds on Linux).
_CLOCK_SLACK = 2.0


def parse_pid(data: bytes) -> int | None:
    """Return the PID in the first line of ``data``, or ``None`` if it is not a safe one."""
    first = data.split(b"\n", 1)[0].strip()
    if not _DECIMAL.fullmatch(first):
        return None
    pid = int(first)
    if pid <= 1 or pid > _MAX_PID or pid in (os.getpid(), os.getppid()):
        return None
    return pid


def _read(path: Path | str) -> tuple[bytes, os.stat_result] | None:
    """The first bytes of a regular file and its ``fstat()``, or ``None``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None  # a directory, FIFO or device is not a PID file
        return os.read(fd, _READ_LIMIT), info
    except OSError:
        return None
    finally:
        os.close(fd)


def read_pid(path: Path) -> int | None:
    """The PID recorded in the file, without checking whether it runs."""
    content = _read(path)
    return None if content is None else parse_pid(content[0])


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What a PID file said the last time we looked, and how to re-check cheaply."""

    signature: tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size
    pid: int | None  # None: no live daemon (corrupt, dead or reused)
    handle: _platform.ExitHandle | None  # a pidfd for ``pid``, where the OS has one


_verdicts: dict[str, _Verdict] = {}
_verdicts_lock = threading.Lock()
_MAX_VERDICTS = 256


def _remember(key: str, verdict: _Verdict) -> None:
    with _verdicts_lock:
        old = _verdicts.get(key)
        if len(_verdicts) >= _MAX_VERDICTS and old is None:
            _verdicts.clear()
        # Replaced handles are not closed here: another thread may be polling
        # one right now. They close themselves when the last reference goes.
        _verdicts[key] = verdict


def live_pid(path: Path) -> int | None:
    """The PID in the file if that process is alive and could have written the file.

    A process created after the file was last written cannot be the one that
    wrote it: its PID was reused after the daemon died. That reads as "not
    running", just like a dead PID.

    This is the hot path of ``is_running()`` and ``connect()``. A verdict is
    kept per file together with the file's identity (device, inode, mtime,
    size): while the file is unchanged, only the liveness of the known process
    is re-checked, which with a pidfd is one ``poll()`` — and exact, since a
    pidfd keeps referring to the process it was opened for, even after its PID
    is reused.
    """
    key = str(path)
    try:
        info = os.stat(key)
    except OSError:
        return None
    signature = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    known = _verdicts.get(key)
    if known is not None and known.signature == signature:
        if known.pid is None:
            return None
        if known.handle is not None:
            if known.handle.exited():
                _process.reap(known.pid)  # a daemon we spawned: no zombie of ours
                return None
            return known.pid
    return _examine(key)


def _examine(key: str) -> int | None:
    """Read and verify the PID file from scratch, and remember the verdict."""
    content = _read(key)
    if content is None:
        return None
    data, info = content
    signature = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    pid = parse_pid(data)
    verdict = None if pid is None else _verify(pid, info.st_mtime)
    if verdict is None:
        _remember(key, _Verdict(signature, None, None))
        return None
    live, handle = verdict
    if not live:
        return None  # undecided (a PID reused while we looked): look again next time
    _remember(key, _Verdict(signature, pid, handle))
    return pid


def _verify(pid: int, written: float) -> tuple[bool, _platform.ExitHandle | None] | None:
    """Is ``pid`` a live process that existed when its PID file was written?

    The exit handle is opened *first*: it pins one process, and reading the
    creation time afterwards, then seeing the handle still open, proves both
    belong to the same process.

    Returns:
        ``None`` for no (dead, zombie, or younger than the file: a reused PID);
        ``(True, handle)`` for yes; ``(False, None)`` when undecided.
    """
    handle = _platform.exit_handle(pid)
    if handle is None:  # no pidfd here: psutil, with its zombie check
        if not _process.is_alive(pid):
            return None
        created = _process.create_time(pid)
        return None if created is not None and created > written + _CLOCK_SLACK else (True, None)
    if handle.exited():
        handle.close()
        return None
    created = _process.create_time(pid)
    if handle.exited():
        handle.close()
        return (False, None)
    if created is not None and created > written + _CLOCK_SLACK:
        handle.close()
        return None
    return (True, handle)


def remove(path: Path) -> None:
    """Delete the PID file if it is a file (never a directory); missing is fine."""
    with contextlib.suppress(OSError):
        if not path.is_dir() or path.is_symlink():
            path.unlink()


def remove_if_names(path: Path, pid: int) -> None:
    """Delete the PID file only if it still names ``pid`` (nobody rewrote it)."""
    if read_pid(path) == pid:
        remove(path)


def write(path: Path, pid: int) -> None:
    """Write ``pid`` atomically (see :func:`~daemon_controller._files.atomic_write`).

    Readable by others, like the PID files daemons write themselves.
    """
    atomic_write(path, f"{pid}\n".encode(), mode=0o644)
