"""The start command's side of a start: spawning it, knowing what it created, undoing it.

A :class:`Launch` spawns the start command (or the program run in the
foreground) in a session of its own, its output going where the daemon's
options say, and remembers what is needed to undo it: the processes it
created, found through an environment marker (see ``_tracking``).
:meth:`Launch.abort` stops all of them after a failed start, and
:meth:`Launch.error` turns the failure into the :class:`StartError` users see,
with the command's output and the daemon's new log lines.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import IO, TYPE_CHECKING

from . import _commands, _interrupts, _pidfile, _platform, _process, _record, _tracking
from ._errors import StartError, StartTimeout, hide_frames
from ._logs import open_for_program
from ._options import command_text
from ._readiness import Failed

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._logs import LogWatch
    from ._options import Command, StartTarget
    from ._waiting import Clock

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


class Launch:
    """One run of a start command and what it created.

    Args:
        target: The daemon.
        command: The start command.
        log: The daemon's log, as it was when the start began.
        detached: The program may stay in the foreground (``foreground()``,
            ``notify()``): its output goes to the log, and it is our child to reap.
    """

    def __init__(
        self, target: StartTarget, command: Command, log: LogWatch, *, detached: bool
    ) -> None:
        self.target = target
        self.name = target.name
        self.command = command
        self.log = log
        self.detached = detached
        self.tracker = _tracking.Descendants(_tracking.new_marker())  # before the spawn
        self.proc: subprocess.Popen[bytes] | None = None
        self.output_file: IO[bytes] | None = None
        self.recorded: int | None = None  # the PID named in the start record

    def record(self, pid: int) -> None:
        """Name ``pid`` in the start record, by a start time no clock step changes."""
        if pid != self.recorded:
            _record.update(self.target.files.record, _record.of(self.tracker.marker, pid))
            self.recorded = pid

    def write_pid_file(self, pid: int) -> None:
        """Write the PID file of a daemon that wrote none (foreground, notify), once ready.

        Many programs refuse to start when their PID file exists, so it is
        written only now. A PID file we cannot write fails the start (and
        stops the program).
        """
        pid_file = self.target.files.pid
        try:
            _pidfile.write(pid_file, pid)
        except OSError as err:
            raise Failed(
                f"Daemon '{self.name}' failed to start: cannot write its PID file "
                f"{str(pid_file)!r}: {err.strerror or err}",
                pid=pid,
            ) from err

    def spawn(self, extra_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Run the command; its descendants are tracked from now on.

        Raises:
            StartError: The log cannot be opened or the command cannot be run
                (nothing ran).
        """
        stdout: IO[bytes] | int | None
        if self.log.passthrough:
            stdout = None  # the user wants the daemon's output on our terminal
        elif self.detached:
            # The program (may) stay in the foreground: its output is its log.
            try:
                stdout = open_for_program(self.log.path, self.target.config.user)
            except OSError as err:
                msg = (
                    f"Daemon '{self.name}' failed to start: cannot open its log file "
                    f"{str(self.log.path)!r}: {err.strerror or err}"
                )
                raise StartError(self.name, msg, ran=False) from err
        else:
            import tempfile  # noqa: PLC0415 - import time, see _files.atomic_write

            self.output_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close_output()
            stdout = self.output_file
        try:
            proc = _commands.spawn(
                self.target.config,
                self.command,
                stdout=stdout,
                marker=self.tracker.marker,
                foreground=self.detached,
                extra_env=extra_env,
            )
        except OSError as err:
            text = command_text(self.command)
            msg = f"Daemon '{self.name}' failed to start: cannot run {text}: {err}"
            raise StartError(self.name, msg, ran=False) from err
        finally:
            if isinstance(stdout, int):
                os.close(stdout)
        if self.detached:
            _process.adopt(proc)
        self.tracker.adopt(proc.pid)
        self.proc = proc
        return proc

    def is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is a process this start created (a notify message's sender).

        A descendant of the start command (see ``_tracking``), or the live
        process the daemon's PID file names if it appeared since the start
        began: a daemon that rewrote its environment (its process title) is
        recognised only that way once its parent has exited.
        """
        tracker = self.tracker
        if pid in tracker.known:
            return True
        if pid == _pidfile.read_pid(self.target.files.pid):
            tracker.adopt(pid)  # refuses a process older than the start
        else:
            tracker.scan()
        return pid in tracker.known

    def abort(self, pid: int | None, clock: Clock) -> None:
        """Stop everything this start created: the command, the daemon, their children.

        SIGTERM, ``start_abort_timeout`` seconds, then SIGKILL; found through the
        PID file and the environment marker (see ``_tracking``), so a daemon that
        double-forked into its own session is found too. Ctrl-C cannot cut it
        short (it is raised when the abort is done), but makes SIGKILL follow
        SIGTERM at once.

        Args:
            pid: The daemon's PID, if the start learned it.
            clock: For the grace period.
        """
        _interrupts.complete(lambda interrupts: self._abort_steps(pid, clock, interrupts))

    def _abort_steps(self, pid: int | None, clock: Clock, interrupts: _interrupts.Deferred) -> None:
        cfg = self.target.config
        pid_file = self.target.files.pid
        written = _pidfile.read_pid(pid_file)
        for known in _present(written, pid):
            self.tracker.adopt(known)
        victims = self.tracker.terminate(cfg.start_abort_timeout, clock, interrupts.pending)
        if victims:
            cfg.logger.warning(
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
            _pidfile.remove_if_names(pid_file, written)
        _record.clear(self.target.files.record)
        _process.reap_all()

    def error(self, failure: Failed) -> StartError:
        """The error users see: the failure, the command's output, the daemon's new log."""
        output = None
        if self.output_file is not None:
            output = _commands.read_output(self.output_file)
        self.close_output()
        fields = {"output": output, "log": self.log.new_text(), **failure.fields}
        error: StartError
        if failure.timeout is not None:
            error = StartTimeout(self.name, failure.message, timeout=failure.timeout, **fields)
        else:
            error = StartError(self.name, failure.message, **fields)
        self.target.config.logger.debug("Daemon '%s' failed to start: %r", self.name, error)
        return error

    def close_output(self) -> None:
        """Close the file that captured the command's output."""
        if self.output_file is not None:
            self.output_file.close()
            self.output_file = None


def _present(*pids: int | None) -> Iterable[int]:
    return (pid for pid in dict.fromkeys(pids) if pid is not None)
