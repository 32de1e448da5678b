"""The actions: start, stop, restart, connect, is_running, read_pid.

Each action takes a :class:`~daemon_controller.Daemon` (an immutable
description) and keeps its runtime state (the spawned process, the log offset,
the deadline) in local objects, so one ``Daemon`` can be used from many threads.

Locking follows the Ruby gem: start, stop and restart hold the lock file
exclusively throughout; is_running, read_pid and the first connect attempt hold
it shared, so they see a daemon either before a start or after it, never half-way.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import _failures, _lock, _pidfile, _platform, _process, _tracking
from ._errors import (
    AlreadyStarted,
    ConnectError,
    DaemonError,
    StartError,
    StartTimeout,
    StopError,
    StopTimeout,
)
from ._probes import holder, is_connect_error
from ._waiting import SYSTEM_CLOCK, Clock, Deadline, MonotonicClock, poll_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from ._probes import Probe
    from ._spec import Command, Daemon, DaemonConfig

T = TypeVar("T")

#: At most this much of a log file's new text is kept for an error message.
_LOG_TAIL_BYTES = 64 * 1024
#: How long a SIGKILLed process gets to disappear before we stop waiting.
_KILL_GRACE = 5.0
#: "Everything the start created has exited" must hold this long to count.
_ALL_GONE_CONFIRM = 0.015
#: How often connect() tries the lock without queueing before it queues.
_CONNECT_ROUNDS = 20
#: While a watched descendant lives, all processes are scanned this often...
_RESCAN = 0.05
#: ...and otherwise at most this often (a scan of ~100 processes costs ~1.5 ms).
_MIN_SCAN_GAP = 0.01


# -- validation ----------------------------------------------------------------------

_PART_HINTS = {
    "start_command": "start_with(...)",
    "ping_command": "ping_tcp(...), ping_unix(...), ping_http(...), ping_command(...) or ping(...)",
    "pid_file": "pid(...)",
    "log_file": "log(...)",
}


def _require(daemon: Daemon, *parts: str) -> None:
    missing = [part for part in parts if getattr(daemon.config, part) is None]
    if missing:
        hints = "; ".join(f"{part}: set it with .{_PART_HINTS[part]}" for part in missing)
        msg = f"Daemon '{daemon.name}' is missing {', '.join(missing)} ({hints})"
        raise ValueError(msg)


def _paths(daemon: Daemon) -> tuple[Path, Path]:
    cfg = daemon.config
    assert cfg.pid_file is not None  # noqa: S101 - checked by _require
    lock = cfg.effective_lock_file
    assert lock is not None  # noqa: S101 - follows from pid_file
    return cfg.pid_file, lock


# -- commands and output ---------------------------------------------------------------


def _environment(cfg: DaemonConfig, marker: str | None = None) -> dict[str, str] | None:
    if not cfg.env and marker is None and cfg.user is None:
        return None
    env = dict(os.environ)
    if cfg.user is not None:
        env.update(_platform.user_environment(cfg.user))
    env.update(cfg.env)
    if marker is not None:
        env[_tracking.MARKER] = marker
    return env


def _spawn_kwargs(cfg: DaemonConfig) -> dict[str, Any]:
    """Platform ``Popen`` arguments: a session of its own, and ``.user()``."""
    try:
        return _platform.detach_kwargs(cfg.user)
    except (LookupError, PermissionError, NotImplementedError) as err:
        # Raised as an OSError so that the callers' spawn-failure paths report it.
        raise OSError(str(err)) from err


def _popen_args(command: Command) -> tuple[str | Sequence[str], bool]:
    return (command, True) if isinstance(command, str) else (list(command), False)


_SHELL_SYNTAX = re.compile(r"[;&|<>()`$\n{}*?\[\]~#]|^\s*\w+=")


def _exec_in_shell(command: str) -> str:
    """``exec <command>`` for a simple shell command run in the foreground.

    dash (``/bin/sh`` on Debian) forks for ``sh -c "program args"``, so the
    PID we see would be the shell's, and stopping it would leave the program
    running. ``exec`` makes the shell become the program. Commands using shell
    syntax (pipes, ``&&``, redirections, variables, ``VAR=value`` prefixes)
    are left alone; their process group is signalled on stop instead.
    """
    return command if _SHELL_SYNTAX.search(command) else f"exec {command}"


def _describe_exit(returncode: int) -> tuple[int | None, str | None]:
    """``(exit_status, signal_name)`` from a ``subprocess`` return code."""
    if returncode < 0:
        return None, _platform.signal_name(-returncode)
    return returncode, None


def _read_output(handle: Any) -> str:  # noqa: ANN401 - a binary temporary file
    handle.seek(0)
    return str(handle.read().decode("utf-8", errors="replace"))


@dataclass(slots=True)
class _CommandResult:
    returncode: int | None  # None: killed by us after the timeout
    output: str


def _run_command(cfg: DaemonConfig, command: Command, timeout: float) -> _CommandResult:
    """Run a stop or restart command to completion, capturing its output.

    Output goes to a temporary file, not a pipe: a command that starts a daemon
    leaves the daemon holding its stdout, and reading a pipe to EOF would wait
    for the daemon to exit.
    """
    args, shell = _popen_args(command)
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_environment(cfg),
                cwd=cfg.cwd,
                **_spawn_kwargs(cfg),
            )
        except OSError as err:
            # Reported like a shell reports a command it cannot run.
            text = command if isinstance(command, str) else " ".join(command)
            return _CommandResult(127, f"cannot run {text}: {err}")
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _platform.force_kill(proc.pid, group=True)
            proc.wait()
            returncode = None
        except BaseException:
            _platform.force_kill(proc.pid, group=True)
            proc.wait()
            raise
        return _CommandResult(returncode, _read_output(out))


class _LogWatch:
    """Follows the daemon's log file during a start: activity, and the new text.

    A log that does not exist yet counts as empty, so a log created during the
    start is all new. A log that is not a regular file (``/dev/stderr``, a FIFO)
    cannot be read back: its text is ``None``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readable = str(path) not in _platform.PASSTHROUGH_LOG_PATHS
        self.offset = 0
        self.inode: int | None = None
        self.signature: tuple[int, int] | None = None
        info = self._stat()
        if info is not None:
            if stat.S_ISREG(info.st_mode):
                self.offset = info.st_size
                self.inode = info.st_ino
                self.signature = (info.st_size, info.st_mtime_ns)
            else:
                self.readable = False

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except OSError:
            return None

    def changed(self) -> bool:
        """Whether the log grew or was touched since the last call."""
        info = self._stat()
        signature = None if info is None else (info.st_size, info.st_mtime_ns)
        if signature != self.signature:
            self.signature = signature
            return True
        return False

    def new_text(self) -> str | None:
        """What was appended since the start began (its last 64 KiB), or ``None``."""
        if not self.readable:
            return None
        try:
            with open(self.path, "rb") as f:  # noqa: PTH123 - we need fstat on the handle
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return None
                start = self.offset
                if info.st_size < start or (self.inode is not None and info.st_ino != self.inode):
                    start = 0  # truncated or replaced (log rotation): all of it is new
                start = max(start, info.st_size - _LOG_TAIL_BYTES)
                f.seek(start)
                data = f.read(_LOG_TAIL_BYTES)
        except FileNotFoundError:
            return ""
        except OSError:
            return None
        return data.decode("utf-8", errors="replace")


