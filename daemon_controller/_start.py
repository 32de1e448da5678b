"""One attempt to start a daemon, as an explicit state machine.

The phases, in order (a program run in the foreground starts at ``PING``)::

    COMMAND ──exit 0──▶ PID_FILE ──live PID──▶ PING ──answer──▶ READY
       │                   │                     │
       └──── any failure: the abort (SIGTERM, grace, SIGKILL), then StartError

``phase`` is set only at those transitions. For each phase, one ``match``
says what a look at the daemon does (:meth:`Start._check`), what wakes a pause
early and how long it may be (:meth:`Start._pause_for`, :meth:`Start._sleep`),
and what running out of time means (:meth:`Start._timed_out`).

A start run with a cancellation token (``_cancel``) wakes from any pause when
it is cancelled and is aborted like a failed one; ``Cancelled`` escapes,
carrying the :class:`StartError` that describes the aborted start.
"""

from __future__ import annotations

import contextlib
import enum
import os
import subprocess
import tempfile
from typing import IO, TYPE_CHECKING, Any, NoReturn

from . import _cancel, _commands, _interrupts, _pidfile, _platform, _process, _record, _tracking
from ._errors import StartError, StartTimeout, hide_frames
from ._logs import LogWatch, open_for_program
from ._options import command_text
from ._probes import PingUnusable
from ._waiting import Deadline, MonotonicClock, poll_until

if TYPE_CHECKING:
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
    #: The daemon's PID is known; it does not answer its ping yet.
    PING = "waiting for the daemon to answer"
    #: It answers.
    READY = "ready"


class _Failed(Exception):
    """Raised inside the wait loop; turned into a StartError with the output and log."""

    def __init__(self, message: str, *, timeout: float | None = None, **fields: Any) -> None:  # noqa: ANN401 - StartError fields
        super().__init__(message)
        self.message = message
        self.timeout = timeout
        self.fields = fields


