"""Finding every process a start command created, even after a double fork.

A daemon that goes into the background forks, calls ``setsid()`` and forks
again; its parent link to the start command is gone (it is re-parented to
PID 1) and it has its own session. What it keeps is its environment: every
start command runs with ``DAEMON_CONTROLLER_START=<unique id>``, which all its
descendants inherit. psutil reads it back.

Two more facts make the search cheap and safe:

* Only processes that did not exist before the start command was spawned are
  candidates, and each is looked at once (once it shows an environment: caught
  in the middle of ``exec()``, a process shows none for a moment).
* A process whose parent we already track is tracked too, which also covers a
  descendant that cleared its environment while its parent was still alive.

Limitation: a descendant that both cleared its environment (``env -i``,
``sudo``) and was orphaned before we saw it cannot be found; it is then
neither killed on abort nor counted as alive (see the README).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

import psutil

from . import _platform, _process
from ._errors import hide_frames
from ._waiting import Clock, Deadline

if TYPE_CHECKING:
    from collections.abc import Callable

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

MARKER = "DAEMON_CONTROLLER_START"
#: "Everything the start created has exited" must hold this long to count.
_ALL_GONE_CONFIRM = 0.015
#: While a watched descendant lives, all processes are scanned this often...
_RESCAN = 0.05
#: ...and otherwise at most this often (a scan of ~100 processes costs ~1.5 ms).
_MIN_SCAN_GAP = 0.01
#: A new process with an empty environment is looked at again while younger
#: than this: it may be in the middle of exec().
_EXEC_GRACE = 1.0


def new_marker() -> str:
    """A fresh value for the environment marker of one start."""
    return os.urandom(16).hex()  # (uuid would import platform: 4 ms)


def _handed_out(pid: int, since: int, until: int) -> bool:
    """Whether the kernel handed out ``pid`` after ``since`` and up to ``until`` (wrapping)."""
    if since <= until:
        return since < pid <= until
    return pid > since or pid <= until


class Descendants:
    """The processes created by one start command, found by marker and parentage.

    Made *before* the command is spawned: every PID that exists at that moment
    is not a descendant, so a scan only looks at processes that appeared since
    (on a busy machine, a handful), and each of them only once.

    Except that a PID is not a process. One that existed before the spawn, or
    belonged to a stranger, may be handed out again to a process of the start
    once its first owner has exited: with ``pid_max`` at 32768 and a busy
    machine, a few seconds after the counter wrapped. Skipped as "old", that
    descendant would be left running by an abort. So a PID stops counting as
    old once its process is gone from a scan's listing, or once the kernel's
    PID counter (Linux) has passed it since the last look.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        # pid -> creation time; the creation time tells a reused PID apart.
        self.known: dict[int, float] = {}
        self._counter = _platform.last_pid()  # first: a PID handed out after it is new
        self.before = set(psutil.pids())
        self.strangers: set[int] = set()
        #: The last scan met a candidate caught in ``exec()``: look again soon.
        self.pending = False

    def _listing(self) -> set[int]:
        """The PIDs that exist now; old ones handed out again since the last look are new."""
        counter = _platform.last_pid()  # before the listing, as in __init__
        pids = set(psutil.pids())
        self.before &= pids  # gone: if that PID comes back, it is somebody new
        self.strangers &= pids
        since, self._counter = self._counter, counter
        if since is not None and counter is not None and since != counter:
            old = self.before | self.strangers
            again = {pid for pid in old if _handed_out(pid, since, counter)}
            self.before -= again
            self.strangers -= again
        return pids

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
        self.pending = False
        pids = self._listing()
        for pid in sorted(pids - self.before - self.strangers - self.known.keys()):
            try:
                proc = psutil.Process(pid)
                ours = self._ours(proc)
                if ours:
                    self.known[pid] = proc.create_time()
                elif ours is None:
                    self.pending, complete = True, False
                else:
                    self.strangers.add(pid)
            except psutil.AccessDenied:
                complete = False  # look again next time
            except psutil.Error:
                self.strangers.add(pid)  # gone already
        return complete

    def _ours(self, proc: psutil.Process) -> bool | None:
        """Whether a new process descends from the start; ``None``: cannot tell yet."""
        if proc.ppid() in self.known:
            return True
        environment = proc.environ()
        if environment.get(MARKER) == self.marker:
            return True
        if not environment and _in_exec(proc):
            return None
        return False

    def alive(self) -> list[psutil.Process]:
        """The tracked processes that still run (zombies do not; ours are reaped).

        One ``/proc/PID/stat`` read per process: ``psutil.Process`` reads the
        creation time, and its status comes from the same file.
        """
        living = []
        for pid, created in list(self.known.items()):
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) > 0.01:  # noqa: PLR2004 - clock-tick tolerance
                    continue  # the PID was reused
                if _process.is_zombie(proc):
                    _process.reap(pid)
                    continue
            except psutil.NoSuchProcess:
                _process.reap(pid)
                continue
            except psutil.AccessDenied:
                pass  # it exists; we just may not look closer
            except psutil.Error:
                continue
            living.append(proc)
        return living

    def newest(self, living: list[psutil.Process]) -> int | None:
        """The most recently created of ``living`` (typically the daemon itself)."""
        if not living:
            return None
        return max(living, key=lambda proc: self.known.get(proc.pid, 0.0)).pid

    def survey(self) -> tuple[bool, list[psutil.Process]]:
        """A fresh scan, then who still runs: (whether the scan was complete, the living).

        An incomplete scan (some candidate's environment could not be read)
        means "all exited" cannot be concluded, whatever the living list says.
        """
        complete = self.scan()
        return complete, self.alive()

    def terminate(
        self, grace: float, clock: Clock, hurry: Callable[[], bool] | None = None
    ) -> list[int]:
        """Terminate every living descendant: SIGTERM, ``grace`` seconds, SIGKILL.

        A descendant may fork between a scan and its signal (a daemon half-way
        through its double fork, with SIGTERM blocked while it daemonizes), so
        the scan is repeated once everything found so far has exited, until a
        scan finds nobody new: only a process that has exited cannot fork.
        That last scan must come *after* everything was seen to have exited: a
        start command may fork its daemon and exit between a scan and the
        look at who is alive. (Looking first also spares a scan when nothing
        of the start is alive any more, as after a failed start command.)
        Once ``hurry()`` is true, SIGKILL follows SIGTERM at once.

        Returns:
            The PIDs that had to be terminated.
        """
        deadline = Deadline(grace, clock)
        victims: set[int] = set()
        while True:
            # Look first, scan after: whatever a process seen dead here forked
            # before it died is on the list the scan reads.
            fresh = [proc for proc in self.alive() if proc.pid not in victims]
            if fresh:
                victims.update(proc.pid for proc in fresh)
                _process.terminate(fresh, deadline, hurry)
            known = len(self.known)
            self.scan()
            if not fresh and len(self.known) == known:
                if not self.pending:
                    break  # all exited, and nobody new appeared since they did
                clock.sleep(0.001)  # a candidate is in exec(): it will show its environment
        _process.reap_all()
        return sorted(victims)