# -- stopping a process ---------------------------------------------------------------


# -- start ---------------------------------------------------------------------------------


class _StartFailed(Exception):
    """Raised inside the wait loop; turned into a StartError with the output and log."""

    def __init__(self, message: str, *, timeout: float | None = None, **fields: Any) -> None:  # noqa: ANN401 - StartError fields
        super().__init__(message)
        self.message = message
        self.timeout = timeout
        self.fields = fields


class _Start:
    """One attempt to start a daemon; holds the process and the log offset."""

    def __init__(self, daemon: Daemon, command: Command, clock: Clock) -> None:
        self.daemon = daemon
        self.cfg = daemon.config
        self.command = command
        self.clock = clock
        pid_file, _ = _paths(daemon)
        self.pid_file = pid_file
        assert self.cfg.log_file is not None  # noqa: S101 - checked by _require
        assert self.cfg.ping_command is not None  # noqa: S101 - checked by _require
        self.probe: Probe = self.cfg.ping_command
        self.log = _LogWatch(self.cfg.log_file)
        self.detached = self.cfg.daemonize_for_me
        self.output_file: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.pid: int | None = None  # the daemon's PID, once known
        self.last_activity = 0.0
        self.deadline = Deadline(self.cfg.start_timeout, clock)
        self.marker = _tracking.new_marker()
        self.tracker: _tracking.Descendants | None = None
        self.all_gone_since: float | None = None
        self.watched: int | None = None  # a living descendant, while there is no PID file
        self.last_scan = -_RESCAN
        self.scan_spent = 0.0
        self.handles: dict[int, _platform.ExitHandle | None] = {}

    # spawning ------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        args, shell = _popen_args(self.command)
        if self.detached and isinstance(args, str) and _platform.SHELL_HAS_EXEC:
            args = _exec_in_shell(args)
        log_path = str(self.cfg.log_file)
        passthrough = log_path in _platform.PASSTHROUGH_LOG_PATHS
        stdout: Any
        if passthrough:
            stdout = None  # the user wants the daemon's output on our terminal
        elif self.detached:
            # The program stays in the foreground: its output is its log.
            try:
                stdout = open(log_path, "ab")  # noqa: SIM115, PTH123 - handed to the child, closed below
            except OSError as err:
                msg = (
                    f"Daemon '{self.daemon.name}' failed to start: cannot open its log file "
                    f"{log_path!r}: {err.strerror or err}"
                )
                raise StartError(self.daemon.name, msg, ran=False) from err
        else:
            self.output_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in run()
            stdout = self.output_file
        try:
            proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                env=_environment(self.cfg, self.marker),
                cwd=self.cfg.cwd,
                close_fds=True,
                pass_fds=self.cfg.keep_ios,
                **_spawn_kwargs(self.cfg),
            )
        except OSError as err:
            self._fail_spawn(err)
        finally:
            if self.detached and stdout is not None:
                stdout.close()
        if self.detached:
            _process.adopt(proc)
        return proc

    def _fail_spawn(self, err: OSError) -> NoReturn:
        msg = (
            f"Daemon '{self.daemon.name}' failed to start: cannot run {self._command_text()}: {err}"
        )
        raise StartError(self.daemon.name, msg, output=None, log=self.log.new_text()) from err

    def _command_text(self) -> str:
        return self.command if isinstance(self.command, str) else " ".join(self.command)

    # the wait loop ---------------------------------------------------------------

    def _check(self) -> bool | None:
        """One look at the daemon: ``True`` when ready, ``None`` for "not yet"."""
        assert self.proc is not None  # noqa: S101 - set in run()
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self._on_command_exit(self.returncode)
            elif not self.detached:
                return None  # the start command has not gone into the background yet
        pid = self._current_pid()
        if pid is None:
            return None
        if not self.probe.check(min(max(self.deadline.remaining(), 0.001), 1.0)):
            if not self._alive(pid):
                self._on_daemon_death(pid)
            return None
        if not self._alive(pid):  # a stranger answered the ping
            self._on_daemon_death(pid)
        return True

    def _alive(self, pid: int) -> bool:
        """Whether ``pid`` runs: psutil the first time, then its pidfd (one ``poll()``).

        Cheap checks mean short pauses between them (see ``poll_until``), and
        so a short delay between the daemon becoming ready and ``start()``
        returning.
        """
        if pid not in self.handles:
            if not _process.is_alive(pid):
                return False
            self.handles[pid] = _platform.exit_handle(pid)
            return True
        handle = self.handles[pid]
        if handle is None:
            return _process.is_alive(pid)
        if handle.exited():
            _process.reap(pid)
            return False
        return True

    def _close_handles(self) -> None:
        for handle in self.handles.values():
            if handle is not None:
                handle.close()
        self.handles.clear()

    def _on_command_exit(self, returncode: int) -> None:
        if returncode == 0 and not self.detached:
            self.last_activity = self.clock.now()  # the daemon is on its own from now on
            return
        if returncode == 0:
            # A program we daemonized exited "successfully": fine only if it handed
            # over to a daemon that wrote a PID file (checked in _current_pid).
            return
        status, signame = _describe_exit(returncode)
        what = "the start command" if not self.detached else "the program"
        raise _StartFailed(
            f"Daemon '{self.daemon.name}' failed to start: {what} failed.",
            exit_status=status,
            signal=signame,
        )

    def _current_pid(self) -> int | None:
        """The daemon's PID if known and alive; raises if it is known to have died."""
        assert self.proc is not None  # noqa: S101 - set in run()
        written = _pidfile.read_pid(self.pid_file)
        if written is not None:
            if self._alive(written):
                self.pid = written
                return written
            if self.pid is None or written == self.pid:
                self._on_daemon_death(written)
        if self.pid is not None:
            # The PID file vanished or is being rewritten; keep watching the PID we know.
            if self._alive(self.pid):
                return self.pid
            self._on_daemon_death(self.pid)
        if self.detached:
            if self.returncode is None:
                self.pid = self.proc.pid
                return self.pid
            raise _StartFailed(
                f"Daemon '{self.daemon.name}' failed to start: the program exited "
                "before it answered pings and wrote no PID file.",
                exit_status=self.returncode,
            )
        # Gone into the background, no PID file yet: is anything of it still alive?
        self._check_descendants()
        if self.log.changed():
            self.last_activity = self.clock.now()
        elif self.clock.now() - self.last_activity > self.cfg.log_file_activity_timeout:
            raise self._silent_log_failure()
        return None

    def _silent_log_failure(self) -> _StartFailed:
        """No PID file and a silent log: say whether something of the daemon still runs."""
        if self.watched is not None:
            what = (
                f"it still runs (PID {self.watched}) but has not written it; "
                "does the daemon write its PID file where pid() says?"
            )
        else:
            what = "it seems to have exited after going into the background."
        return _StartFailed(
            f"Daemon '{self.daemon.name}' failed to start: no PID file at "
            f"{str(self.pid_file)!r} and no new log output for "
            f"{self.cfg.log_file_activity_timeout:g} s; {what}",
            timeout=self.cfg.log_file_activity_timeout,
            pid=self.watched,
        )

    def _pause(self, chosen: float) -> float:
        """While only the start command's exit can change anything, wait for it long.

        That wait wakes on the exit itself (see ``_sleep``), so there is no point
        in checking every millisecond meanwhile.
        """
        if (
            self.returncode is None
            and not self.detached
            and self.proc is not None
            and self.handles.get(self.proc.pid) is not None
        ):
            return self.cfg.ping_interval
        return chosen

    def _sleep(self, seconds: float) -> None:
        """Pause between checks, waking early when the process we watch exits.

        While the start command runs, that is the command (its exit is the next
        thing to react to); then the daemon, from its PID file or, before there
        is one, from the environment marker (its death ends the start at once).
        Event-driven where the platform has exit handles (pidfd).
        """
        target = None
        if self.proc is not None and self.returncode is None:
            target = self.proc.pid
        elif self.pid is not None:
            target = self.pid
        else:
            target = self.watched
        if target is not None and isinstance(self.clock, MonotonicClock):
            if target not in self.handles:
                self._alive(target)
            handle = self.handles.get(target)
            if handle is not None:
                handle.wait(seconds)
                return
        self.clock.sleep(seconds)

    def _take_scan_time(self) -> float:
        spent, self.scan_spent = self.scan_spent, 0.0
        return spent

    def _check_descendants(self) -> None:
        """Fail at once when every process the start command created has exited.

        The newest living descendant is watched through its exit handle, which
        is cheap; only when it exits (or every ``_RESCAN`` seconds) are all
        processes scanned again. "All exited" must be seen twice, a few
        milliseconds apart, so that a process caught between two forks is not
        mistaken for a dead daemon.
        """
        tracker = self.tracker
        assert tracker is not None  # noqa: S101 - set in run()
        now = self.clock.now()
        since_scan = now - self.last_scan
        if self.watched is not None and self._alive(self.watched):
            if since_scan < _RESCAN:
                return
        elif since_scan < _MIN_SCAN_GAP:
            return
        self.last_scan = now
        alive = tracker.any_alive()
        # Scans are rate-limited here; they must not also stretch the pauses.
        self.scan_spent += self.clock.now() - now
        if alive:
            self.all_gone_since = None
            self.watched = tracker.newest_alive()
            return
        self.watched = None
        if self.all_gone_since is None:
            self.all_gone_since = now
            return
        if now - self.all_gone_since < _ALL_GONE_CONFIRM:
            return
        if _pidfile.read_pid(self.pid_file) is not None:
            return  # it wrote its PID file just now; the next look decides
        raise _StartFailed(
            f"Daemon '{self.daemon.name}' failed to start: it exited after going into "
            f"the background, without writing its PID file {str(self.pid_file)!r}.",
        )

    def _on_daemon_death(self, pid: int) -> NoReturn:
        status = _process.reap(pid)
        exit_status, signame = _describe_exit(status) if status is not None else (None, None)
        raise _StartFailed(
            f"Daemon '{self.daemon.name}' failed to start: its process (PID {pid}) exited "
            f"before it answered {self.probe.describe()}.",
            exit_status=exit_status,
            signal=signame,
            pid=pid,
        )

    # the whole start -------------------------------------------------------------

    def run(self) -> None:
        logger = self.cfg.logger
        logger.info("Starting daemon '%s': %s", self.daemon.name, self._command_text())
        try:
            self.tracker = _tracking.Descendants(self.marker)
            self.proc = self._spawn()
            self.tracker.attach(self.proc.pid)
            self.last_activity = self.clock.now()
            ready = poll_until(
                self._check,
                deadline=self.deadline,
                max_interval=self.cfg.ping_interval,
                sleep=self._sleep,
                overhead=self._take_scan_time,
                adjust=self._pause,
            )
            if not ready:
                self._timed_out()
            self._write_own_pid_file()
        except _StartFailed as failure:
            self._abort()
            raise self._error(failure) from None
        except BaseException:
            self._abort()
            self._close_output()
            raise
        finally:
            self._close_handles()
        self._close_output()
        logger.info(
            "Daemon '%s' is ready (PID %s) after %.3f s",
            self.daemon.name,
            self.pid,
            self.deadline.elapsed(),
        )

    def _write_own_pid_file(self) -> None:
        """Write the PID file of a program we daemonized, once it is ready.

        Many programs refuse to start when their PID file exists, so it is
        written only now, and only if the program wrote none itself. A PID file
        we cannot write fails the start (and stops the program).
        """
        if not self.detached or self.pid is None or _pidfile.read_pid(self.pid_file) is not None:
            return
        try:
            _pidfile.write(self.pid_file, self.pid)
        except OSError as err:
            raise _StartFailed(
                f"Daemon '{self.daemon.name}' failed to start: cannot write its PID file "
                f"{str(self.pid_file)!r}: {err.strerror or err}",
                pid=self.pid,
            ) from err

    def _timed_out(self) -> NoReturn:
        timeout = self.cfg.start_timeout
        name = self.daemon.name
        if self.returncode is None and not self.detached:
            message = (
                f"Daemon '{name}' did not start within {timeout:g} s: the start command "
                "is still running. It seems to stay in the foreground instead of going "
                "into the background; if so, use .daemonize_for_me() (or "
                "daemonize_for_me=True) and the library will detach it for you."
            )
        elif self.pid is None:
            message = (
                f"Daemon '{name}' did not start within {timeout:g} s: no PID file "
                f"appeared at {str(self.pid_file)!r}."
            )
        else:
            message = (
                f"Daemon '{name}' did not start within {timeout:g} s: PID {self.pid} "
                f"did not answer {self.probe.describe()}."
            )
        raise _StartFailed(message, timeout=timeout, pid=self.pid)

    def _abort(self) -> None:
        """Stop everything this start created: the command, the daemon, their children.

        SIGTERM, ``start_abort_timeout`` seconds, then SIGKILL; found through the
        PID file and the environment marker (see ``_tracking``), so a daemon that
        double-forked into its own session is found too.
        """
        grace = self.cfg.start_abort_timeout
        tracker = self.tracker
        written = _pidfile.read_pid(self.pid_file)
        if tracker is not None:
            for pid in {written, self.pid} - {None}:
                assert pid is not None  # noqa: S101 - for the type checker
                tracker.adopt(pid)
            victims = tracker.terminate(grace, self.clock)
            if victims:
                self.cfg.logger.warning(
                    "Daemon '%s': stopped PIDs %s after a failed start",
                    self.daemon.name,
                    ", ".join(map(str, sorted(victims))),
                )
        if self.proc is not None:
            if self.proc.poll() is None:
                _platform.force_kill(self.proc.pid, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_KILL_GRACE)
        if written is not None and not _process.is_alive(written):
            _pidfile.remove_if_names(self.pid_file, written)
        _process.reap_all()

    def _error(self, failure: _StartFailed) -> StartError:
        output = None
        if self.output_file is not None:
            output = _read_output(self.output_file)
        self._close_output()
        fields = {"output": output, "log": self.log.new_text(), **failure.fields}
        error: StartError
        if failure.timeout is not None:
            error = StartTimeout(
                self.daemon.name, failure.message, timeout=failure.timeout, **fields
            )
        else:
            error = StartError(self.daemon.name, failure.message, **fields)
        self.cfg.logger.debug("Daemon '%s' failed to start: %r", self.daemon.name, error)
        return error

    def _close_output(self) -> None:
        if self.output_file is not None:
            self.output_file.close()
            self.output_file = None


