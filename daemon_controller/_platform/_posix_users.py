"""POSIX: daemons run as another user (``.user()``), their files and copies of them.

The login environment such a daemon gets, the IDs its files must belong to,
opening files with its permissions, its private runtime directory, and
copying prepared run directories (block cloning where the filesystem can).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

# The type checker reads this module for POSIX only (see _posix).
assert sys.platform != "win32" or not TYPE_CHECKING  # noqa: S101 - a type-checker directive

from ._posix import runtime_dir  # noqa: E402 - after the directive: POSIX only

if sys.platform != "win32":  # this module imports on Windows too
    import fcntl
else:  # pragma: no cover - Windows
    fcntl = None

#: What a daemon run as another user keeps of our environment (as ``runuser -l``
#: does, plus ``PATH``, so that a command we find is found for it too): where to
#: find programs, locale and terminal. Nothing that points into our home, our
#: session or our agents (``XDG_RUNTIME_DIR``, ``SSH_AUTH_SOCK``, ``MAIL`` ...).
_KEPT_FOR_ANOTHER_USER = frozenset({"PATH", "TERM", "LANG", "LANGUAGE", "TZ"})


def user_environment(user: str, ours: Mapping[str, str]) -> dict[str, str]:
    """The environment of a command run as ``user``, made from ``ours``.

    Another user gets a login environment, as with ``runuser -l``: ``HOME``,
    ``USER``, ``LOGNAME`` and ``SHELL`` from the password database, and of ours
    only what :data:`_KEPT_FOR_ANOTHER_USER` and the ``LC_*`` variables say.
    For ourselves (``.user()`` naming the user we are), ours with those four set.
    """
    import pwd  # noqa: PLC0415 - only for .user()

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return dict(ours)  # the spawn fails and says why
    own = {
        "HOME": entry.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "SHELL": entry.pw_shell or "/bin/sh",
    }
    if entry.pw_uid == os.geteuid():
        return {**ours, **own}
    kept = {k: v for k, v in ours.items() if k in _KEPT_FOR_ANOTHER_USER or k.startswith("LC_")}
    return {**kept, **own}


def user_ids(user: str | None) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``user`` if commands run as that user switch to it (we are root).

    ``None`` when nothing is switched: no user, the user we are, no such user.
    """
    if user is None or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 - only for .user()

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return None if entry.pw_uid == 0 else (entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def files_as(ids: tuple[int, int] | None) -> Iterator[bool]:
    """Open files in this thread with the permissions of user and group ``ids``.

    Linux keeps a filesystem user and group ID per thread (``setfsuid``), used
    for every permission check of a path and as the owner of files created;
    other threads are not affected. Root's supplementary groups still apply.

    Yields:
        Whether the IDs were switched (``False``: no IDs, or not on Linux; the
        caller must check what it opened by other means).
    """
    libc: Any = None
    if ids is not None and sys.platform.startswith("linux"):
        with contextlib.suppress(ImportError, OSError):
            import ctypes  # noqa: PLC0415 - only for .user(), on Linux

            libc = ctypes.CDLL(None, use_errno=True)
    if ids is None or libc is None:
        yield False
        return
    setfsuid, setfsgid = libc.setfsuid, libc.setfsgid
    uid, gid = ids
    try:
        setfsgid(gid)
        setfsuid(uid)
        yield setfsuid(uid) == uid  # it returns the previous ID: this one, if it took
    finally:
        # Back to what they follow otherwise, however far the switch got.
        setfsuid(os.geteuid())
        setfsgid(os.getegid())


# -- run directories of daemons run as another user, and copies of them ---------------------

#: ``ioctl(FICLONE)``: share a file's blocks copy-on-write (Btrfs, XFS, bcachefs).
_FICLONE = 0x40049409


def give(path: Path | str, ids: tuple[int, int] | None) -> None:
    """Make ``path`` (not what a symlink there points to) belong to ``ids``; ``None``: leave it."""
    if ids is not None:
        os.chown(path, ids[0], ids[1], follow_symlinks=False)


def user_runtime_dir(user: str | None) -> Path:
    """The private runtime directory of the user a daemon's commands run as.

    Ours (:func:`runtime_dir`) unless we are root running the daemon as
    another user, who could not enter ours: then
    ``<tmp>/daemon-controller-<uid>``, made by us for that user, 0700.

    Raises:
        PermissionError: The directory exists but is not that user's private one.
    """
    ids = user_ids(user)
    if ids is None:
        return runtime_dir()
    import tempfile  # noqa: PLC0415 - import time, see _posix.runtime_dir

    path = Path(tempfile.gettempdir()) / f"daemon-controller-{ids[0]}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        give(path, ids)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != ids[0] or info.st_mode & 0o077:
        msg = f"{str(path)!r} is not a private directory of user {user!r}; refusing to use it"
        raise PermissionError(msg)
    return path


def clone_file(source: int, target: int) -> bool:
    """Make the open file ``target`` a copy-on-write clone of ``source``; whether it worked.

    Only where the filesystem shares blocks between files (Linux: Btrfs, XFS
    with reflink, bcachefs); elsewhere the caller copies the bytes.
    """
    if sys.platform != "linux" or fcntl is None:
        return False
    try:
        fcntl.ioctl(target, _FICLONE, source)
    except OSError:
        return False
    return True


def keep_owner(path: str, original: os.stat_result) -> None:
    """As root, give the copy at ``path`` the owner of the original; otherwise copies are ours."""
    if os.geteuid() == 0 and (original.st_uid, original.st_gid) != (0, 0):
        os.chown(path, original.st_uid, original.st_gid, follow_symlinks=False)
