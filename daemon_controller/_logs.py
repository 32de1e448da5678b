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
from ._files import check_file, only_ours, open_file, own_uids, read_tail

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


def _open_to_read(path: Path, user: str | None) -> int | None:
    """The log opened for reading as :meth:`LogWatch.new_text` reads it, or ``None``.

    As the daemon's user where it has one (see the module); a regular file
    only.
    """
    ids = _platform.user_ids(user)
    with _platform.files_as(ids) as switched:
        fd = _try_open(path, None if ids is None or switched else {ids[0]})
    if fd is None and ids is not None and only_ours(path.parent):
        fd = _try_open(path, None)
    return fd


def _try_open(path: Path, owners: set[int] | None) -> int | None:
    try:
        if owners is not None:
            return open_file(path, os.O_RDONLY, owners=owners)
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        check_file(os.fstat(fd), path)
    except OSError:
        os.close(fd)
        return None
    return fd


#: A "line" longer than this (binary data without newlines) is cut into pieces
#: of this size, so that following a log takes bounded memory.
MAX_LINE = 64 * 1024
#: At most this much is read per look; a log written faster than that is read
#: on in the next look, without a pause in between (see ``LogLines.behind``).
_READ_BUDGET = 4 * 1024 * 1024
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class LogLines:
    """The lines appended to the daemon's log since a start began, read as they come.

    The file is followed by name: when it is rotated (renamed away, a new one
    created) the rest of the old file is read, then the new one from its
    start; when it is truncated (``copytruncate``), it is read again from its
    start. A line written in several pieces is returned once it is complete
    (its newline written); undecodable bytes are replaced, and a "line"
    longer than :data:`MAX_LINE` is cut into pieces of that size. Anything
    that is not a regular file is not read at all.

    Attributes:
        behind: Whether the last :meth:`read` stopped before the end of the
            file (the log grows faster than a look reads): look again at once.
    """

    __slots__ = ("_fd", "_inode", "_partial", "_pos", "_start", "behind", "path", "user")

    def __init__(self, watch: LogWatch) -> None:
        self.path = watch.path
        self.user = watch.user
        self._start = (watch.inode, watch.offset)  # where "new" began
        self._fd: int | None = None
        self._inode: int | None = None
        self._pos = 0
        self._partial = bytearray()
        self.behind = False
        self._open()  # now, before the daemon runs: a rotation cannot hide its first lines

    def read(self) -> list[str]:
        """The complete lines appended since the last call."""
        chunks: list[bytes] = []
        if self._fd is not None and self._replaced():
            self._drain(chunks)  # the rest of the rotated file
            self._close()
        if self._fd is None:
            self._open()
        self.behind = self._fd is not None and self._drain(chunks)
        return self._split(b"".join(chunks))

    def _open(self) -> None:
        fd = _open_to_read(self.path, self.user)
        if fd is None:
            return
        info = os.fstat(fd)
        inode, offset = self._start
        self._fd, self._inode = fd, info.st_ino
        # The file that was there when the start began: from where it ended then.
        self._pos = offset if info.st_ino == inode and info.st_size >= offset else 0
        self._start = (None, 0)  # any later file is new from its first byte

    def _replaced(self) -> bool:
        """Whether the name now leads to another file (rotation) or to none."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def _drain(self, chunks: list[bytes]) -> bool:
        """Read what was appended (at most a budget); whether more is left."""
        assert self._fd is not None  # noqa: S101 - callers check
        try:
            size = os.fstat(self._fd).st_size
            if size < self._pos:  # truncated: what is there now is new
                self._pos = 0
                self._partial.clear()
            os.lseek(self._fd, self._pos, os.SEEK_SET)
            data = os.read(self._fd, min(size - self._pos, _READ_BUDGET))
        except OSError:
            self._close()
            return False
        self._pos += len(data)
        chunks.append(data)
        return self._pos < size

    def _split(self, data: bytes) -> list[str]:
        buffer = self._partial
        buffer += data
        lines: list[str] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start, start + MAX_LINE + 1)
            if end < 0:
                if len(buffer) - start <= MAX_LINE:
                    break
                end = start + MAX_LINE  # a line too long: cut it
                lines.append(buffer[start:end].decode("utf-8", "replace"))
                start = end
                continue
            lines.append(buffer[start:end].rstrip(b"\r").decode("utf-8", "replace"))
            start = end + 1
        del buffer[:start]
        return lines

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Stop following the log."""
        self._close()
