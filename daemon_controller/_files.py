"""The files a daemon is managed through, in one place, and safe ways to touch them.

A daemon has a PID file (the daemon's or ours) and a lock file; the lock
file's name is the stem of the library's side files:

* ``<lock>.users`` — shared locks of the ``running()`` blocks inside;
* ``<lock>.owner`` — the PID a ``running()`` block started;
* ``<lock>.failure`` — the last failed start, shared with those who waited for it;
* ``<lock>.status`` — the last ``STATUS=`` a ``notify()`` daemon sent while it started.

Everything here is below the rest of the library: no module of ours is
imported, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: At most this much of a file's text is kept for a message (a log tail).
TAIL_LIMIT = 64 * 1024

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class DaemonFiles:
    """The PID file, the lock file and the side files derived from the lock file.

    Attributes:
        pid: Where the daemon's PID is recorded.
        lock: The lock file serialising starts and stops.
        users: Shared locks on it count the ``running()`` blocks inside.
        owner: Names the daemon PID that a ``running()`` block started.
        failure: The record of the last failed start.
        status: The last ``STATUS=`` text a ``notify()`` daemon sent, with its PID.
    """

    pid: Path
    lock: Path
    users: Path = field(init=False, repr=False, compare=False)
    owner: Path = field(init=False, repr=False, compare=False)
    failure: Path = field(init=False, repr=False, compare=False)
    status: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for suffix in ("users", "owner", "failure", "status"):
            object.__setattr__(self, suffix, self.lock.with_name(f"{self.lock.name}.{suffix}"))

    @classmethod
    def of(cls, pid: Path, lock: Path | None) -> DaemonFiles:
        """The files of a daemon: ``lock`` defaults to the PID file plus ``.lock``."""
        return cls(pid, lock if lock is not None else pid.with_name(pid.name + ".lock"))


def default_stem(name: str, *identity: str) -> str:
    """A file name stem for a daemon's default files: readable, and unique per daemon.

    The hash covers the name and everything else in ``identity`` (the
    working directory, the start command), so two projects' daemons of the
    same name never share files.
    """
    import hashlib  # noqa: PLC0415 - a few ms of import time, needed only for default files

    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "daemon"
    digest = hashlib.sha256("\0".join((name, *identity)).encode()).hexdigest()
    return f"{slug[:40]}-{digest[:12]}"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` at once: a temporary file beside it, then a rename.

    Readers see the old content or the new one, never half of it, and a
    symlink at ``path`` is replaced instead of written through.

    Raises:
        OSError: The directory is missing or not writable.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_tail(
    path: Path | str,
    *,
    since: int | None = None,
    inode: int | None = None,
    limit: int = TAIL_LIMIT,
) -> str | None:
    """The text of a regular file after byte ``since``, at most its last ``limit`` bytes.

    Opened without blocking, so a FIFO planted where a log should be never
    hangs us; only regular files are read.

    Args:
        path: The file.
        since: Read from this offset (``None``: from the start). A file now
            shorter than that, or not the file ``inode`` names any more (log
            rotation replaced it), is read from its start: all of it is new.
        inode: The inode the file had when ``since`` was taken.
        limit: Read at most this many bytes: the last ones.

    Returns:
        The text (undecodable bytes replaced), ``""`` for a missing file, or
        ``None`` for something that is not a readable regular file.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        start = since or 0
        if info.st_size < start or (inode is not None and info.st_ino != inode):
            start = 0
        start = max(start, info.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")