def _resolve_start_command(daemon: Daemon) -> Command:
    from ._spec import _command  # noqa: PLC0415 - _spec imports this module

    command = daemon.config.start_command
    if callable(command):
        command = _command(daemon.name, "the start command function's result", command())
    assert command is not None  # noqa: S101 - checked by _require
    return command


def _refuse_stranger(daemon: Daemon) -> None:
    """Fail if something already answers the ping although our daemon is not running.

    Otherwise the new daemon would fail to bind (or worse, start() would report
    success because the stranger answers) and the caller would talk to
    whatever holds the port.
    """
    probe = daemon.config.ping_command
    assert probe is not None  # noqa: S101 - checked by _require
    if not probe.check(0.5):
        return
    who = holder(probe)
    where = f" by {who}" if who else ""
    msg = (
        f"Daemon '{daemon.name}' cannot be started: {probe.describe()} is already answered"
        f"{where}, which is not the process in its PID file "
        f"{str(daemon.config.pid_file)!r}. Stop that process or use another address."
    )
    raise StartError(daemon.name, msg, reason="address in use", ran=False)


def _start_locked(daemon: Daemon, clock: Clock) -> None:
    pid_file, _ = _paths(daemon)
    running = _pidfile.live_pid(pid_file)
    if running is not None:
        raise AlreadyStarted(daemon.name, running)
    _pidfile.remove(pid_file)  # leftover from a crash, or stale
    _refuse_stranger(daemon)
    if daemon.config.before_start is not None:
        daemon.config.before_start()
    _Start(daemon, _resolve_start_command(daemon), clock).run()


