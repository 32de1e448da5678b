"""One attempt to start a daemon, as an explicit state machine.

The phases, in order (a program run in the foreground starts at ``PING``)::

    COMMAND ──exit 0──▶ PID_FILE ──live PID──▶ PING ──ready──▶ READY
       │   ╰─────────── named by READY=1 ──────▶╯     │
       └──── any failure: the abort (SIGTERM, grace, SIGKILL), then StartError

"Ready" is what :mod:`._readiness` says: told (``READY=1``, a log line) and/or
answering the ping; a notify daemon naming its PID needs no PID file.

``phase`` is set only at those transitions. For each phase, one ``match``
says what a look at the daemon does (:meth:`Start._check`), what wakes a pause
early and how long it may be (:meth:`Start._wake_fds`, :meth:`Start._pause_for`),
and what running out of time means (:meth:`Start._timed_out`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NoReturn

from . import _cancel, _commands, _pidfile, _platform, _process, _record, _tracking
from ._errors import StartError, hide_frames
from ._fdwait import wait_readable
from ._launch import Launch
from ._logs import LogWatch
from ._options import command_text
from ._readiness import Failed, Readiness
from ._waiting import Deadline, MonotonicClock, poll_until

if TYPE_CHECKING:
    import subprocess

    from ._options import Command, StartTarget
    from ._waiting import Clock

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


class Phase(enum.Enum):
    """Where a start is."""

    #: The start command runs; it should put the daemon in the background and exit.
    COMMAND = "the start command is running"
    #: The command exited successfully; the daemon has not written its PID file yet.
    PID_FILE = "waiting for the PID file"
    #: The daemon's PID is known; it is not ready yet (no answer, or not told).
    PING = "waiting for the daemon to be ready"
    #: It is ready.
    READY = "ready"


#: While only events can change anything, the PID file's phase still looks
#: this often: the scan for new descendants wants it (see ``_tracking``).
_EVENT_PAUSE_PID_FILE = 0.05
#: Elsewhere, a look when no event came is a safety net only (at least this
#: long, or ``ping_interval`` if that is longer): every change wakes us.
_EVENT_PAUSE = 0.5


class Start:
    """One attempt to start a daemon: what it launched, what it was told, the phase."""

    def __init__(self, target: StartTarget, command: Command, clock: Clock) -> None:
        self.target = target
        self.name = target.name
        self.cfg = target.config
        self.clock = clock
        self.pid_file = target.files.pid
        self.probe = target.probe
        self.log = LogWatch(target.log_file, self.cfg.user)
        self.foreground = self.cfg.foreground
        # A notify daemon may stay in the foreground too: its output is its log.
        self.launch = Launch(target, command, self.log, detached=self.foreground or self.cfg.notify)
        self.phase = Phase.PING if self.foreground else Phase.COMMAND
        self.deadline = Deadline(self.cfg.start_timeout, clock)
        self.exits = _process.ExitWatches()
        self.descendants = _tracking.AllExitedWatch(self.launch.tracker, self.exits, clock)
        self.pid_watch: _platform.FileWatch | None = None  # the PID file appearing
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # the start command's, once it exited
        self.pid: int | None = None  # the daemon's PID, once known
        self.pid_written: int | None = None  # what its PID file said at the last look
        self.pid_version: tuple[int, int, int, int] | None = None  # ... and which version
        self.last_activity = 0.0
        self.token = _cancel.current()  # a cancellation ends a pause and aborts the start
        self.readiness = self._readiness()  # last: it opens the notify socket

    # one look at the daemon ------------------------------------------------------

    def _check(self) -> bool | None:
        """One look: ``True`` when ready, ``None`` for "not yet"; raises on failure."""
        assert self.proc is not None  # noqa: S101 - set in run()
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self._command_exited(self.returncode)
        self.readiness.take()
        match self.phase:
            case Phase.COMMAND if self.readiness.named_pid is None:
                return None  # it has not gone into the background, nor named itself
            case Phase.COMMAND | Phase.PID_FILE:
                pid = self._find_pid()
                if pid is None:
                    return None
                self.phase = Phase.PING
                self._close_pid_watch()  # now, not when the daemon is ready: it takes a while
            case _:
                pid = self._find_pid()
                if pid is None:  # pragma: no cover - _find_pid raises once the PID is known
                    return None
        self.launch.record(pid)  # while waiting: not on the way to start() returning
        if not self.readiness.ready(self.pid):
            if not self.exits.alive(pid):
                self._died(pid)
            return None
        if not self.exits.alive(pid):  # a stranger answered the ping
            self._died(pid)
        self.phase = Phase.READY
        return True

    def _command_exited(self, returncode: int) -> None:
        if returncode == 0:
            if self.phase is Phase.COMMAND:
                self.phase = Phase.PID_FILE  # the daemon is on its own from now on
                self.last_activity = self.clock.now()
            # A program run in the foreground that exits "successfully" is fine
            # only if it handed over to a daemon that wrote a PID file (_find_pid).
            return
        status, signame = _commands.describe_exit(returncode)
        if self.launch.detached and self.cfg.readiness != ("ping",):
            assert self.proc is not None  # noqa: S101 - set in run()
            message = self._death(self.proc.pid, status, signame)  # the program was the daemon
        else:
            message = f"{'the program' if self.foreground else 'the start command'} failed."
        raise Failed(
            f"Daemon '{self.name}' failed to start: {message}",
            exit_status=status,
            signal=signame,
        )

    def _find_pid(self) -> int | None:
        """The daemon's PID if known and alive; raises if it is known to have died.

        In order: the PID file; the PID the daemon named (``MAINPID=``); the
        PID already known; the process that sent ``READY=1``; a program run in
        the foreground.
        """
        assert self.proc is not None  # noqa: S101 - set in run()
        written = self._pid_in_file()
        if written is not None:
            if self.exits.alive(written):
                self._refuse_distrusted(written)
                if written != self.pid:
                    self.launch.tracker.adopt(written)  # now: a notify message may come from it
                self.pid = written
                return written
            if self.pid is None or written == self.pid:
                self._died(written)
        named = self.readiness.named_pid
        if named is not None and (self.pid is None or named == self.readiness.main_pid):
            self.pid = named
        if self.pid is not None:
            # The PID file vanished or is being rewritten; keep watching the PID we know.
            if self.exits.alive(self.pid):
                return self.pid
            self._died(self.pid)
        if self.foreground:
            if self.returncode is None:
                self.pid = self.proc.pid
                return self.pid
            raise Failed(
                f"Daemon '{self.name}' failed to start: the program exited "
                "before it was ready and wrote no PID file.",
                exit_status=self.returncode,
            )
        self._check_background()
        return None

    def _refuse_distrusted(self, written: int) -> None:
        """Fail if a PID file someone else could write names somebody else's process."""
        refused = written != self.pid and _pidfile.distrust(self.pid_file, written, self.cfg.user)
        if refused:
            raise Failed(f"Daemon '{self.name}' failed to start: {refused}.", pid=written)

    def _pid_in_file(self) -> int | None:
        """The PID file's PID; read again only when it changed (one stat() a look otherwise)."""
        version = _pidfile.signature(self.pid_file)
        if version is None or version != self.pid_version:
            self.pid_version, self.pid_written = version, _pidfile.read_pid(self.pid_file)
        return self.pid_written

    def _check_background(self) -> None:
        """No PID yet: is anything of the daemon alive, and is its log active?"""
        if self.descendants.all_exited() and _pidfile.read_pid(self.pid_file) is None:
            without = (
                self.readiness.missing()
                if self.cfg.notify
                else f"without writing its PID file {str(self.pid_file)!r}"
            )
            raise Failed(
                f"Daemon '{self.name}' failed to start: it exited after going into "
                f"the background, {without}.",
            )
        if self.cfg.notify:
            return  # it is to name itself; a quiet log while it prepares says nothing
        if self.log.changed():
            self.last_activity = self.clock.now()
        elif self.clock.now() - self.last_activity > self.cfg.log_activity_timeout:
            raise self._silent_log()

    def _silent_log(self) -> Failed:
        """No PID file and a silent log: say whether something of the daemon still runs."""
        watched = self.descendants.watched
        if watched is not None:
            what = (
                f"it still runs (PID {watched}) but has not written it; "
                "does the daemon write its PID file where pid() says?"
            )
        else:
            what = "it seems to have exited after going into the background."
        return Failed(
            f"Daemon '{self.name}' failed to start: no PID file at "
            f"{str(self.pid_file)!r} and no new log output for "
            f"{self.cfg.log_activity_timeout:g} s; {what}",
            timeout=self.cfg.log_activity_timeout,
            pid=watched,
        )

    def _died(self, pid: int) -> NoReturn:
        status = _process.reap(pid)
        exit_status, signame = (
            _commands.describe_exit(status) if status is not None else (None, None)
        )
        if self.cfg.readiness == ("ping",) and self.probe is not None:
            message = f"its process (PID {pid}) exited before it answered {self.probe.describe()}."
        else:
            message = self._death(pid, exit_status, signame)
        raise Failed(
            f"Daemon '{self.name}' failed to start: {message}",
            exit_status=exit_status,
            signal=signame,
            pid=pid,
        )

    def _death(self, pid: int, exit_status: int | None, signame: str | None) -> str:
        logged = bool((self.log.new_text() or "").strip())
        return self.readiness.death(pid, exit_status, signame, logged=logged)

    # pausing between looks -------------------------------------------------------

    def _watched_pids(self) -> list[int]:
        """The processes whose exit is the next thing to react to, in this phase."""
        assert self.proc is not None  # noqa: S101 - set in run()
        watched: int | None
        match self.phase:
            case Phase.COMMAND:
                watched = self.proc.pid
            case Phase.PID_FILE:
                watched = self.descendants.watched
            case _:
                watched = self.pid
        # A notify daemon's start command may outlive the daemon's first steps.
        command = self.proc.pid if self.returncode is None else None
        return list(dict.fromkeys(pid for pid in (watched, command) if pid is not None))

    def _wake_fds(self) -> list[int] | None:
        """What ends a pause early: exits, the daemon telling us, the PID file appearing.

        ``None`` when a watched process has no exit handle (the caller sleeps).
        """
        fds = self.readiness.fds()
        for pid in self._watched_pids():
            fd = self.exits.fileno(pid)
            if fd is None:
                return None
            fds.append(fd)
        if self.phase is Phase.PID_FILE and self.pid_watch is not None:
            self.pid_watch.changed()  # drained: the look after this pause reads the file
            fds.append(self.pid_watch.fileno())
        return fds

    def _pause_for(self, chosen: float) -> float:
        """How long to pause, given the polling schedule's choice: long when events wake us.

        A pause wakes on every event of :meth:`_wake_fds`. Only a ping must be
        asked on a schedule, and only once the daemon has told us what it is
        to tell; without one, looks in between would find nothing new. (The
        PID file's phase also rescans for new descendants now and then.)
        """
        if self.readiness.behind:
            return 0.0  # the log grows faster than one look reads it
        if not all(self.exits.has_handle(pid) for pid in self._watched_pids()):
            return chosen  # an exit would not wake us
        quiet = max(self.cfg.ping_interval, _EVENT_PAUSE)
        match self.phase:
            case Phase.COMMAND:
                return quiet
            case Phase.PID_FILE if self.pid_watch is not None and self.pid_watch.complete:
                return max(chosen, min(self.cfg.ping_interval, _EVENT_PAUSE_PID_FILE))
            case Phase.PING if self.readiness.evented and not (self.probe and self.readiness.told):
                return quiet
        return chosen  # asking a ping, or a log line polled for (no file events)

    def _sleep(self, seconds: float) -> None:
        """Pause between looks, waking early on any event of :meth:`_wake_fds` or a cancellation."""
        token = self.token
        fds = self._wake_fds() if isinstance(self.clock, MonotonicClock) else None
        if fds is not None:
            if token is not None:
                fds.append(token.wake_fd())
            wait_readable(fds, seconds)
        elif token is not None and isinstance(self.clock, MonotonicClock):
            token.sleep(seconds)
        else:
            self.clock.sleep(seconds)
        if token is not None:
            token.check()

    def _scan_time(self) -> float:
        return self.descendants.take_scan_time()

    # the whole start -------------------------------------------------------------

    def run(self) -> None:
        """Spawn, wait until ready; on any failure abort and raise :class:`StartError`."""
        logger = self.cfg.logger
        logger.info("Starting daemon '%s': %s", self.name, command_text(self.launch.command))
        try:
            if not self.foreground:  # watched from before the spawn: no event is missed
                self.pid_watch = _platform.watch_files([self.pid_file])
            # Before the spawn: a controller killed from here on leaves the marker behind.
            _record.write(self.target.files.record, _record.Record(self.launch.tracker.marker))
            self.proc = self.launch.spawn(self.readiness.environment())
            self.last_activity = self.clock.now()
            ready = poll_until(
                self._check,
                deadline=self.deadline,
                max_interval=self.cfg.ping_interval,
                sleep=self._sleep,
                overhead=self._scan_time,
                adjust=self._pause_for,
            )
            if not ready:
                self._timed_out()
            if self.cfg.own_pid_file and self.pid is not None and not self.pid_written:
                self.launch.write_pid_file(self.pid)  # the program names itself: we write it
        except Failed as failure:
            self.launch.abort(self.pid, self.clock)
            raise self.launch.error(failure) from None
        except _cancel.Cancelled:
            self.launch.abort(self.pid, self.clock)
            message = (
                f"Daemon '{self.name}' failed to start: the start was cancelled after "
                f"{self.deadline.elapsed():.3f} s ({self.phase.value}), and was aborted."
            )
            aborted = Failed(message, reason="cancelled", pid=self.pid)
            raise _cancel.Cancelled(self.launch.error(aborted)) from None
        except BaseException:
            self.launch.abort(self.pid, self.clock)
            self.launch.close_output()
            raise
        finally:
            self.exits.close()
            self._close_watches()
        self.launch.close_output()
        logger.info(
            "Daemon '%s' is ready (PID %s) after %.3f s",
            self.name,
            self.pid,
            self.deadline.elapsed(),
        )

    def _readiness(self) -> Readiness:
        """What the daemon will tell us, and the notify socket it tells it through."""
        try:
            return Readiness(self.target, self.log, self.deadline, self.launch.is_ours)
        except OSError as err:
            msg = f"Daemon '{self.name}' failed to start: no notify socket: {err}"
            raise StartError(self.name, msg, ran=False) from err

    def _close_watches(self) -> None:
        self.readiness.finish(self.pid if self.phase is Phase.READY else None)
        self._close_pid_watch()

    def _close_pid_watch(self) -> None:
        if self.pid_watch is not None:
            self.pid_watch.close()
            self.pid_watch = None

    def _timed_out(self) -> NoReturn:
        timeout = self.deadline.timeout or self.cfg.start_timeout
        within = f"Daemon '{self.name}' did not start within {timeout:g} s"
        missing = self.readiness.missing
        match self.phase:
            case Phase.COMMAND if self.cfg.notify:
                message = f"{within}: {missing()} (the start command still runs)."
            case Phase.COMMAND:
                message = (
                    f"{within}: the start command is still running. It seems to stay in the "
                    "foreground instead of going into the background; if so, use .foreground() "
                    "(or daemonize_for_me=True in DaemonController) and the library will "
                    "detach it for you."
                )
            case Phase.PID_FILE if self.cfg.notify:
                message = f"{within}: {missing()}."
            case Phase.PID_FILE:
                message = f"{within}: no PID file appeared at {str(self.pid_file)!r}."
            case _ if self.cfg.readiness == ("ping",) and self.probe is not None:
                message = f"{within}: PID {self.pid} did not answer {self.probe.describe()}."
            case _:
                # The ping is asked only once the daemon has told us the rest.
                asked = self.readiness.told
                message = f"{within}: {missing(answered=not asked)} (PID {self.pid})."
        raise Failed(message, timeout=timeout, pid=self.pid)
