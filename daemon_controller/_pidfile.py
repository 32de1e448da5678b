"""Reading, validating and removing PID files.

A PID file is trusted only as far as it can be checked: the PID is the first
line (PostgreSQL's ``postmaster.pid`` has more lines; they are ignored), it must
be a plain decimal number in the range of real PIDs, and it must not name PID 0
or 1, this process or its parent: signalling any of those would hit something we
did not start. Anything else (missing, empty, binary, huge, a directory, a FIFO,
a symlink, unreadable) reads as "no PID", never as an exception.

Who wrote the file matters too. A PID file that a user other than us (and
root) can write, or replace through its directory, names whatever that user
likes. The PID in it is trusted only if its process belongs to that user or
to the daemon's ``.user()`` (or is one we may not signal anyway); otherwise it
is "not our daemon": never signalled, and :func:`refusal` says why. Systemd
follows the same rule for the PID files of its services.

The start record (``_record``) outranks both checks: a process with the
recorded PID and start time is the daemon we started.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _platform, _process, _record
from ._errors import hide_frames
from ._files import atomic_write, open_file, user_name

if TYPE_CHECKING:
    from pathlib import Path

    from ._options import Target
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
    """The first bytes of a regular file (not a symlink) and its ``fstat()``, or ``None``."""
    try:
        fd = open_file(path, os.O_RDONLY)
    except OSError:
        return None  # missing, a symlink, a directory, a FIFO, a device...
    try:
        return os.read(fd, _READ_LIMIT), os.fstat(fd)
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

    signature: tuple[int, int, int, int]  # st_dev, st_ino, st_ctime_ns, st_size
    pid: int | None  # None: no live daemon (corrupt, dead, reused or not trusted)
    handle: _platform.ExitHandle | None  # a pidfd for ``pid``, where the OS has one
    user: str | None = None  # the daemon's .user() the verdict was made for
    refused: str | None = None  # why a live process it names is not trusted


_verdicts: dict[str, _Verdict] = {}
_verdicts_lock = threading.Lock()
#: Verdicts kept at most; each may hold a pidfd open.
_MAX_VERDICTS = 64


def _remember(key: str, verdict: _Verdict) -> None:
    with _verdicts_lock:
        if len(_verdicts) >= _MAX_VERDICTS and key not in _verdicts:
            # Room for one more: forget the files that are gone (a test suite's
            # daemon per temporary directory), else everything.
            for gone in [path for path in _verdicts if not os.path.lexists(path)]:
                del _verdicts[gone]
            if len(_verdicts) >= _MAX_VERDICTS:
                _verdicts.clear()
        # Replaced handles are not closed here: another thread may be polling
        # one right now. They close themselves when the last reference goes.
        _verdicts[key] = verdict


def live(target: Target) -> int | None:
    """:func:`live_pid` of a daemon's PID file, with its start record and user."""
    files = target.files
    return live_pid(files.pid, files.record, target.config.user)


def live_pid(path: Path, record: Path | None = None, user: str | None = None) -> int | None:
    """The PID in the file if that process is alive, could have written it, and is trusted.

    A process created after the file was last written cannot be the one that
    wrote it: its PID was reused after the daemon died. That reads as "not
    running", just like a dead PID, unless the start record names the process
    (then the file's time was off: the wall clock was stepped). A process the
    file's writers may not name (see the module's docstring) reads as "not
    running" too, and :func:`refusal` says why.

    This is the hot path of ``is_running()`` and ``connect()``. A verdict is
    kept per file together with the file's identity (device, inode, change
    time, size): while the file is unchanged, only the liveness of the known
    process is re-checked, which with a pidfd is one ``poll()`` — and exact,
    since a pidfd keeps referring to the process it was opened for, even
    after its PID is reused.

    Args:
        path: The PID file.
        record: The daemon's start record.
        user: The daemon's ``.user()``, whose processes its PID file may name.
    """
    key = str(path)
    try:
        info = os.stat(key)
    except OSError:
        return None
    signature = (info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size)
    known = _verdicts.get(key)
    if known is not None and known.signature == signature and known.user == user:
        if known.pid is None:
            return None
        if known.handle is not None:
            if known.handle.exited():
                _process.reap(known.pid)  # a daemon we spawned: no zombie of ours
                return None
            return known.pid
    return _examine(key, record, user)


def refusal(path: Path) -> str | None:
    """Why the live process the PID file names is not trusted as the daemon, if it is not.

    As :func:`live_pid` last found it, if the file has not changed since.
    """
    key = str(path)
    known = _verdicts.get(key)
    if known is None or known.refused is None:
        return None
    try:
        info = os.stat(key)
    except OSError:
        return None
    current = (info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size)
    return known.refused if current == known.signature else None