class Start:
    """One attempt to start a daemon: the process it spawned, the log offset, the phase."""

    def __init__(self, target: StartTarget, command: Command, clock: Clock) -> None:
        self.target = target
        self.name = target.name
        self.cfg = target.config
        self.command = command
        self.clock = clock
        self.pid_file = target.files.pid
        self.record = target.files.record  # see _record
        self.probe = target.probe
        self.log = LogWatch(target.log_file, self.cfg.user)
        self.foreground = self.cfg.foreground
        self.phase = Phase.PING if self.foreground else Phase.COMMAND
        self.deadline = Deadline(self.cfg.start_timeout, clock)
        self.marker = _tracking.new_marker()
        self.exits = _process.ExitWatches()
        self.output_file: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # the start command's, once it exited
        self.pid: int | None = None  # the daemon's PID, once known
        self.last_activity = 0.0
        self.tracker: _tracking.Descendants | None = None
        self.descendants: _tracking.AllExitedWatch | None = None
        self.token = _cancel.current()

    # spawning ------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        stdout: IO[bytes] | int | None
        if self.log.passthrough:
            stdout = None  # the user wants the daemon's output on our terminal
        elif self.foreground:
            # The program stays in the foreground: its output is its log.
            try:
                stdout = open_for_program(self.log.path, self.cfg.user)
            except OSError as err:
                msg = (
                    f"Daemon '{self.name}' failed to start: cannot open its log file "
                    f"{str(self.log.path)!r}: {err.strerror or err}"
                )
                raise StartError(self.name, msg, ran=False) from err
        else:
            self.output_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in run()
            stdout = self.output_file
        try:
            proc = _commands.spawn(
                self.cfg,
                self.command,
                stdout=stdout,
                marker=self.marker,
                foreground=self.foreground,
            )
        except OSError as err:
            text = command_text(self.command)
            msg = f"Daemon '{self.name}' failed to start: cannot run {text}: {err}"
            raise StartError(self.name, msg, ran=False) from err
        finally:
            if isinstance(stdout, int):
                os.close(stdout)
        if self.foreground:
            _process.adopt(proc)
        return proc

    # one look at the daemon ------------------------------------------------------

    def _check(self) -> bool | None:
        """One look: ``True`` when ready, ``None`` for "not yet"; raises on failure."""
        assert self.proc is not None  # noqa: S101 - set in run()
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self._command_exited(self.returncode)
        match self.phase:
            case Phase.COMMAND:
                return None  # it has not gone into the background yet
            case Phase.PID_FILE:
                pid = self._find_pid()
                if pid is None:
                    return None
                self.phase = Phase.PING
            case _:
                pid = self._find_pid()
                if pid is None:  # pragma: no cover - _find_pid raises once the PID is known
                    return None
        if not self._ping():
            if not self.exits.alive(pid):
                self._died(pid)
            return None
        if not self.exits.alive(pid):  # a stranger answered the ping
            self._died(pid)
        self.phase = Phase.READY
        return True

    def _ping(self) -> bool:
        try:
            return self.probe.check(min(max(self.deadline.remaining(), 0.001), 1.0))
        except PingUnusable as err:
            raise _Failed(
                f"Daemon '{self.name}' failed to start: its ping can never answer: {err.detail}",
                exit_status=err.exit_status,
                pid=self.pid,
            ) from err

    def _command_exited(self, returncode: int) -> None:
        if returncode == 0:
            if self.phase is Phase.COMMAND:
                self.phase = Phase.PID_FILE  # the daemon is on its own from now on
                self.last_activity = self.clock.now()
            # A program run in the foreground that exits "successfully" is fine
            # only if it handed over to a daemon that wrote a PID file (_find_pid).
            return
        status, signame = _commands.describe_exit(returncode)
        what = "the program" if self.foreground else "the start command"
        raise _Failed(
            f"Daemon '{self.name}' failed to start: {what} failed.",
            exit_status=status,
            signal=signame,
        )

    def _find_pid(self) -> int | None:
        """The daemon's PID if known and alive; raises if it is known to have died."""
        assert self.proc is not None  # noqa: S101 - set in run()
        written = _pidfile.read_pid(self.pid_file)
        if written is not None:
            if self.exits.alive(written):
                refused = written != self.pid and _pidfile.distrust(
                    self.pid_file, written, self.cfg.user
                )
                if refused:
                    raise _Failed(f"Daemon '{self.name}' failed to start: {refused}.", pid=written)
                self.pid = written
                return written
            if self.pid is None or written == self.pid:
                self._died(written)
        if self.pid is not None:
            # The PID file vanished or is being rewritten; keep watching the PID we know.
            if self.exits.alive(self.pid):
                return self.pid
            self._died(self.pid)
        if self.foreground:
            if self.returncode is None:
                self.pid = self.proc.pid
                return self.pid
            raise _Failed(
                f"Daemon '{self.name}' failed to start: the program exited "
                "before it answered pings and wrote no PID file.",
                exit_status=self.returncode,
            )
        self._check_background()
        return None

    def _check_background(self) -> None:
        """No PID file yet: is anything of the daemon alive, and is its log active?"""
        assert self.descendants is not None  # noqa: S101 - set in run()
        if self.descendants.all_exited() and _pidfile.read_pid(self.pid_file) is None:
            raise _Failed(
                f"Daemon '{self.name}' failed to start: it exited after going into "
                f"the background, without writing its PID file {str(self.pid_file)!r}.",
            )
        if self.log.changed():
            self.last_activity = self.clock.now()
        elif self.clock.now() - self.last_activity > self.cfg.log_activity_timeout:
            raise self._silent_log()

    def _silent_log(self) -> _Failed:
        """No PID file and a silent log: say whether something of the daemon still runs."""
        assert self.descendants is not None  # noqa: S101 - set in run()
        watched = self.descendants.watched
        if watched is not None:
            what = (
                f"it still runs (PID {watched}) but has not written it; "
                "does the daemon write its PID file where pid() says?"
            )
        else:
            what = "it seems to have exited after going into the background."
        return _Failed(
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
        raise _Failed(
            f"Daemon '{self.name}' failed to start: its process (PID {pid}) exited "
            f"before it answered {self.probe.describe()}.",
            exit_status=exit_status,
            signal=signame,
            pid=pid,
        )

    # pausing between looks -------------------------------------------------------

    def _watched_pid(self) -> int | None:
        """The process whose exit is the next thing to react to, in this phase."""
        match self.phase:
            case Phase.COMMAND:
                return self.proc.pid if self.proc is not None else None
            case Phase.PID_FILE:
                return self.descendants.watched if self.descendants is not None else None
            case _:
                return self.pid

    def _pause_for(self, chosen: float) -> float:
        """While only the start command's exit can change anything, wait for it long.

        That wait wakes on the exit itself (see :meth:`_sleep`), so there is no
        point in checking every millisecond meanwhile.
        """
        if self.phase is Phase.COMMAND and self.proc and self.exits.has_handle(self.proc.pid):
            return self.cfg.ping_interval
        return chosen

    def _sleep(self, seconds: float) -> None:
        """Pause between looks; the watched process's exit or a cancellation ends it early."""
        pid = self._watched_pid()
        token = self.token
        real_time = isinstance(self.clock, MonotonicClock)
        wake = token.wake_fd() if token is not None and real_time else None  # polled with the pidfd
        if pid is not None and real_time and self.exits.wait(pid, seconds, wake):
            pass
        elif token is not None and real_time:
            token.sleep(seconds)
        else:
            self.clock.sleep(seconds)
        if token is not None:
            token.check()

    def _scan_time(self) -> float:
        return self.descendants.take_scan_time() if self.descendants is not None else 0.0

    # the whole start -------------------------------------------------------------

    def run(self) -> None:
        """Spawn, wait until ready; on any failure abort and raise :class:`StartError`."""
        logger = self.cfg.logger
        logger.info("Starting daemon '%s': %s", self.name, command_text(self.command))
        try:
            self.tracker = _tracking.Descendants(self.marker)
            self.descendants = _tracking.AllExitedWatch(self.tracker, self.exits, self.clock)
            # Before the spawn: a controller killed from here on leaves the marker behind.
            _record.write(self.record, _record.Record(self.marker))
            self.proc = self._spawn()
            self.tracker.adopt(self.proc.pid)
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
            self._write_own_pid_file()
            if self.pid is not None:  # who it is, by a start time no clock step changes
                _record.write(self.record, _record.of(self.marker, self.pid, ready=True))
        except _Failed as failure:
            self._abort()
            raise self._error(failure) from None
        except _cancel.Cancelled:
            self._abort()
            message = (
                f"Daemon '{self.name}' failed to start: the start was cancelled after "
                f"{self.deadline.elapsed():.3f} s ({self.phase.value}), and was aborted."
            )
            aborted = _Failed(message, reason="cancelled", pid=self.pid)
            raise _cancel.Cancelled(self._error(aborted)) from None
        except BaseException:
            self._abort()
            self._close_output()
            raise
        finally:
            self.exits.close()
        self._close_output()
        logger.info(
            "Daemon '%s' is ready (PID %s) after %.3f s",
            self.name,
            self.pid,
            self.deadline.elapsed(),
        )

    def _write_own_pid_file(self) -> None:
        """Write the PID file of a program run in the foreground, once it is ready.

        Many programs refuse to start when their PID file exists, so it is
        written only now, and only if the program wrote none itself. A PID file
        we cannot write fails the start (and stops the program).
        """
        if not self.foreground or self.pid is None or _pidfile.read_pid(self.pid_file) is not None:
            return
        try:
            _pidfile.write(self.pid_file, self.pid)
        except OSError as err:
            raise _Failed(
                f"Daemon '{self.name}' failed to start: cannot write its PID file "
                f"{str(self.pid_file)!r}: {err.strerror or err}",
                pid=self.pid,
            ) from err

    def _timed_out(self) -> NoReturn:
        timeout = self.cfg.start_timeout
        name = self.name
        match self.phase:
            case Phase.COMMAND:
                message = (
                    f"Daemon '{name}' did not start within {timeout:g} s: the start command "
                    "is still running. It seems to stay in the foreground instead of going "
                    "into the background; if so, use .foreground() (or daemonize_for_me=True "
                    "in DaemonController) and the library will detach it for you."
                )
            case Phase.PID_FILE:
                message = (
                    f"Daemon '{name}' did not start within {timeout:g} s: no PID file "
                    f"appeared at {str(self.pid_file)!r}."
                )
            case _:
                message = (
                    f"Daemon '{name}' did not start within {timeout:g} s: PID {self.pid} "
                    f"did not answer {self.probe.describe()}."
                )
        raise _Failed(message, timeout=timeout, pid=self.pid)

    def _abort(self) -> None:
        """Stop everything this start created: the command, the daemon, their children.

        SIGTERM, ``start_abort_timeout`` seconds, then SIGKILL; found through the
        PID file and the environment marker (see ``_tracking``), so a daemon that
        double-forked into its own session is found too. Ctrl-C cannot cut it
        short (it is raised after), but makes SIGKILL follow SIGTERM at once.
        """
        try:
            _interrupts.complete(self._abort_steps)
        except BaseException:
            self._close_output()  # no StartError will read it: a deferred Ctrl-C
            raise

    def _abort_steps(self, interrupts: _interrupts.Deferred) -> None:
        written = _pidfile.read_pid(self.pid_file)
        if self.tracker is not None:
            for pid in {written, self.pid} - {None}:
                assert pid is not None  # noqa: S101 - for the type checker
                self.tracker.adopt(pid)
            victims = self.tracker.terminate(
                self.cfg.start_abort_timeout, self.clock, interrupts.pending
            )
            if victims:
                self.cfg.logger.warning(
                    "Daemon '%s': stopped PIDs %s after a failed start",
                    self.name,
                    ", ".join(map(str, sorted(victims))),
                )
        if self.proc is not None:
            if self.proc.poll() is None:
                _platform.force_kill(self.proc.pid, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_process.KILL_GRACE)
        if written is not None and not _process.is_alive(written):
            _pidfile.remove_if_names(self.pid_file, written)
        _record.clear(self.record)
        _process.reap_all()

    def _error(self, failure: _Failed) -> StartError:
        output = None
        if self.output_file is not None:
            output = _commands.read_output(self.output_file)
        self._close_output()
        fields = {"output": output, "log": self.log.new_text(), **failure.fields}
        error: StartError
        if failure.timeout is not None:
            error = StartTimeout(self.name, failure.message, timeout=failure.timeout, **fields)
        else:
            error = StartError(self.name, failure.message, **fields)
        self.cfg.logger.debug("Daemon '%s' failed to start: %r", self.name, error)
        return error

    def _close_output(self) -> None:
        if self.output_file is not None:
            self.output_file.close()
            self.output_file = None