_START_PARTS = ("start_command", "ping_command", "pid_file", "log_file")


def start(daemon: Daemon, clock: Clock = SYSTEM_CLOCK) -> None:
    """See :meth:`Daemon.start`."""
    _require(daemon, *_START_PARTS)
    _, lock = _paths(daemon)
    with _lock.locked(lock, daemon.name, shared=False):
        _start_locked(daemon, clock)


# -- stop ------------------------------------------------------------------------------------


def _request_stop(daemon: Daemon, pid: int | None, deadline: Deadline, *, group: bool) -> bool:
    """Ask the daemon to stop (stop command or signal); ``False`` if there is nothing to do."""
    cfg = daemon.config
    name = daemon.name
    if cfg.stop_command is not None:
        if pid is None and cfg.dont_stop_if_pid_file_invalid:
            cfg.logger.info("Daemon '%s' is not running; not running its stop command", name)
            return False
        cfg.logger.info("Stopping daemon '%s' with its stop command", name)
        result = _run_command(cfg, cfg.stop_command, deadline.remaining())
        if result.returncode is not None and result.returncode != 0:
            status, signame = _describe_exit(result.returncode)
            msg = f"Daemon '{name}' could not be stopped: the stop command failed."
            raise StopError(
                name, msg, output=result.output, exit_status=status, signal=signame, pid=pid
            )
        return True
    if pid is None:
        return False
    cfg.logger.info("Stopping daemon '%s' (PID %d)", name, pid)
    try:
        _platform.send_signal(pid, _platform.parse_signal(cfg.stop_graceful_signal), group=group)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        msg = (
            f"Daemon '{name}' could not be stopped: no permission to signal PID {pid} "
            "(it belongs to another user)."
        )
        raise StopError(name, msg, pid=pid) from err
    return True