def _examine(key: str, record_path: Path | None, user: str | None) -> int | None:
    """Read and verify the PID file from scratch, and remember the verdict."""
    content = _read(key)
    if content is None:
        return None
    data, info = content
    signature = (info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size)
    pid = parse_pid(data)
    record = None
    if pid is not None and record_path is not None:
        with contextlib.suppress(OSError):  # somebody else's record: the stop says so
            record = _record.read(record_path)
    ours = record is not None and record.names(pid) if pid is not None else False
    verdict = None if pid is None else _verify(pid, info.st_mtime, started_by_us=ours)
    if verdict is None:
        _remember(key, _Verdict(signature, None, None, user))
        return None
    live, handle = verdict
    if not live:
        return None  # undecided (a PID reused while we looked): look again next time
    assert pid is not None  # noqa: S101 - for the type checker: a verdict needs a PID
    refused = None if ours else _distrust(key, info, pid, user)
    if refused is not None:
        if handle is not None:
            handle.close()
        _remember(key, _Verdict(signature, None, None, user, refused))
        return None
    _remember(key, _Verdict(signature, pid, handle, user))
    return pid


def _verify(
    pid: int, written: float, *, started_by_us: bool = False
) -> tuple[bool, _platform.ExitHandle | None] | None:
    """Is ``pid`` a live process that existed when its PID file was written?

    The exit handle is opened *first*: it pins one process, and reading the
    creation time afterwards, then seeing the handle still open, proves both
    belong to the same process. A process the start record names
    (``started_by_us``) is not compared with the file's time, which a step of
    the wall clock can put before the process's computed creation time.

    Returns:
        ``None`` for no (dead, zombie, or younger than the file: a reused PID);
        ``(True, handle)`` for yes; ``(False, None)`` when undecided.
    """
    handle = _platform.exit_handle(pid)
    if handle is None:  # no pidfd here: psutil, with its zombie check
        if not _process.is_alive(pid):
            return None
        created = None if started_by_us else _process.create_time(pid)
        return None if created is not None and created > written + _CLOCK_SLACK else (True, None)
    if handle.exited():
        handle.close()
        return None
    created = None if started_by_us else _process.create_time(pid)
    if handle.exited():
        handle.close()
        return (False, None)
    if created is not None and created > written + _CLOCK_SLACK:
        handle.close()
        return None
    return (True, handle)


#: Among a file's writers: "any user at all".
_ANYONE = -1


def _writers(key: str, info: os.stat_result) -> set[int]:
    """The users other than us and root who could have written the PID file.

    Its owner; the members of its group if it is group-writable; anyone if it
    is world-writable. Through its directory, which lets them replace it: the
    directory's owner, and its group or anyone likewise, unless the directory
    is sticky (then only the file's owner may replace it).
    """
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # Windows: files have ACLs, not this
        return set()
    writers = {info.st_uid, *_mode_writers(info)}
    with contextlib.suppress(OSError):
        folder = os.stat(os.path.dirname(key) or ".")  # noqa: PTH120 - a str path
        writers.add(folder.st_uid)
        if not folder.st_mode & stat.S_ISVTX:
            writers.update(_mode_writers(folder))
    return writers - {geteuid(), 0}


def _mode_writers(info: os.stat_result) -> set[int]:
    """Who the group and other write bits let write a file or directory."""
    if info.st_mode & stat.S_IWOTH:
        return {_ANYONE}
    if not info.st_mode & stat.S_IWGRP:
        return set()
    import importlib  # noqa: PLC0415 - POSIX modules, only for group-writable files

    try:
        pwd, grp = importlib.import_module("pwd"), importlib.import_module("grp")
        members = set(grp.getgrgid(info.st_gid).gr_mem)
        uids = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == info.st_gid}
        uids.update(pwd.getpwnam(name).pw_uid for name in members)
    except (ImportError, KeyError):
        return {_ANYONE}  # a group we cannot list: anybody might be in it
    return uids


def distrust(path: Path, pid: int, user: str | None) -> str | None:
    """Why ``pid``, read from the PID file, is not trusted as the daemon (see the module).

    For a start watching the PID file appear: what it names becomes the
    daemon whose identity the start record keeps.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    return _distrust(str(path), info, pid, user)


def _distrust(key: str, info: os.stat_result, pid: int, user: str | None) -> str | None:
    """Why ``pid`` is not trusted as the daemon, or ``None`` if it is."""
    geteuid = getattr(os, "geteuid", None)
    writers = _writers(key, info)
    if geteuid is None or not writers:
        return None
    owner = _process.real_uid(pid)
    ids = _platform.user_ids(user)
    me = geteuid()
    if owner is None or owner in writers or (ids is not None and owner == ids[0]):
        return None  # the process of a user who could write the file anyway
    if me not in (0, owner):
        return None  # one we may not signal anyway: the kernel refuses, and stop() says so
    who = "any user" if _ANYONE in writers else ", ".join(map(user_name, sorted(writers)))
    return (
        f"its PID file {key!r} can be written by {who}, and names PID {pid}, a process "
        f"of {user_name(owner)}; that is not trusted to be the daemon, so it is not signalled"
    )


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
