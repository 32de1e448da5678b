"""Who is inside a ``running()`` block, and which daemon such a block started.

Who is inside is recorded with the OS's help, so a process that dies inside a
block is counted out automatically:

* ``<lock file>.users`` — every block holds a *shared* lock on its own open
  handle of this file while inside (a lease). A block leaving releases its
  lease and tries a *non-blocking exclusive* lock: it succeeds only if nobody
  else is inside, and it keeps that lock while it settles the daemon, so a
  block entering meanwhile waits and then starts a fresh daemon.
* ``<lock file>.owner`` — written when a block starts the daemon, holding the
  daemon's PID. Only a daemon recorded there is stopped by the last block out;
  a daemon that was already running before anyone entered is left running.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from . import _lock, _pidfile
from ._errors import DaemonError, hide_frames
from ._files import atomic_write, read_own

if TYPE_CHECKING:
    from ._files import DaemonFiles
    from ._options import Target

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


def lease(target: Target) -> _lock.Held:
    """Count a block in: a shared lock on ``.users`` (waits while the last one out settles)."""
    held = _lock.acquire(target.files.users, target.name, shared=True)
    assert held is not None  # noqa: S101 - a blocking acquire returns a lock
    return held


def last_out(target: Target) -> _lock.Held | None:
    """The exclusive lock on ``.users`` if nobody is inside, else ``None`` (never waits)."""
    return _lock.acquire(target.files.users, target.name, shared=False, blocking=False)


def read_owner(files: DaemonFiles) -> int | None:
    """The PID a block started, if one is recorded.

    Raises:
        UnsafeFileError: The file belongs to another user (see ``_files``).
    """
    data = read_own(files.owner, 64)
    return None if data is None else _pidfile.parse_pid(data)


def write_owner(files: DaemonFiles, pid: int) -> None:
    """Record that a block started the daemon ``pid`` (0600, atomically)."""
    atomic_write(files.owner, f"{pid}\n".encode())


def clear_owner(files: DaemonFiles) -> None:
    """Forget the owner (the daemon was stopped, or is nobody's to stop)."""
    with contextlib.suppress(OSError):
        files.owner.unlink()


def owner_follows(target: Target, before: int | None) -> None:
    """A ``running()`` block that started the old daemon owns the restarted one too.

    Without this, the last block out would find the owner file naming a PID
    that no longer runs and leave the restarted daemon running. Done under a
    shared lock on the ``.users`` file, like every other owner-file write, so
    it cannot interleave with the last block out settling (which holds that
    file exclusively); if that is happening right now, the hand-over is left
    out: the daemon was not restarted from inside a block, and the last block
    out leaves it running. Never waits for that lock: the last block out holds
    it while it waits for the daemon lock, which the caller holds.
    """
    files = target.files
    after = _pidfile.read_pid(files.pid)
    if before is None or after is None or after == before:
        return
    if read_owner(files) != before:
        return  # no block owns the old daemon (checked again under the lock)
    try:
        held = _lock.acquire(files.users, target.name, shared=True, blocking=False)
    except DaemonError:
        return  # no .users file can be made here, so no block can have written an owner
    if held is None:
        return
    try:
        if read_owner(files) == before:
            write_owner(files, after)
    except OSError as err:
        target.config.logger.warning(
            "Daemon '%s' restarted, but its owner file %s could not be updated: %s",
            target.name,
            files.owner,
            err,
        )
    finally:
        held.release()
