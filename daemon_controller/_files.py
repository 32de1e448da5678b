"""The files a daemon is managed through, in one place, and safe ways to touch them.

A daemon has a PID file (the daemon's or ours) and a lock file; the lock
file's name is the stem of the library's side files:

* ``<lock>.users`` — shared locks of the ``running()`` blocks inside;
* ``<lock>.owner`` — the PID a ``running()`` block started;
* ``<lock>.failure`` — the last failed start, shared with those who waited for it;
* ``<lock>.started`` — who the last start spawned (see ``_record``);
* ``<lock>.port`` — the TCP port chosen for the daemon when it started;
* ``<lock>.prepared`` — which prepared template its run directory was copied from;
* ``<lock>.status`` — the ``STATUS=`` texts a ``notify()`` daemon sent while it
  started (see ``_notify``).

All of them may lie in a directory other users can write, so they are opened
with :func:`open_file`: no symlinks, no blocking, regular files of ours only,
read with a size cap.

Everything here is below the rest of the library: no module of ours is
imported, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

#: At most this much of a file's text is kept for a message (a log, a command's output).
TAIL_LIMIT = 64 * 1024

#: Opened this way, a planted file cannot make us follow a symlink or block
#: (a FIFO with nobody at the other end); where the OS has the flags.
_SAFE_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
#: Opened this way, a FIFO with nobody at the other end does not block us.
_NONBLOCK_FLAGS = (
    getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsafeFileError(OSError):
    """A file someone else could have planted is not what it must be.

    Attributes:
        filename: The path.
        problem: What is wrong with it, e.g. ``"is a symbolic link"``.
        owner: The user ID owning it, when that is the problem.
    """

    def __init__(self, path: Path | str, problem: str, owner: int | None = None) -> None:
        super().__init__(errno.EPERM, problem, str(path))
        self.problem = problem
        self.owner = owner

    def __str__(self) -> str:
        return f"{self.filename!r} {self.problem}"

    def __reduce__(self) -> tuple[type[UnsafeFileError], tuple[str, str, int | None]]:
        return (UnsafeFileError, (self.filename, self.problem, self.owner))


def own_uids() -> frozenset[int] | None:
    """The owners whose files count as ours: this user and root (``None``: no owners here)."""
    geteuid = getattr(os, "geteuid", None)
    return None if geteuid is None else frozenset({geteuid(), 0})


def user_name(uid: int) -> str:
    """``"alice (uid 1000)"``, or ``"uid 1000"`` for a user without a name."""
    import importlib  # noqa: PLC0415 - only for messages

    try:  # pwd exists on POSIX only; file owners too
        name = importlib.import_module("pwd").getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"
    return f"{name} (uid {uid})"


def check_file(
    info: os.stat_result,
    path: Path | str,
    *,
    owners: Collection[int] | None = None,
    single_link: bool = False,
) -> None:
    """Raise :class:`UnsafeFileError` unless ``info`` is a regular file of an expected owner.

    Args:
        info: The file's ``fstat()``.
        path: For the message.
        owners: The user IDs that may own it; ``None``: anybody.
        single_link: Refuse a file with other hard links (another name for
            somebody else's file).
    """
    for is_kind, kind in _KINDS:
        if is_kind(info.st_mode):
            raise UnsafeFileError(path, f"is {kind}, not a regular file")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(path, "is not a regular file")
    if owners is not None and hasattr(os, "geteuid") and info.st_uid not in owners:
        expected = " or ".join(user_name(uid) for uid in sorted(owners, reverse=True))
        problem = f"belongs to {user_name(info.st_uid)}, not to {expected}"
        raise UnsafeFileError(path, problem, info.st_uid)
    if single_link and info.st_nlink > 1:
        raise UnsafeFileError(path, "has other hard links")


def only_ours(directory: Path | str) -> bool:
    """Whether nobody but us and root can change what ``directory`` holds, or where it leads.

    Every directory on the way to it must belong to us or root and be
    writable by nobody else (a sticky one, like ``/tmp``, may be: there only
    an entry's owner can replace it). A symlink on the way must belong to us
    or root too, and where it leads is checked the same way.
    """
    owners = own_uids()
    if owners is None:
        return False  # no owners to check here
    return _only_ours(os.path.abspath(directory), owners, hops=0)


def _only_ours(path: str, owners: frozenset[int], *, hops: int) -> bool:
    current = os.path.sep
    for part in ["", *path.split(os.path.sep)]:
        current = os.path.join(current, part)  # noqa: PTH118 - str paths
        try:
            info = os.lstat(current)
        except OSError:
            return False
        if info.st_uid not in owners:
            return False
        if stat.S_ISLNK(info.st_mode):
            if hops > 8:  # noqa: PLR2004 - a chain of links this long is not a log directory
                return False
            current = os.path.realpath(current)
            if not _only_ours(current, owners, hops=hops + 1):
                return False
        elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return False
    return True


def open_file(
    path: Path | str,
    flags: int,
    *,
    mode: int = 0o600,
    owners: Collection[int] | None = None,
    single_link: bool = False,
) -> int:
    """Open a file someone else could have planted: no symlink, no blocking, checked.

    Opened with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` where the OS has them,
    then checked with :func:`check_file`. A file it creates gets ``mode``.

    Raises:
        UnsafeFileError: It is a symlink, not a regular file, or somebody
            else's (``owners``).
        OSError: It cannot be opened (missing, no permission).
    """
    try:
        fd = os.open(path, flags | _SAFE_FLAGS, mode)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):  # noqa: PTH114 - str or Path
            raise UnsafeFileError(path, "is a symbolic link") from err
        if err.errno == errno.ENXIO:  # a FIFO nobody reads, opened for writing
            raise UnsafeFileError(path, "is a FIFO, not a regular file") from err
        raise
    try:
        check_file(os.fstat(fd), path, owners=owners, single_link=single_link)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path: Path | str, limit: int, *, owners: Collection[int] | None = None) -> bytes:
    """The first ``limit`` bytes of a regular file, opened with :func:`open_file`.

    Raises:
        UnsafeFileError: See :func:`open_file`.
        OSError: It cannot be read (missing, no permission).
    """
    fd = open_file(path, os.O_RDONLY, owners=owners)
    try:
        return _read_exactly(fd, limit)
    finally:
        os.close(fd)


def read_own(path: Path | str, limit: int) -> bytes | None:
    """One of our side files: its first ``limit`` bytes.

    Returns:
        ``None`` when it is missing or not a regular file (a symlink or a FIFO
        somebody planted: our next atomic write replaces it).

    Raises:
        UnsafeFileError: It belongs to another user, who could rewrite it at will.
    """
    try:
        return read_file(path, limit, owners=own_uids())
    except UnsafeFileError as err:
        if err.owner is not None:
            raise
        return None
    except OSError:
        return None


def _read_exactly(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    while count > 0:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_span(fd: int, start: int, end: int, limit: int = TAIL_LIMIT) -> str:
    """The text between two offsets of an open file, its middle left out beyond ``limit``.

    A start error shows what a command printed: its first lines (what went
    wrong first) and its last ones (where it ended up). More than ``limit``
    bytes keep their first and last ``limit // 2``, with a line saying how
    much was left out between them.
    """
    size = max(0, end - start)
    os.lseek(fd, start, os.SEEK_SET)
    if size <= limit:
        data = _read_exactly(fd, size)
    else:
        half = limit // 2
        head = _read_exactly(fd, half)
        os.lseek(fd, end - half, os.SEEK_SET)
        tail = _read_exactly(fd, half)
        left_out = size - len(head) - len(tail)
        data = b"%s\n[... %d bytes left out ...]\n%s" % (head, left_out, tail)
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class DaemonFiles:
    """The PID file, the lock file and the side files derived from the lock file.

    Attributes:
        pid: Where the daemon's PID is recorded.
        lock: The lock file serialising starts and stops.
        users: Shared locks on it count the ``running()`` blocks inside.
        owner: Names the daemon PID that a ``running()`` block started.
        failure: The record of the last failed start.
        record: The record of the last start: its marker, the PID and start time.
        port: The port the daemon was given when it started (``port()``).
        prepared: The fingerprint of the template its run directory was copied from.
        status: The ``STATUS=`` texts a ``notify()`` daemon sent, with its PID.
    """

    pid: Path
    lock: Path
    users: Path = field(init=False, repr=False, compare=False)
    owner: Path = field(init=False, repr=False, compare=False)
    failure: Path = field(init=False, repr=False, compare=False)
    record: Path = field(init=False, repr=False, compare=False)
    port: Path = field(init=False, repr=False, compare=False)
    prepared: Path = field(init=False, repr=False, compare=False)
    status: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for suffix in ("users", "owner", "failure", "port", "prepared", "status"):
            object.__setattr__(self, suffix, self.lock.with_name(f"{self.lock.name}.{suffix}"))
        object.__setattr__(self, "record", self.lock.with_name(f"{self.lock.name}.started"))

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
    import tempfile  # noqa: PLC0415 - with shutil, lzma and bz2: 5 ms of import time

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
    owners: Collection[int] | None = None,
) -> str | None:
    """The end of the regular file ``path``, decoded as UTF-8 (bad bytes replaced).

    Opened with :func:`open_file`, so a symlink or a FIFO planted where a log
    should be is neither followed nor waited for; only regular files are read.

    Args:
        path: The file.
        since: A byte offset, typically the file's size taken earlier: return
            what was written after it. A file now shorter than ``since``, or
            not the file ``inode`` names any more (log rotation replaced it),
            counts as all new. ``None``: the end of the file, whatever came
            before.
        inode: The file's inode when ``since`` was taken.
        limit: At most this many bytes are read, the last ones: with ``since``,
            the last ``limit`` bytes of what came after it. A cut may fall
            inside a line or a multi-byte character. ``0`` reads nothing.
        owners: The user IDs that may own the file, which is then not
            reached through a symlink either; ``None``: anybody's, symlinks
            followed.

    Returns:
        The text (``""`` when there is nothing new), or ``None`` when ``path``
        is not a regular file that can be read: missing, a
        directory, a FIFO, a device, somebody else's (``owners``), or not
        readable by us.

    Raises:
        ValueError: ``limit`` or ``since`` is negative.
    """
    if limit < 0 or (since is not None and since < 0):
        msg = f"limit and since must be 0 or more, not {limit} and {since}"
        raise ValueError(msg)
    try:
        if owners is None:
            # Reading only, for ourselves: a log reached through a symlink is
            # fine; still never a FIFO (no blocking) nor anything irregular.
            fd = os.open(path, os.O_RDONLY | _NONBLOCK_FLAGS)
            try:
                check_file(os.fstat(fd), path)
            except BaseException:
                os.close(fd)
                raise
        else:
            fd = open_file(path, os.O_RDONLY, owners=owners)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        replaced = inode is not None and info.st_ino != inode
        start = 0 if since is None or since > info.st_size or replaced else since
        start = max(start, info.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        # The file may grow meanwhile: not past the cap.
        return _read_exactly(fd, min(limit, info.st_size - start)).decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)