def _in_exec(proc: psutil.Process) -> bool:
    """Whether a process with an empty environment may be in the middle of ``exec()``.

    There, for a moment, its environment *and* its command line read empty.
    Daemons that overwrite their environment to set a process title (nginx,
    Redis, PostgreSQL) keep a command line; kernel threads have neither but
    are children of kthreadd (PID 2); a process stuck like this for long is
    neither, and ages out.
    """
    return (
        not proc.cmdline()
        and proc.ppid() not in (0, 2)
        and time.time() - proc.create_time() < _EXEC_GRACE
    )


def marked(marker: str) -> list[psutil.Process]:
    """The living processes carrying ``marker``: what one start created, and still runs.

    Scans every process we may read the environment of (all, as root); ours
    and our ancestors are left out, whatever they carry.
    """
    spared = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        spared.update(parent.pid for parent in psutil.Process().parents())
    found = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            if proc.environ().get(MARKER) == marker and _process.is_alive(proc.pid):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class AllExitedWatch:
    """Has everything a start command created exited? Answered cheaply, often.

    The newest living descendant is watched through its exit handle, which is
    cheap; only when it exits (or every ``_RESCAN`` seconds) are all processes
    scanned again. "All exited" must be seen twice, a few milliseconds apart,
    so that a process caught between two forks is not mistaken for a dead
    daemon.

    Attributes:
        watched: A living descendant (typically the daemon), or ``None``.
    """

    def __init__(self, tracker: Descendants, exits: _process.ExitWatches, clock: Clock) -> None:
        self.tracker = tracker
        self.exits = exits
        self.clock = clock
        self.watched: int | None = None
        self._last_scan = -_RESCAN
        self._all_gone_since: float | None = None
        self._scan_spent = 0.0

    def all_exited(self) -> bool:
        """``True`` once every descendant is confirmed gone."""
        now = self.clock.now()
        since_scan = now - self._last_scan
        if self.watched is not None and self.exits.alive(self.watched):
            if since_scan < _RESCAN:
                return False
        elif since_scan < _MIN_SCAN_GAP:
            return False
        self._last_scan = now
        complete, living = self.tracker.survey()
        self._scan_spent += self.clock.now() - now
        if not complete or living:
            self._all_gone_since = None
            self.watched = self.tracker.newest(living)
            return False
        self.watched = None
        if self._all_gone_since is None:
            self._all_gone_since = now
            return False
        return now - self._all_gone_since >= _ALL_GONE_CONFIRM

    def take_scan_time(self) -> float:
        """Seconds spent scanning since the last call.

        Scans rate-limit themselves, so they must not also stretch the pauses
        between checks.
        """
        spent, self._scan_spent = self._scan_spent, 0.0
        return spent
