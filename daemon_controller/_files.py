"""Reading the end of a file someone else writes (a daemon's log), safely.

A log path comes from configuration and the file from the daemon: it may be
missing, a FIFO (opening one for reading blocks until a writer appears), a
device, or grow without end. :func:`read_tail` opens it non-blocking, reads
regular files only, and never more than a fixed number of bytes.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: What a caller reads by default: enough for a failure report, small enough to print.
DEFAULT_LIMIT = 64 * 1024

# O_NONBLOCK: a FIFO planted at the path must not hang the open. O_BINARY: no
# newline translation on Windows, so offsets are byte offsets.
_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def read_tail(
    path: str | Path, *, since: int | None = None, limit: int = DEFAULT_LIMIT
) -> str | None:
    """The end of the regular file ``path``, decoded as UTF-8 (bad bytes replaced).

    Args:
        path: The file.
        since: A byte offset, typically the file's size taken earlier: return
            what was written after it. A file now shorter than ``since`` was
            truncated or replaced (log rotation), so all of it counts as new.
            ``None``: the end of the file, whatever came before.
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
        fd = os.open(path, _FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the stat and the open
            return None
        start = 0 if since is None or since > info.st_size else since
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