def _stop_locked(daemon: Daemon, clock: Clock) -> None:
    cfg = daemon.config
    pid_file, _ = _paths(daemon)
    deadline = Deadline(cfg.stop_timeout, clock)
    pid = _pidfile.live_pid(pid_file)
    if pid is None:
        _remove_stale(pid_file)
    # A program we run in the foreground leads a process group of its own; when
    # it is a shell running a pipeline, the group is the daemon, not the PID.
    group = cfg.daemonize_for_me and pid is not None and _platform.leads_group(pid)
    if not _request_stop(daemon, pid, deadline, group=group):
        return
    if pid is not None:
        gone = _process.wait_gone(pid, deadline, max_interval=cfg.ping_interval)
        if gone and group:
            gone = bool(
                poll_until(
                    lambda: None if _platform.group_alive(pid) else True,
                    deadline=deadline,
                    max_interval=cfg.ping_interval,
                )
            )
    else:
        gone = bool(
            poll_until(
                lambda: True if _pidfile.live_pid(pid_file) is None else None,
                deadline=deadline,
                max_interval=cfg.ping_interval,
            ),
        )
    if not gone:
        _force_stop(daemon, pid, clock, group=group)
    if pid is not None:
        _pidfile.remove_if_names(pid_file, pid)
    cfg.logger.info("Daemon '%s' stopped after %.3f s", daemon.name, deadline.elapsed())


