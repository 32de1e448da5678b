"""``Daemon``: an immutable description of a daemon, built fluently.

Every builder method returns a new ``Daemon`` and leaves the receiver as it was,
so one base description can be specialised several ways::

    base = Daemon("redis").ping_tcp("127.0.0.1", 6379).pid("tmp/redis.pid")
    test = base.start_with(["redis-server", "test.conf"]).log("tmp/test.log")

The options live in a frozen :class:`DaemonConfig` whose field names are the Ruby
gem's option names; the actions (``start``, ``stop``, ``connect`` ...) run in
short-lived controller objects, so a ``Daemon`` never holds runtime state and can
be shared freely between threads.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, TypeVar

from . import _controller, _platform
from ._errors import DaemonError
from ._probes import CallablePing, CommandPing, HttpPing, Probe, TcpPing, UnixPing
from ._scoped import Running

T = TypeVar("T")

#: A command: a str runs through the shell, a tuple is an argv run without one.
Command = str | tuple[str, ...]
#: What ``start_with`` takes: a command, or a function returning one (called
#: after ``before_start``, under the lock).
StartCommand = Command | Callable[[], str | Sequence[str]]
PathArg = str | os.PathLike[str]


@functools.cache
def _runtime_dir() -> Path:
    # Made and checked once per process: resolved() is on every action's path.
    return _platform.runtime_dir()


def _absolute(path: PathArg) -> Path:
    # Made absolute when set, so a later os.chdir() does not change which file
    # is meant (an easy mistake with daemons that chdir, and with test suites).
    return Path(os.path.abspath(os.fspath(path)))


def _command(
    identifier: str, what: str, command: str | Sequence[str | os.PathLike[str]]
) -> Command:
    if isinstance(command, str):
        if not command.strip():
            msg = f"Daemon '{identifier}': {what} is an empty string"
            raise ValueError(msg)
        return command
    if isinstance(command, bytes):
        msg = f"Daemon '{identifier}': {what} must be a str or a sequence of str, not bytes"
        raise TypeError(msg)
    try:
        argv = tuple(os.fspath(part) for part in command)
    except TypeError:
        msg = f"Daemon '{identifier}': {what} must be a str or a sequence of str, not {command!r}"
        raise TypeError(msg) from None
    if not argv:
        msg = f"Daemon '{identifier}': {what} is an empty argument list"
        raise ValueError(msg)
    if not all(isinstance(part, str) for part in argv):
        msg = f"Daemon '{identifier}': every argument of {what} must be a str"
        raise TypeError(msg)
    return argv


def _seconds(identifier: str, what: str, value: float, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"Daemon '{identifier}': {what} must be a number of seconds, not {value!r}"
        raise TypeError(msg)
    if value < 0 or (value == 0 and not allow_zero) or value != value:  # noqa: PLR0124 - NaN check
        least = "at least 0" if allow_zero else "more than 0"
        msg = f"Daemon '{identifier}': {what} must be {least} seconds, not {value!r}"
        raise ValueError(msg)
    return float(value)


def _probe(identifier: str, kind: Callable[..., Probe], *args: object) -> Probe:
    """Build a probe; an error about its arguments names the daemon."""
    try:
        return kind(*args)
    except (ValueError, TypeError) as err:
        msg = f"Daemon '{identifier}': {err}"
        raise type(err)(msg) from None


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Every option of a daemon, named as in the Ruby gem. Times are in seconds.

    Attributes:
        start_command: How to start the daemon: a str (run through the shell), an
            argv tuple (run directly), or a function returning either.
        stop_command: How to stop it; ``None`` sends ``stop_graceful_signal``.
        restart_command: How to restart it; ``None`` means stop, then start.
        ping_command: How to tell that it is ready to serve.
        pid_file: Where the daemon writes its PID.
        log_file: Where the daemon writes its log; read for error messages.
        lock_file: The lock serialising starts and stops; ``None`` means the PID
            file's path with ``.lock`` added.
        before_start: Called under the lock right before the start command; not
            counted against ``start_timeout``.
        start_timeout: Longest a start may take, including waiting for the
            daemon to answer pings.
        start_abort_timeout: After a start timed out, how long the daemon gets
            to exit after SIGTERM before it is killed.
        stop_timeout: Longest a stop may take before the daemon is killed.
        log_file_activity_timeout: While waiting for the PID file of a daemon
            that went into the background: if its log file did not change for
            this long, the daemon is taken to have died.
        ping_interval: The longest pause between two pings while waiting.
        stop_graceful_signal: The signal a stop sends when there is no stop command.
        dont_stop_if_pid_file_invalid: Do not run the stop command when the PID
            file does not name a running process.
        daemonize_for_me: The program stays in the foreground; the library
            detaches it and waits for it to be ready.
        keep_ios: File descriptors the start command inherits besides 0, 1 and 2.
        env: Extra environment variables for the start, stop and restart commands.
        cwd: The working directory for those commands; ``None`` keeps ours.
        user: Run those commands as this user (POSIX, when we are root).
        logger: Where the library logs what it does.
    """

    start_command: StartCommand | None = None
    stop_command: Command | None = None
    restart_command: Command | None = None
    ping_command: Probe | None = None
    pid_file: Path | None = None
    log_file: Path | None = None
    lock_file: Path | None = None
    before_start: Callable[[], object] | None = None
    start_timeout: float = 30.0
    start_abort_timeout: float = 10.0
    stop_timeout: float = 30.0
    log_file_activity_timeout: float = 10.0
    ping_interval: float = 0.1
    stop_graceful_signal: str | int = _platform.DEFAULT_STOP_SIGNAL
    dont_stop_if_pid_file_invalid: bool = False
    daemonize_for_me: bool = False
    keep_ios: tuple[int, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    user: str | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("daemon_controller"))
    #: The lock file in use: ``lock_file``, or the PID file plus ``.lock``
    #: (computed once: it is on the ``is_running()`` hot path).
    effective_lock_file: Path | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        lock = self.lock_file
        if lock is None and self.pid_file is not None:
            lock = self.pid_file.with_name(self.pid_file.name + ".lock")
        object.__setattr__(self, "effective_lock_file", lock)


