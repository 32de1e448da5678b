"""The files a daemon is managed through, in one place, and safe ways to touch them.

A daemon has a PID file (the daemon's or ours) and a lock file; the lock
file's name is the stem of the library's side files:

* ``<lock>.users`` — shared locks of the ``running()`` blocks inside;
* ``<lock>.owner`` — the PID a ``running()`` block started;
* ``<lock>.failure`` — the last failed start, shared with those who waited for it;
* ``<lock>.port`` — the TCP port chosen for the daemon when it started;
* ``<lock>.prepared`` — which prepared template its run directory was copied from.

And :func:`read_tail`, for the end of a file someone else writes (a daemon's
log): it may be missing, a FIFO (opening one for reading blocks until a writer
appears), a device, or grow without end.

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

# O_NONBLOCK: a FIFO planted at the path must not hang the open. O_BINARY: no
# newline translation on Windows, so offsets are byte offsets.
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


@dataclass(frozen=True, slots=True)
class DaemonFiles:
    """The PID file, the lock file and the side files derived from the lock file.

    Attributes:
        pid: Where the daemon's PID is recorded.
        lock: The lock file serialising starts and stops.
        users: Shared locks on it count the ``running()`` blocks inside.
        owner: Names the daemon PID that a ``running()`` block started.
        failure: The record of the last failed start.
        port: The port the daemon was given when it started (``port()``).
        prepared: The fingerprint of the template its run directory was copied from.
    """

    pid: Path
    lock: Path
    users: Path = field(init=False, repr=False, compare=False)
    owner: Path = field(init=False, repr=False, compare=False)
    failure: Path = field(init=False, repr=False, compare=False)
    port: Path = field(init=False, repr=False, compare=False)
    prepared: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for suffix in ("users", "owner", "failure", "port", "prepared"):
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
    path: str | Path,
    *,
    since: int | None = None,
    inode: int | None = None,
    limit: int = TAIL_LIMIT,
) -> str | None:
    """The end of the regular file ``path``, decoded as UTF-8 (bad bytes replaced).

    Args:
        path: The file.
        since: A byte offset, typically the file's size taken earlier: return
            what was written after it. A file now shorter than ``since`` was
            truncated or replaced (log rotation), so all of it counts as new.
            ``None``: the end of the file, whatever came before.
        inode: The file's inode when ``since`` was taken: a file at ``path``
            with another inode replaced it (log rotation), so all of it is new.
        limit: At most this many bytes are read, the last ones: with ``since``,
            the last ``limit`` bytes of what came after it. A cut may fall
            inside a line or a multi-byte character. ``0`` reads nothing.

    Returns:
        The text (``""`` when there is nothing new), or ``None`` when ``path``
        is not a regular file that can be read: missing, a directory, a FIFO, a
        device, or not readable by us.

    Raises:
        ValueError: ``limit`` or ``since`` is negative.
    """
    if limit < 0 or (since is not None and since < 0):
        msg = f"limit and since must be 0 or more, not {limit} and {since}"
        raise ValueError(msg)
    try:
        # Look before opening: opening some devices has effects of its own.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the stat and the open
            return None
        replaced = inode is not None and info.st_ino != inode
        start = 0 if since is None or since > info.st_size or replaced else since
        start = max(start, info.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        chunks: list[bytes] = []
        wanted = min(limit, info.st_size - start)  # the file may grow meanwhile: not past the cap
        while wanted > 0:
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")