def _force_stop(daemon: Daemon, pid: int | None, clock: Clock, *, group: bool = False) -> NoReturn:
    cfg = daemon.config
    pid_file, _ = _paths(daemon)
    victim = pid if pid is not None else _pidfile.live_pid(pid_file)
    cfg.logger.warning(
        "Daemon '%s' did not exit within %g s; killing PID %s",
        daemon.name,
        cfg.stop_timeout,
        victim,
    )
    if victim is not None:
        # Listed before the kill, while they are still its children: a killed
        # nginx master leaves its workers running (re-parented to PID 1), still
        # serving the requests that held up the stop.
        family = _process.descendants(victim)
        try:
            _platform.force_kill(victim, group=group)
        except PermissionError as err:
            msg = (
                f"Daemon '{daemon.name}' did not exit within {cfg.stop_timeout:g} s, and "
                f"there is no permission to kill PID {victim} (it belongs to another user)."
            )
            raise StopError(daemon.name, msg, pid=victim) from err
        _process.wait_gone(victim, Deadline(_KILL_GRACE, clock), max_interval=0.05)
        _process.kill_all(family, Deadline(_KILL_GRACE, clock))
    _pidfile.remove(pid_file)
    msg = (
        f"Daemon '{daemon.name}' did not exit within {cfg.stop_timeout:g} s and was killed"
        f" (PID {victim})."
    )
    raise StopTimeout(daemon.name, msg, timeout=cfg.stop_timeout, pid=victim)