@dataclass(frozen=True, slots=True, repr=False)
class Daemon:
    """A daemon: how to start, ping, find and stop it. Immutable; build it fluently.

    Args:
        name: A human-readable, unique name, e.g. ``"Sphinx search server"``;
            every error message names it (the Ruby gem's ``identifier``).
        config: All other options; normally set through the builder methods.
    """

    name: str
    config: DaemonConfig = field(default_factory=DaemonConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            msg = f"a daemon needs a non-empty name, not {self.name!r}"
            raise ValueError(msg)

    def __repr__(self) -> str:
        cfg = self.config
        parts = [repr(self.name)]
        if cfg.ping_command is not None:
            parts.append(f"ping={cfg.ping_command.describe()}")
        if cfg.pid_file is not None:
            parts.append(f"pid={str(cfg.pid_file)!r}")
        return f"Daemon({', '.join(parts)})"

    @property
    def identifier(self) -> str:
        """The daemon's name (the Ruby gem calls it the identifier)."""
        return self.name

    def resolved(self) -> Daemon:
        """This daemon with default paths filled in, as the actions use it.

        A daemon the library runs in the foreground (``foreground()``,
        ``daemonize_for_me()``) without ``pid()`` or ``log()`` gets files in a
        private per-user runtime directory, named after the daemon, so
        ``Daemon("web").start_with([...]).foreground().ping_tcp(...)`` is a
        complete description. Other daemons write their PID file where they
        want; the library must be told where.

        Raises:
            DaemonError: The runtime directory is not safe to use.
        """
        cfg = self.config
        if not cfg.daemonize_for_me or (cfg.pid_file is not None and cfg.log_file is not None):
            return self
        try:
            base = _runtime_dir()
        except (OSError, NotImplementedError) as err:
            msg = f"Daemon '{self.name}': no runtime directory for its default files: {err}"
            raise DaemonError(self.name, msg) from err
        import hashlib  # noqa: PLC0415 - only for default file names

        slug = re.sub(r"[^a-z0-9._-]+", "-", self.name.lower()).strip("-.") or "daemon"
        stem = f"{slug[:40]}-{hashlib.sha256(self.name.encode()).hexdigest()[:8]}"
        return replace(
            self,
            config=replace(
                cfg,
                pid_file=cfg.pid_file or base / f"{stem}.pid",
                log_file=cfg.log_file or base / f"{stem}.log",
            ),
        )

    def _with(self, **changes: Any) -> Self:  # noqa: ANN401 - forwards config fields
        return replace(self, config=replace(self.config, **changes))

    # -- commands -----------------------------------------------------------------

    def start_with(self, command: str | Sequence[str] | Callable[[], str | Sequence[str]]) -> Self:
        """How to start the daemon; the command should go into the background and exit.

        Args:
            command: A str runs through the shell (as in the Ruby gem); a list
                or tuple is an argv run without a shell; a function is called
                after ``before_start`` and returns either.
        """
        if callable(command):
            return self._with(start_command=command)
        return self._with(start_command=_command(self.name, "the start command", command))

    def stop_with(self, command: str | Sequence[str]) -> Self:
        """How to stop the daemon; without it, ``stop()`` sends the stop signal."""
        return self._with(stop_command=_command(self.name, "the stop command", command))

    def restart_with(self, command: str | Sequence[str]) -> Self:
        """How to restart the daemon; without it, ``restart()`` stops, then starts."""
        return self._with(restart_command=_command(self.name, "the restart command", command))

    # -- readiness ------------------------------------------------------------------

    def ping_tcp(self, host: str, port: int) -> Self:
        """Ready when ``host:port`` accepts a TCP connection (every address it resolves to)."""
        return self._with(ping_command=_probe(self.name, TcpPing, host, port))

    def ping_unix(self, path: PathArg) -> Self:
        """Ready when the unix socket at ``path`` accepts a connection."""
        return self._with(ping_command=UnixPing(_absolute(path)))

    def ping_http(self, url: str) -> Self:
        """Ready when a GET of ``url`` answers 2xx or 3xx."""
        return self._with(ping_command=_probe(self.name, HttpPing, url))

    def ping_command(self, command: str | Sequence[str]) -> Self:
        """Ready when ``command`` exits with status 0 (a str runs through the shell)."""
        return self._with(
            ping_command=CommandPing(_command(self.name, "the ping command", command))
        )

    def ping(self, function: Callable[[], object]) -> Self:
        """Ready when ``function()`` returns something truthy.

        A connect error it raises (refused, reset, timed out...) means "not yet";
        a result with ``close()`` (a socket) is closed for you.
        """
        if not callable(function):
            msg = f"Daemon '{self.name}': ping() takes a function, not {function!r}"
            raise TypeError(msg)
        return self._with(ping_command=CallablePing(function))

    # -- files --------------------------------------------------------------------------

    def pid(self, path: PathArg) -> Self:
        """Where the daemon writes its PID file."""
        return self._with(pid_file=_absolute(path))

    def log(self, path: PathArg) -> Self:
        """Where the daemon writes its log; new lines appear in start errors."""
        return self._with(log_file=_absolute(path))

    def lock(self, path: PathArg) -> Self:
        """The lock file serialising starts and stops (default: PID file + ``.lock``)."""
        return self._with(lock_file=_absolute(path))

    # -- behaviour --------------------------------------------------------------------

    def before_start(self, function: Callable[[], object]) -> Self:
        """Run ``function`` under the lock right before each start (not timed)."""
        if not callable(function):
            msg = f"Daemon '{self.name}': before_start() takes a function, not {function!r}"
            raise TypeError(msg)
        return self._with(before_start=function)

    def start_timeout(self, seconds: float) -> Self:
        """Longest a start may take, waiting for pings included (default 30 s)."""
        return self._with(
            start_timeout=_seconds(self.name, "start_timeout", seconds, allow_zero=False)
        )

    def start_abort_timeout(self, seconds: float) -> Self:
        """After a start timeout, how long SIGTERM gets before SIGKILL (default 10 s)."""
        return self._with(start_abort_timeout=_seconds(self.name, "start_abort_timeout", seconds))

    def stop_timeout(self, seconds: float) -> Self:
        """Longest a stop may take before the daemon is killed (default 30 s)."""
        return self._with(stop_timeout=_seconds(self.name, "stop_timeout", seconds))

    def log_activity_timeout(self, seconds: float) -> Self:
        """How long a silent log means a backgrounded daemon died before its PID file (10 s)."""
        return self._with(
            log_file_activity_timeout=_seconds(
                self.name,
                "log_activity_timeout",
                seconds,
                allow_zero=False,
            ),
        )

    def ping_interval(self, seconds: float) -> Self:
        """The longest pause between pings while waiting for readiness (default 0.1 s)."""
        return self._with(
            ping_interval=_seconds(self.name, "ping_interval", seconds, allow_zero=False)
        )

    def stop_signal(self, signal: str | int) -> Self:
        """The signal ``stop()`` sends without a stop command (default ``"TERM"``)."""
        try:
            _platform.parse_signal(signal)
        except ValueError as err:
            msg = f"Daemon '{self.name}': {err}"
            raise ValueError(msg) from None
        return self._with(stop_graceful_signal=signal)

    def dont_stop_if_pid_file_invalid(self, value: bool = True) -> Self:
        """Skip the stop command when the PID file names no running process."""
        return self._with(dont_stop_if_pid_file_invalid=bool(value))

    def daemonize_for_me(self, value: bool = True) -> Self:
        """The program stays in the foreground: detach it for it (new session, no stdin).

        Its stdout and stderr go to the log file. If the program writes no PID
        file of its own, the library writes one once the program is ready.
        """
        return self._with(daemonize_for_me=bool(value))

    def foreground(self) -> Self:
        """The program stays in the foreground and writes no PID file: run it as a daemon.

        The library starts it detached (new session, stdin from /dev/null),
        sends its stdout and stderr to the log file and writes the PID file
        itself, atomically, once the program answers its ping. Without
        ``pid()``/``log()``, both live in a private per-user runtime directory,
        named after the daemon. The same as :meth:`daemonize_for_me`.
        """
        return self._with(daemonize_for_me=True)

    def keep_fds(self, *fds: int | Any) -> Self:  # noqa: ANN401 - anything with fileno()
        """File descriptors (ints, or objects with ``fileno()``) the start command inherits."""
        numbers: list[int] = []
        for fd in fds:
            number = fd if isinstance(fd, int) and not isinstance(fd, bool) else None
            fileno = getattr(fd, "fileno", None)
            if number is None and callable(fileno):
                number = fileno()
            if not isinstance(number, int) or number < 0:
                msg = f"Daemon '{self.name}': keep_fds() takes file descriptors, not {fd!r}"
                raise TypeError(msg)
            numbers.append(number)
        return self._with(keep_ios=tuple(numbers))

    def env(self, mapping: Mapping[str, str] | None = None, /, **variables: str) -> Self:
        """Extra environment variables for the commands (added to earlier ``env()`` calls)."""
        merged = dict(self.config.env)
        for key, value in {**(mapping or {}), **variables}.items():
            if not isinstance(key, str) or not isinstance(value, str):
                msg = (
                    f"Daemon '{self.name}': env() takes str names and values, not {key!r}={value!r}"
                )
                raise TypeError(msg)
            merged[key] = value
        return self._with(env=tuple(merged.items()))

    def cwd(self, path: PathArg) -> Self:
        """The working directory for the start, stop and restart commands."""
        return self._with(cwd=_absolute(path))

    def user(self, name: str) -> Self:
        """Run the start, stop and restart commands as this user (POSIX; needs root).

        For daemons that refuse to run as root (PostgreSQL): no ``runuser`` or
        ``sudo`` wrapper is needed, so with ``foreground()`` the PID file names
        the daemon itself, not a wrapper. The user's primary and supplementary
        groups apply, and ``HOME``, ``USER`` and ``LOGNAME`` are set for it.
        Ignored when we already run as that user.
        """
        if not isinstance(name, str) or not name.strip():
            msg = f"Daemon '{self.name}': user() takes a user name, not {name!r}"
            raise ValueError(msg)
        return self._with(user=name)

    def logger(self, logger: logging.Logger) -> Self:
        """Where the library logs what it does (default: the ``daemon_controller`` logger)."""
        return self._with(logger=logger)

    # -- actions ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon and return once it answers pings.

        Holds the lock file exclusively throughout, so concurrent starts from
        other threads and processes wait for this one.

        Raises:
            ValueError: The start command, ping, PID file or log file is not set.
            AlreadyStarted: The daemon is already running.
            StartError: The start command failed, or the daemon died during the start.
            StartTimeout: It did not become ready within ``start_timeout``
                (whatever it started has been stopped).
            DaemonError: The lock file cannot be created.
        """
        _controller.start(self.resolved())

    def stop(self) -> None:
        """Stop the daemon and return once its process has exited; silent if not running.

        Raises:
            ValueError: The PID file is not set.
            StopError: The stop command failed, or we may not signal the process.
            StopTimeout: It did not exit within ``stop_timeout`` and was killed.
        """
        _controller.stop(self.resolved())

    def restart(self) -> None:
        """Restart with the restart command, or by ``stop()`` then ``start()``."""
        _controller.restart(self.resolved())

    def is_running(self) -> bool:
        """Whether the PID file names a live process (a stale PID file is removed)."""
        return _controller.is_running(self.resolved())

    def read_pid(self) -> int | None:
        """The PID of the running daemon, or ``None`` (missing, corrupt or stale PID file)."""
        return _controller.read_pid(self.resolved())

    def running(self, stop: bool | None = None) -> Running:
        """A block (``with`` or ``async with``) during which the daemon runs.

        Entering starts the daemon unless it runs (several threads or
        processes entering at once start it once; if that start fails, all who
        waited for it get the same ``StartError``). Also usable as a decorator.

        Args:
            stop: ``None`` (default): on leaving, stop the daemon only if a
                ``running()`` block started it and no block in any thread or
                process is still inside. ``True``: stop it on leaving, whatever
                else is inside. ``False``: never stop it, but count as a user
                while inside, so ``stop=None`` blocks leave it running.

        Returns:
            A context manager yielding this ``Daemon``.
        """
        return Running(self.resolved(), stop)

    def connect(self, function: Callable[[], T | None]) -> T:
        """Call ``function`` to connect, starting the daemon first if it is not running.

        ``function`` returning ``None`` or raising a connect error (refused, reset,
        timed out, no such socket file...) means "cannot connect". It may be
        called up to three times.

        Returns:
            What ``function`` returned.

        Raises:
            ConnectError: Still no connection after starting the daemon.
            StartError: The daemon had to be started and failed.
        """
        return _controller.connect(self.resolved(), function)


def _ping_from_option(identifier: str, value: object) -> Probe:
    if callable(value) and not isinstance(value, str):
        return CallablePing(value)
    if isinstance(value, str):
        return CommandPing(_command(identifier, "ping_command", value))
    if isinstance(value, TcpPing | UnixPing | HttpPing | CommandPing | CallablePing):
        return value
    if isinstance(value, list | tuple) and value:
        kind = value[0]
        if kind == "tcp" and len(value) == 3:  # noqa: PLR2004 - ("tcp", host, port)
            return _probe(identifier, TcpPing, str(value[1]), value[2])
        if kind == "unix" and len(value) == 2:  # noqa: PLR2004 - ("unix", path)
            return UnixPing(_absolute(value[1]))
        return CommandPing(_command(identifier, "ping_command", value))
    msg = (
        f"Daemon '{identifier}': ping_command must be ('tcp', host, port), ('unix', path), "
        f"a command or a function, not {value!r}"
    )
    raise TypeError(msg)


def DaemonController(  # noqa: N802 - named like the Ruby class, for people porting
    *,
    identifier: str,
    start_command: str | Sequence[str] | Callable[[], str | Sequence[str]],
    ping_command: object,
    pid_file: PathArg,
    log_file: PathArg,
    stop_command: str | Sequence[str] | None = None,
    restart_command: str | Sequence[str] | None = None,
    lock_file: PathArg | None = None,
    before_start: Callable[[], object] | None = None,
    start_timeout: float = 30,
    start_abort_timeout: float = 10,
    stop_timeout: float = 30,
    log_file_activity_timeout: float = 10,
    ping_interval: float = 0.1,
    stop_graceful_signal: str | int = _platform.DEFAULT_STOP_SIGNAL,
    dont_stop_if_pid_file_invalid: bool = False,
    daemonize_for_me: bool = False,
    keep_ios: Sequence[int | Any] = (),
    env: Mapping[str, str] | None = None,
    cwd: PathArg | None = None,
    user: str | None = None,
    logger: logging.Logger | None = None,
) -> Daemon:
    """Build a :class:`Daemon` from the Ruby gem's option names.

    ``ping_command`` takes ``("tcp", host, port)``, ``("unix", path)``, a command
    (str through the shell, or an argv list) or a function. The five options
    the gem requires are required here too (a ``TypeError`` if one is missing).

    Returns:
        The same immutable :class:`Daemon` the fluent builder makes.
    """
    daemon = (
        Daemon(identifier)
        .start_with(start_command)
        .pid(pid_file)
        .log(log_file)
        .start_timeout(start_timeout)
        .start_abort_timeout(start_abort_timeout)
        .stop_timeout(stop_timeout)
        .log_activity_timeout(log_file_activity_timeout)
        .ping_interval(ping_interval)
        .stop_signal(stop_graceful_signal)
        .dont_stop_if_pid_file_invalid(dont_stop_if_pid_file_invalid)
        .daemonize_for_me(daemonize_for_me)
        .keep_fds(*keep_ios)
    )
    daemon = daemon._with(ping_command=_ping_from_option(identifier, ping_command))  # noqa: SLF001
    if stop_command is not None:
        daemon = daemon.stop_with(stop_command)
    if restart_command is not None:
        daemon = daemon.restart_with(restart_command)
    if lock_file is not None:
        daemon = daemon.lock(lock_file)
    if before_start is not None:
        daemon = daemon.before_start(before_start)
    if env:
        daemon = daemon.env(env)
    if cwd is not None:
        daemon = daemon.cwd(cwd)
    if user is not None:
        daemon = daemon.user(user)
    if logger is not None:
        daemon = daemon.logger(logger)
    return daemon
