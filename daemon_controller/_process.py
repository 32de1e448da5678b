"""Is a process alive, waiting for it to be gone, and making it go.

"Alive" means: it exists and is not a zombie. A daemon that double-forked is
re-parented to PID 1, and on some machines PID 1 reaps orphans only every few
seconds; in between, the dead daemon is a zombie that ``kill(pid, 0)`` still
reports as present. psutil reads the real state.

Children we spawned ourselves (programs we daemonize for the user) are kept in a
registry so that we reap them once they exit and never leave zombies of our own.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

import psutil

from . import _platform
from ._errors import hide_frames
from ._waiting import Deadline, MonotonicClock, poll_until

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

#: How long a SIGKILLed process gets to disappear before we stop waiting.
KILL_GRACE = 5.0

_children: dict[int, subprocess.Popen[bytes]] = {}
#: Exit codes of children already reaped, for whoever asks next (a liveness
#: check may reap a child before the code that reports its death asks why).
_codes: dict[int, int] = {}
_MAX_CODES = 64
_children_lock = threading.Lock()


def adopt(child: subprocess.Popen[bytes]) -> None:
    """Remember a child we spawned so it is reaped when it exits."""
    with _children_lock:
        _children[child.pid] = child
        _codes.pop(child.pid, None)  # a reused PID: the old code is not this child's


def reap(pid: int) -> int | None:
    """Collect the exit status of our child ``pid`` if it has exited.

    Returns:
        Its return code (negative for a signal, as in ``subprocess``), also
        when it was reaped already; ``None`` if it is not our child or still
        running.
    """
    with _children_lock:
        child = _children.get(pid)
        if child is None:
            return _codes.get(pid)
    code = child.poll()
    if code is not None:
        with _children_lock:
            _children.pop(pid, None)
            if len(_codes) >= _MAX_CODES:
                _codes.pop(next(iter(_codes)))
            _codes[pid] = code
    return code


def reap_all() -> None:
    """Collect every child of ours that has exited."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        reap(pid)


def is_zombie(proc: psutil.Process) -> bool:
    """Whether the process has exited and only waits to be reaped.

    Its status alone does not tell: once the main thread has exited, the
    process reads as a zombie while its other threads still run (a server
    whose main thread called ``pthread_exit()``, or one whose threads are
    still being torn down after SIGTERM) and hold its files and sockets open.
    It is a zombie only when no other thread is left.

    Raises:
        psutil.Error: As ``status()`` does.
    """
    if proc.status() != psutil.STATUS_ZOMBIE:
        return False
    try:
        return proc.num_threads() <= 1
    except psutil.Error:
        return True


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie child of ours is reaped)."""
    try:
        zombie = is_zombie(psutil.Process(pid))
    except psutil.NoSuchProcess:
        reap(pid)
        return False
    except psutil.AccessDenied:
        # It exists; we just may not look closer (other user, hardened /proc).
        return True
    if zombie:
        reap(pid)
        return False
    return True


def create_time(pid: int) -> float | None:
    """The process's creation time (seconds since the epoch), if it can be read."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


def real_uid(pid: int) -> int | None:
    """The real user ID of ``pid`` (whom it belongs to), or ``None`` (gone, or no such IDs)."""
    with contextlib.suppress(psutil.Error):
        uids = getattr(psutil.Process(pid), "uids", None)  # POSIX only
        return None if uids is None else int(uids().real)
    return None


def descendants(pid: int) -> list[psutil.Process]:
    """The living children of ``pid``, recursively (empty if they cannot be read)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def kill_all(procs: list[psutil.Process], deadline: Deadline) -> None:
    """SIGKILL each process that is still the one we listed; wait for them to be gone."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks that the PID was not reused meanwhile
    for proc in procs:
        wait_gone(proc.pid, deadline, max_interval=0.05)


