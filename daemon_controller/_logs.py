"""Following a daemon's log file during a start: is it active, and what is new in it."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from . import _platform
from ._files import read_tail

if TYPE_CHECKING:
    from pathlib import Path


class LogWatch:
    """The daemon's log as seen from the moment a start began.

    A log that does not exist yet counts as empty, so a log created during the
    start is all new. A log that is not a regular file (``/dev/stderr``, a FIFO)
    cannot be read back: its text is ``None``.
    """

    __slots__ = ("inode", "offset", "path", "readable", "signature")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readable = str(path) not in _platform.PASSTHROUGH_LOG_PATHS
        self.offset = 0
        self.inode: int | None = None
        self.signature: tuple[int, int] | None = None
        info = self._stat()
        if info is not None:
            if stat.S_ISREG(info.st_mode):
                self.offset = info.st_size
                self.inode = info.st_ino
                self.signature = (info.st_size, info.st_mtime_ns)
            else:
                self.readable = False

    @property
    def passthrough(self) -> bool:
        """Whether the log is our own terminal (the daemon's output is not captured)."""
        return str(self.path) in _platform.PASSTHROUGH_LOG_PATHS

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except OSError:
            return None

    def changed(self) -> bool:
        """Whether the log grew or was touched since the last call."""
        info = self._stat()
        signature = None if info is None else (info.st_size, info.st_mtime_ns)
        if signature != self.signature:
            self.signature = signature
            return True
        return False

    def new_text(self) -> str | None:
        """What was appended since the start began (its last 64 KiB), or ``None``."""
        if not self.readable:
            return None
        text = read_tail(self.path, since=self.offset, inode=self.inode)
        if text is None and self._stat() is None:
            return ""  # no log (yet): nothing was written to it
        return text
