"""A daemon's log file: opening it for a program we run, and following it during a start.

With ``.user()``, root opens and reads the log *as that user* (Linux: this
thread's filesystem IDs, see ``_platform.files_as``), so a user who controls
the log's directory cannot make root append the daemon's output to, or show
in an error message, a file that user could not touch. Where that switch is
not available, the file must belong to that user. A log that user cannot
reach at all is opened by root, but only in a directory nobody else controls
(``_files.only_ours``): there nobody can have planted anything. Either way the
log is never opened through a symlink, and must be a regular file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING

from . import _platform
from ._files import only_ours, open_file, own_uids, read_tail

if TYPE_CHECKING:
    from pathlib import Path


def open_for_program(path: Path, user: str | None) -> int:
    """Open (create) the log of a program run in the foreground, for its output.

    Raises:
        UnsafeFileError: It is a symlink, not a regular file, has other hard
            links, or belongs to somebody other than the program's user.
        OSError: It cannot be opened.
    """
    fd = _open_for_program(path, user)
    set_blocking = getattr(os, "set_blocking", None)
    if set_blocking is not None:  # opened O_NONBLOCK for the checks; the program inherits it
        with contextlib.suppress(OSError):
            set_blocking(fd, True)
    return fd


def _open_for_program(path: Path, user: str | None) -> int:
    ids = _platform.user_ids(user)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    if ids is None:
        return open_file(path, flags, mode=0o644, owners=own_uids(), single_link=True)
    try:
        with _platform.files_as(ids) as switched:
            owners = {ids[0]} if switched else {ids[0], *(own_uids() or ())}
            fd = open_file(path, flags, mode=0o644, owners=owners, single_link=True)
    except PermissionError:
        if not only_ours(path.parent):
            raise
        return open_file(path, flags, mode=0o644, owners=own_uids(), single_link=True)
    fchown = getattr(os, "fchown", None)
    if not switched and fchown is not None:  # created as root, maybe: make it the program's
        with contextlib.suppress(OSError):
            fchown(fd, *ids)
    return fd


class LogWatch:
    """The daemon's log as seen from the moment a start began.

    A log that does not exist yet counts as empty, so a log created during the
    start is all new. A log that is not a regular file (``/dev/stderr``, a FIFO)
    cannot be read back: its text is ``None``.
    """

    __slots__ = ("inode", "offset", "path", "readable", "signature", "user")

    def __init__(self, path: Path, user: str | None = None) -> None:
        self.path = path
        self.user = user
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
        ids = _platform.user_ids(self.user)
        with _platform.files_as(ids) as switched:
            owners = None if ids is None or switched else {ids[0]}
            text = read_tail(self.path, since=self.offset, inode=self.inode, owners=owners)
        if text is None and ids is not None and only_ours(self.path.parent):
            text = read_tail(self.path, since=self.offset, inode=self.inode)  # see the module
        if text is None and self._stat() is None:
            return ""  # no log (yet): nothing was written to it
        return text