def terminate(
    procs: list[psutil.Process],
    deadline: Deadline,
    hurry: Callable[[], bool] | None = None,
) -> None:
    """SIGTERM each process, wait for them until ``deadline``, then SIGKILL the rest.

    Waits with our own checks, not psutil's: psutil's would wait for PID 1 to
    reap a zombie, which on some machines takes seconds.

    Args:
        procs: The processes.
        deadline: When SIGKILL follows.
        hurry: Once it returns true (somebody pressed Ctrl-C during an
            abort), SIGKILL follows at once.
    """
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()  # psutil checks that the PID was not reused meanwhile
    rest = [
        proc for proc in procs if not wait_gone(proc.pid, deadline, max_interval=0.05, hurry=hurry)
    ]
    if rest:
        kill_all(rest, Deadline(KILL_GRACE, deadline.clock))


#: With ``hurry``, a wait looks at it this often (seconds).
_HURRY_CHECK = 0.05


def wait_gone(
    pid: int,
    deadline: Deadline,
    max_interval: float,
    hurry: Callable[[], bool] | None = None,
) -> bool:
    """Wait until ``pid`` has exited (zombie counts as exited), until the deadline.

    Uses an exit event where the platform has one, and polling otherwise.

    Args:
        pid: The process.
        deadline: When to give up.
        max_interval: The longest pause between two polls.
        hurry: Give up as soon as it returns true.

    Returns:
        ``True`` if the process is gone, ``False`` if the deadline passed first.
    """
    if not is_alive(pid):
        return True
    # The event wait only works with the real clock; virtual clocks poll.
    if isinstance(deadline.clock, MonotonicClock):
        while True:
            remaining = deadline.remaining()
            gone = _platform.wait_exit(
                pid, remaining if hurry is None else min(remaining, _HURRY_CHECK)
            )
            if gone is None:
                break
            if gone:
                reap(pid)
                return True
            if deadline.expired() or (hurry is not None and hurry()):
                return not is_alive(pid)
    result = poll_until(
        lambda: True if not is_alive(pid) else (False if hurry is not None and hurry() else None),
        deadline=deadline,
        max_interval=max_interval,
    )
    return bool(result)


class ExitWatches:
    """The exit handles (pidfds) of the processes one wait watches, opened once each.

    Checking a process through its handle is one ``poll()``; psutil is asked
    only the first time. Cheap checks allow short pauses between them, and so
    a short delay between an event and our reaction to it.
    """

    __slots__ = ("_handles",)

    def __init__(self) -> None:
        self._handles: dict[int, _platform.ExitHandle | None] = {}

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` runs (a zombie does not; a child of ours is reaped)."""
        if pid not in self._handles:
            if not is_alive(pid):
                return False
            self._handles[pid] = _platform.exit_handle(pid)
            return True
        handle = self._handles[pid]
        if handle is None:
            return is_alive(pid)
        if handle.exited():
            reap(pid)
            return False
        return True

    def wait(self, pid: int, seconds: float, wake: int | None = None) -> bool:
        """Pause up to ``seconds``, waking when ``pid`` exits (or ``wake`` polls readable).

        Returns:
            ``False`` if the platform has no exit handle for it: the caller
            must pause by other means.
        """
        if pid not in self._handles:
            self.alive(pid)
        handle = self._handles.get(pid)
        if handle is None:
            return False
        handle.wait(seconds, wake)
        return True

    def fileno(self, pid: int) -> int | None:
        """The descriptor that becomes readable when ``pid`` exits, or ``None``.

        ``None`` where the platform has no exit handles, or when ``pid`` is
        already gone: the caller then pauses by other means.
        """
        if pid not in self._handles:
            self.alive(pid)
        handle = self._handles.get(pid)
        return None if handle is None else handle.fileno()

    def has_handle(self, pid: int) -> bool:
        """Whether ``pid`` is watched through an exit handle (its exit wakes :meth:`wait`)."""
        return self._handles.get(pid) is not None

    def close(self) -> None:
        """Close every handle."""
        for handle in self._handles.values():
            if handle is not None:
                handle.close()
        self._handles.clear()