def _remove_stale(pid_file: Path) -> None:
    """Remove the PID file if it names a process that is not (or no longer) ours."""
    if _pidfile.read_pid(pid_file) is not None:
        _pidfile.remove(pid_file)


def stop(daemon: Daemon, clock: Clock = SYSTEM_CLOCK) -> None:
    """See :meth:`Daemon.stop`."""
    _require(daemon, "pid_file")
    _, lock = _paths(daemon)
    with _lock.locked(lock, daemon.name, shared=False):
        _stop_locked(daemon, clock)


# -- restart ---------------------------------------------------------------------------------


def _owner_follows(daemon: Daemon, before: int | None) -> None:
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
    pid_file, lock = _paths(daemon)
    after = _pidfile.read_pid(pid_file)
    if before is None or after is None or after == before:
        return
    owner = _lock.owner_path(lock)
    if _pidfile.read_pid(owner) != before:
        return  # no block owns the old daemon (checked again under the lock)
    try:
        held = _lock.acquire(_lock.users_path(lock), daemon.name, shared=True, blocking=False)
    except DaemonError:
        return  # no .users file can be made here, so no block can have written an owner
    if held is None:
        return
    try:
        if _pidfile.read_pid(owner) == before:
            _pidfile.write(owner, after)
    except OSError as err:
        daemon.config.logger.warning(
            "Daemon '%s' restarted, but its owner file %s could not be updated: %s",
            daemon.name,
            owner,
            err,
        )
    finally:
        held.release()


def restart(daemon: Daemon, clock: Clock = SYSTEM_CLOCK) -> None:
    """See :meth:`Daemon.restart`: atomic, under one exclusive lock."""
    cfg = daemon.config
    if cfg.restart_command is None:
        _require(daemon, *_START_PARTS)
        pid_file, lock = _paths(daemon)
        with _lock.locked(lock, daemon.name, shared=False):
            before = _pidfile.read_pid(pid_file)
            _stop_locked(daemon, clock)
            _start_locked(daemon, clock)
            _owner_follows(daemon, before)
        return
    _require(daemon, "ping_command", "pid_file")
    pid_file, lock = _paths(daemon)
    assert cfg.ping_command is not None  # noqa: S101 - checked by _require
    probe = cfg.ping_command
    with _lock.locked(lock, daemon.name, shared=False):
        before = _pidfile.read_pid(pid_file)
        deadline = Deadline(cfg.start_timeout, clock)
        cfg.logger.info("Restarting daemon '%s' with its restart command", daemon.name)
        result = _run_command(cfg, cfg.restart_command, deadline.remaining())
        if result.returncode != 0:
            status, signame = (
                (None, None) if result.returncode is None else _describe_exit(result.returncode)
            )
            msg = f"Daemon '{daemon.name}' could not be restarted: the restart command failed."
            raise StartError(
                daemon.name, msg, output=result.output, exit_status=status, signal=signame
            )

        def ready() -> bool | None:
            return True if _pidfile.live_pid(pid_file) is not None and probe.check(0.5) else None

        if not poll_until(ready, deadline=deadline, max_interval=cfg.ping_interval):
            msg = (
                f"Daemon '{daemon.name}' did not answer {probe.describe()} within "
                f"{cfg.start_timeout:g} s after its restart command."
            )
            raise StartTimeout(daemon.name, msg, timeout=cfg.start_timeout, output=result.output)
        _owner_follows(daemon, before)


# -- queries ---------------------------------------------------------------------------------


