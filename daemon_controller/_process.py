"""Is a process alive, and waiting for it to be gone.

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
from ._waiting import Deadline, MonotonicClock, poll_until

if TYPE_CHECKING:
    import subprocess

_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def adopt(child: subprocess.Popen[bytes]) -> None:
    """Remember a child we spawned so it is reaped when it exits."""
    with _children_lock:
        _children[child.pid] = child


def reap(pid: int) -> int | None:
    """Collect the exit status of our child ``pid`` if it has exited.

    Returns:
        Its return code (negative for a signal, as in ``subprocess``), or
        ``None`` if it is not our child or still running.
    """
    with _children_lock:
        child = _children.get(pid)
    if child is None:
        return None
    code = child.poll()
    if code is not None:
        with _children_lock:
            _children.pop(pid, None)
    return code


def reap_all() -> None:
    """Collect every child of ours that has exited."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        reap(pid)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie child of ours is reaped)."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        reap(pid)
        return False
    except psutil.AccessDenied:
        # It exists; we just may not look closer (other user, hardened /proc).
        return True
    if status == psutil.STATUS_ZOMBIE:
        reap(pid)
        return False
    return True


def create_time(pid: int) -> float | None:
    """The process's creation time (seconds since the epoch), if it can be read."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
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


def wait_gone(pid: int, deadline: Deadline, max_interval: float) -> bool:
    """Wait until ``pid`` has exited (zombie counts as exited), until the deadline.

    Uses an exit event where the platform has one, and polling otherwise.

    Returns:
        ``True`` if the process is gone, ``False`` if the deadline passed first.
    """
    if not is_alive(pid):
        return True
    # The event wait only works with the real clock; virtual clocks poll.
    if isinstance(deadline.clock, MonotonicClock):
        gone = _platform.wait_exit(pid, deadline.remaining())
        if gone is not None:
            if gone:
                reap(pid)
            return gone or not is_alive(pid)
    result = poll_until(
        lambda: True if not is_alive(pid) else None,
        deadline=deadline,
        max_interval=max_interval,
    )
    return bool(result)
