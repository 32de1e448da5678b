"""Finding every process a start command created, even after a double fork.

A daemon that goes into the background forks, calls ``setsid()`` and forks
again; its parent link to the start command is gone (it is re-parented to
PID 1) and it has its own session. What it keeps is its environment: every
start command runs with ``DAEMON_CONTROLLER_START=<unique id>``, which all its
descendants inherit. psutil reads it back.

Two more facts make the search cheap and safe:

* Only processes that did not exist before the start command was spawned are
  candidates, and each is looked at once.
* A process whose parent we already track is tracked too, which also covers a
  descendant that cleared its environment while its parent was still alive.

Limitation: a descendant that both cleared its environment (``env -i``,
``sudo``) and was orphaned before we saw it cannot be found; it is then
neither killed on abort nor counted as alive (see the README).
"""

from __future__ import annotations

import contextlib
import os

import psutil

from . import _process
from ._waiting import Clock, Deadline

MARKER = "DAEMON_CONTROLLER_START"


def new_marker() -> str:
    """A fresh value for the environment marker of one start."""
    return os.urandom(16).hex()  # (uuid would import platform: 4 ms)


class Descendants:
    """The processes created by one start command, found by marker and parentage.

    Made *before* the command is spawned: every PID that exists at that moment
    is not a descendant, so a scan only looks at processes that appeared since
    (on a busy machine, a handful), and each of them only once.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.root_pid: int | None = None
        # pid -> creation time; the creation time tells a reused PID apart.
        self.known: dict[int, float] = {}
        self.before = set(psutil.pids())
        self.strangers: set[int] = set()

    def attach(self, root_pid: int) -> None:
        """Start from the spawned start command."""
        self.root_pid = root_pid
        self.adopt(root_pid)

    def adopt(self, pid: int) -> None:
        """Track ``pid`` too (a PID file's process that may have cleared its environment).

        A process that existed before the spawn cannot be ours: never adopted.
        """
        if pid not in self.known and pid not in self.before:
            with contextlib.suppress(psutil.Error):
                self.known[pid] = psutil.Process(pid).create_time()
                self.strangers.discard(pid)

    def scan(self) -> bool:
        """Look for new descendants among the processes that appeared since the start.

        Returns:
            ``False`` if some candidate's environment could not be read (another
            user's process, a hardened ``/proc``): then the scan cannot tell
            whether everything the start created has exited.
        """
        complete = True
        skip = self.before
        for pid in sorted(set(psutil.pids()) - skip - self.strangers - self.known.keys()):
            try:
                proc = psutil.Process(pid)
                if proc.ppid() in self.known or proc.environ().get(MARKER) == self.marker:
                    self.known[pid] = proc.create_time()
                else:
                    self.strangers.add(pid)
            except psutil.AccessDenied:
                complete = False  # look again next time
            except psutil.Error:
                self.strangers.add(pid)  # gone already
        return complete

    def alive(self) -> list[psutil.Process]:
        """The tracked processes that still run (zombies do not; ours are reaped)."""
        living = []
        for pid, created in list(self.known.items()):
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) > 0.01 or not _process.is_alive(pid):  # noqa: PLR2004 - clock-tick tolerance
                    continue
            except psutil.Error:
                continue
            living.append(proc)
        return living

    def newest_alive(self) -> int | None:
        """The most recently created living descendant (typically the daemon itself)."""
        living = self.alive()
        if not living:
            return None
        return max(living, key=lambda proc: self.known.get(proc.pid, 0.0)).pid

    def any_alive(self) -> bool:
        """Whether any descendant may still run, after a fresh scan.

        ``True`` also when the scan could not read every candidate's environment:
        "all exited" is only concluded when it is certain.
        """
        complete = self.scan()
        return not complete or bool(self.alive())

    def terminate(self, grace: float, clock: Clock) -> list[int]:
        """Terminate every living descendant: SIGTERM, ``grace`` seconds, SIGKILL.

        A descendant may fork between a scan and its signal (a daemon half-way
        through its double fork, with SIGTERM blocked while it daemonizes), so
        the scan is repeated once everything found so far has exited, until a
        scan finds nobody new: only a process that has exited cannot fork.

        Returns:
            The PIDs that had to be terminated.
        """
        deadline = Deadline(grace, clock)
        victims: dict[int, psutil.Process] = {}
        while True:
            self.scan()
            fresh = [proc for proc in self.alive() if proc.pid not in victims]
            if not fresh:
                break
            for proc in fresh:
                victims[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            # Our own waits: psutil's would wait for PID 1 to reap a zombie.
            rest = [p for p in fresh if not _process.wait_gone(p.pid, deadline, max_interval=0.05)]
            for proc in rest:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            kill_deadline = Deadline(5.0, clock)
            for proc in rest:
                _process.wait_gone(proc.pid, kill_deadline, max_interval=0.05)
        _process.reap_all()
        return sorted(victims)
