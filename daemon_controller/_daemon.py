"""``Daemon``: an immutable description of a daemon, built fluently; and its actions.

Every builder method returns a new ``Daemon`` and leaves the receiver as it was,
so one base description can be specialised several ways::

    base = Daemon("redis").ping_tcp("127.0.0.1", 6379).pid("tmp/redis.pid")
    test = base.start_with(["redis-server", "test.conf"]).log("tmp/test.log")

The options live in a frozen :class:`DaemonConfig`; the actions (``start``,
``stop``, ``connect`` ...) run in short-lived objects of ``_actions``, so a
``Daemon`` never holds runtime state and can be shared freely between threads.
:func:`DaemonController` builds the same object from the Ruby gem's option
names, for people porting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Self, TypeVar

from . import _actions, _instance, _options, _platform, _status
from ._async_actions import AsyncActions
from ._errors import hide_frames
from ._instance import Instances
from ._options import DaemonConfig, PathArg, absolute
from ._pings import Readiness
from ._scoped import Running

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping, Sequence

    from ._options import StartTarget, Target
    from ._status import Status

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

T = TypeVar("T")


@dataclass(frozen=True, slots=True, repr=False)
class Daemon(AsyncActions, Instances, Readiness):
    """A daemon: how to start, ping, find and stop it. Immutable; build it fluently.

    Every action has an awaitable twin for asyncio (``astart()``, ``astop()``,
    ``arestart()``, ``aconnect()``, ``ais_running()``, ``aread_pid()``).

    Args:
        name: A human-readable, unique name, e.g. ``"Sphinx search server"``;
            every error message names it (the Ruby gem's ``identifier``).
        config: All other options; normally set through the builder methods.
    """

    name: str
    config: DaemonConfig = field(default_factory=DaemonConfig)
    # What the actions need, worked out at the first action (is_running() is a
    # hot path) and dropped by every builder call (replace() makes a new object).
    _target_cache: Target | None = field(init=False, default=None, repr=False, compare=False)
    _start_cache: StartTarget | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            msg = f"a daemon needs a non-empty name, not {self.name!r}"
            raise ValueError(msg)

    def __repr__(self) -> str:
        cfg = self.config
        parts = [repr(self.name)]
        if cfg.notify:
            parts.append("notify")
        if cfg.ping_log is not None:
            parts.append(f"ping_log={cfg.ping_log.pattern!r}")
        if cfg.ping is not None:
            parts.append(f"ping={cfg.ping.describe()}")
        if cfg.pid_file is not None:
            parts.append(f"pid={str(cfg.pid_file)!r}")
        return f"Daemon({', '.join(parts)})"

    @property
    def identifier(self) -> str:
        """The daemon's name (the Ruby gem calls it the identifier)."""
        return self.name

    def resolved(self) -> Daemon:
        """This daemon with default paths filled in, as the actions use it.

        A daemon run in the foreground (``foreground()``) or naming its own
        PID (``notify()``) without ``pid()`` or ``log()`` gets files in a
        private per-user runtime directory, so
        ``Daemon("web").start_with([...]).foreground().ping_tcp(...)`` is
        complete. The files are named after the daemon and keyed by its name,
        its working directory (``cwd()``, or the process's when the daemon is
        first used), its start command and its instance (``instance()``): two
        projects' ``web`` daemons never share them. Other daemons write their
        PID file where they want; the library must be told where. A daemon
        with ``run_dir()`` gets its directory's path (keyed the same way),
        filled in for ``{run_dir}``.

        Raises:
            DaemonError: The runtime directory is not safe to use.
            ValueError: ``{port}`` or ``{run_dir}`` is used but not declared.
        """
        config = _instance.resolve(self.name, self.config)
        return self if config is self.config else replace(self, config=config)

    def _target(self) -> Target:
        """What stop(), is_running() and read_pid() need (raises ValueError without a PID file)."""
        cached = self._target_cache
        if cached is None:
            cached = _options.target(self.name, self.resolved().config)
            object.__setattr__(self, "_target_cache", cached)
        return cached

    def _start_target(self) -> StartTarget:
        """What a start needs (raises ValueError naming what is missing)."""
        cached = self._start_cache
        if cached is None:
            resolved = self.resolved()
            hook = _instance.before_start_hook(resolved)
            cached = _options.start_target(self.name, resolved.config, hook)
            object.__setattr__(self, "_start_cache", cached)
        return cached

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
        return self._with(start_command=_options.command(self.name, "the start command", command))

    def stop_with(self, command: str | Sequence[str]) -> Self:
        """How to stop the daemon; without it, ``stop()`` sends the stop signal."""
        return self._with(stop_command=_options.command(self.name, "the stop command", command))

    def restart_with(self, command: str | Sequence[str]) -> Self:
        """How to restart the daemon; without it, ``restart()`` stops, then starts."""
        return self._with(
            restart_command=_options.command(self.name, "the restart command", command)
        )

    # -- files --------------------------------------------------------------------------

    def pid(self, path: PathArg) -> Self:
        """Where the daemon writes its PID file."""
        return self._with(pid_file=absolute(path))

    def log(self, path: PathArg) -> Self:
        """Where the daemon writes its log; new lines appear in start errors."""
        return self._with(log_file=absolute(path))

    def lock(self, path: PathArg) -> Self:
        """The lock file serialising starts and stops (default: PID file + ``.lock``)."""
        return self._with(lock_file=absolute(path))

    # -- behaviour --------------------------------------------------------------------

    def before_start(self, function: Callable[[], object] | Callable[[Daemon], object]) -> Self:
        """Run ``function`` under the lock right before each start (not timed).

        A function taking one argument gets the ``Daemon`` as this start sees
        it: ``config.port`` is the chosen port, ``config.run_dir`` the
        directory (made already), and ``{port}``/``{run_dir}`` are filled in,
        so it can write a config file there. It runs again if a start tries
        another port. A function taking none is called without.
        """
        if not callable(function):
            msg = f"Daemon '{self.name}': before_start() takes a function, not {function!r}"
            raise TypeError(msg)
        return self._with(before_start=function)

    def _seconds(self, option: str, seconds: float, *, allow_zero: bool = True) -> Self:
        checked = _options.seconds(self.name, option, seconds, allow_zero=allow_zero)
        return self._with(**{option: checked})

    def start_timeout(self, seconds: float) -> Self:
        """Longest a start may take, waiting for pings included (default 30 s)."""
        return self._seconds("start_timeout", seconds, allow_zero=False)

    def start_abort_timeout(self, seconds: float) -> Self:
        """After a start timeout, how long SIGTERM gets before SIGKILL (default 10 s)."""
        return self._seconds("start_abort_timeout", seconds)

    def stop_timeout(self, seconds: float) -> Self:
        """Longest a stop may take before the daemon is killed (default 30 s)."""
        return self._seconds("stop_timeout", seconds)

    def log_activity_timeout(self, seconds: float) -> Self:
        """How long a silent log means a backgrounded daemon died before its PID file (10 s)."""
        return self._seconds("log_activity_timeout", seconds, allow_zero=False)

    def ping_interval(self, seconds: float) -> Self:
        """The longest pause between pings while waiting for readiness (default 0.1 s)."""
        return self._seconds("ping_interval", seconds, allow_zero=False)

    def stop_signal(self, signal: str | int) -> Self:
        """The signal ``stop()`` sends without a stop command (default ``"TERM"``)."""
        try:
            _platform.parse_signal(signal)
        except ValueError as err:
            msg = f"Daemon '{self.name}': {err}"
            raise ValueError(msg) from None
        return self._with(stop_signal=signal)

    def dont_stop_if_pid_file_invalid(self, value: bool = True) -> Self:
        """Skip the stop command when the PID file names no running process."""
        return self._with(dont_stop_if_pid_file_invalid=bool(value))

    def foreground(self, value: bool = True) -> Self:
        """The program stays in the foreground and writes no PID file: run it as a daemon.

        The library starts it detached (new session, stdin from /dev/null),
        sends its stdout and stderr to the log file and writes the PID file
        itself, atomically, once the program answers its ping (unless the
        program wrote one). Without ``pid()``/``log()``, both live in a
        private per-user runtime directory, named after the daemon. (The Ruby
        gem calls this ``daemonize_for_me``.)
        """
        return self._with(foreground=bool(value))

    def keep_fds(self, *fds: int | Any) -> Self:  # noqa: ANN401 - anything with fileno()
        """File descriptors (ints, or objects with ``fileno()``) the start command inherits."""
        return self._with(keep_fds=_options.descriptors(self.name, fds))

    def env(self, mapping: Mapping[str, str] | None = None, /, **variables: str) -> Self:
        """Extra environment variables for the commands (added to earlier ``env()`` calls)."""
        added = {**(mapping or {}), **variables}
        return self._with(env=_options.environment(self.name, self.config.env, added))

    def cwd(self, path: PathArg) -> Self:
        """The working directory for the start, stop and restart commands."""
        return self._with(cwd=absolute(path))

    def user(self, name: str) -> Self:
        """Run the start, stop and restart commands as this user (POSIX; needs root).

        For daemons that refuse to run as root (PostgreSQL): no ``runuser`` or
        ``sudo`` wrapper is needed, so with ``foreground()`` the PID file names
        the daemon itself, not a wrapper. The user's primary and supplementary
        groups apply, and the commands get the user's login environment, as
        with ``runuser -l``: ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` from
        the password database, and of ours only ``PATH``, ``TERM``, ``TZ`` and
        the locale (``env()`` still applies on top). A foreground daemon's log
        is opened as that user. Ignored when we already run as that user.
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
        _actions.start(self._start_target())

    def stop(self) -> None:
        """Stop the daemon and return once its process has exited; silent if not running.

        Raises:
            ValueError: The PID file is not set.
            StopError: The stop command failed, or we may not signal the process.
            StopTimeout: It did not exit within ``stop_timeout`` and was killed.
        """
        _actions.stop(self._target())

    def restart(self) -> None:
        """Restart with the restart command, or by ``stop()`` then ``start()`` atomically.

        With a restart command, returns once the PID file names a live process
        that answers the ping.

        Raises:
            ValueError: What the restart needs is not set.
            StartError: The restart command failed, or the new daemon did not start.
            StartTimeout: It did not answer within ``start_timeout``.
            StopError: The daemon could not be stopped (without a restart command).
        """
        target = self._target()
        command = target.config.restart_command
        if command is None:
            _actions.restart(self._start_target())
        else:
            _actions.restart_with(target, command, _options.ping_of(self.name, target.config))

    def is_running(self) -> bool:
        """Whether the PID file names a live process (a stale PID file is removed)."""
        return _actions.read_pid(self._target()) is not None

    def read_pid(self) -> int | None:
        """The PID of the running daemon, or ``None`` (missing, corrupt or stale PID file)."""
        return _actions.read_pid(self._target())

    def status(self, timeout: float = 1.0) -> Status:
        """What the daemon is doing right now: PID, since when, and whether it answers.

        Unlike :meth:`is_running` (the gem's meaning: the PID file names a
        live process), this also asks the ping, so a daemon that runs but
        does not answer is told apart.

        Args:
            timeout: How long the ping may take, in seconds.
        """
        return _status.status(self._target(), timeout)

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
        return Running(self.resolved(), self._start_target(), stop)

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
        return _actions.connect(self._start_cache or self._start_target(), function)