def read_pid(daemon: Daemon) -> int | None:
    """See :meth:`Daemon.read_pid`; also the body of ``is_running()``.

    The hot path (issue #5): written out flat, it costs a cached lock file's
    ``fstat`` and two ``flock`` calls, the PID file's ``stat`` and one ``poll``.
    """
    cfg = daemon.config
    pid_file, lock = cfg.pid_file, cfg.effective_lock_file
    if pid_file is None or lock is None:
        _require(daemon, "pid_file")
        raise AssertionError  # pragma: no cover - _require raised
    with _lock.locked(lock, daemon.name, shared=True, missing_dir_ok=True):
        pid = _pidfile.live_pid(pid_file)
        if pid is None:
            _remove_stale(pid_file)
    return pid


def is_running(daemon: Daemon) -> bool:
    """See :meth:`Daemon.is_running`."""
    return read_pid(daemon) is not None


# -- connect ---------------------------------------------------------------------------------


def _attempt(function: Callable[[], T | None]) -> tuple[T | None, OSError | None]:
    try:
        return function(), None
    except OSError as err:
        if is_connect_error(err):
            return None, err
        raise


def _ensure_running_locked(daemon: Daemon, since: int, clock: Clock) -> bool:
    pid_file, lock = _paths(daemon)
    if _pidfile.live_pid(pid_file) is not None:
        return False
    shared = _failures.recorded_since(lock, since)
    if shared is not None:
        daemon.config.logger.info(
            "Daemon '%s': the start this call waited for failed; not retrying", daemon.name
        )
        raise shared
    try:
        _start_locked(daemon, clock)
    except StartError as err:
        _failures.write(lock, err)
        raise
    _failures.clear(lock)
    return True


def ensure_running(daemon: Daemon, since: int, clock: Clock = SYSTEM_CLOCK) -> bool:
    """Start the daemon unless it runs; share a failure with those who waited for it.

    Args:
        daemon: The daemon.
        since: When the caller began waiting (``_failures.now()``): a start
            attempt that failed after that moment is the one the caller was
            waiting for, so its error is raised again instead of spawning anew.
        clock: The clock for the start's deadlines.

    Returns:
        ``True`` if this call started the daemon, ``False`` if it was running.
    """
    _require(daemon, *_START_PARTS)
    _, lock = _paths(daemon)
    with _lock.locked(lock, daemon.name, shared=False):
        return _ensure_running_locked(daemon, since, clock)


def _start_and_connect(
    daemon: Daemon, function: Callable[[], T | None], since: int, clock: Clock
) -> tuple[T | None, OSError | None]:
    """The daemon did not answer: start it (or wait for whoever is starting it), then connect.

    Nobody busy with the lock: take it exclusively and start the daemon if it
    is not running; the caller that starts it connects under the exclusive
    lock, as in the gem, so no stop() slips in between.

    The lock busy (most likely somebody starting the daemon): wait for it in
    *shared* mode and connect alongside the other waiters. Sixteen callers of
    a starting daemon then connect at the same moment instead of taking the
    exclusive lock one after another (an exclusive waiter must also wait for
    every reader, so it would come last). If the daemon is still not running
    and nobody's start failed meanwhile, try the exclusive lock again; after a
    few rounds, queue for it.
    """
    name = daemon.name
    pid_file, lock = _paths(daemon)
    for _ in range(_CONNECT_ROUNDS):
        exclusive = _lock.locked(lock, name, shared=False)
        if exclusive.enter(blocking=False):
            try:
                if _ensure_running_locked(daemon, since, clock):
                    return _attempt(function)
            finally:
                exclusive.__exit__()
        with _lock.locked(lock, name, shared=True):
            if _pidfile.live_pid(pid_file) is not None:
                result, error = _attempt(function)
                if result is not None:
                    return result, error
                break  # running, yet no answer: one last try under the exclusive lock
            shared = _failures.recorded_since(lock, since)
            if shared is not None:
                raise shared
    # A stop() slipped in, or the lock stayed busy: queue for it this time.
    with _lock.locked(lock, name, shared=False):
        _ensure_running_locked(daemon, since, clock)
        return _attempt(function)


def connect(daemon: Daemon, function: Callable[[], T | None], clock: Clock = SYSTEM_CLOCK) -> T:
    """See :meth:`Daemon.connect`."""
    _require(daemon, *_START_PARTS)
    _, lock = _paths(daemon)
    # Taken before the first attempt: a caller queued behind a start in progress
    # (even for the shared lock) is waiting for that start, and shares its failure.
    since = _failures.now()
    with _lock.locked(lock, daemon.name, shared=True):
        result, _ = _attempt(function)
    if result is not None:
        return result
    result, error = _start_and_connect(daemon, function, since, clock)
    if result is not None:
        return result
    detail = f": {error} ({type(error).__name__})" if error is not None else ""
    msg = f"Daemon '{daemon.name}' is running but cannot be connected to{detail}"
    raise ConnectError(daemon.name, msg) from error
