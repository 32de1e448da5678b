"""A daemon's options: their types, their validation, and what an action needs of them.

:class:`DaemonConfig` holds every option under one name, the builder's (the
Ruby gem's names live only in :func:`~daemon_controller.DaemonController`).
The actions never see a bare config: they take a :class:`Target` or a
:class:`StartTarget`, made by :func:`target` and :func:`start_target`, whose
required parts are proven present, so nothing further down re-checks them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from . import _platform
from ._errors import hide_frames
from ._files import DaemonFiles

if TYPE_CHECKING:
    import re

    from ._daemon import Daemon
    from ._probes import Probe

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

#: A command: a str runs through the shell, a tuple is an argv run without one.
Command = str | tuple[str, ...]
#: What ``start_with`` takes: a command, or a function returning one (called
#: after ``before_start``, under the lock).
StartCommand = Command | Callable[[], str | Sequence[str]]
PathArg = str | os.PathLike[str]


#: The placeholder for the daemon's run directory; a path starting with it stays relative to it.
RUN_DIR = "{run_dir}"
#: The placeholder for the port chosen when the daemon starts.
PORT = "{port}"


def absolute(path: PathArg) -> Path:
    """``path`` made absolute now, so a later ``os.chdir()`` does not change its meaning.

    A path starting with ``{run_dir}`` is left as it is: it is relative to
    the daemon's run directory, filled in by ``Daemon.resolved()``.
    """
    text = os.fspath(path)
    if text.startswith(RUN_DIR):
        return Path(text)
    return Path(os.path.abspath(text))


def command(identifier: str, what: str, value: str | Sequence[str | os.PathLike[str]]) -> Command:
    """Check a command: a non-empty str, or a non-empty sequence of str (made a tuple).

    Raises:
        ValueError: It is empty.
        TypeError: It is neither a str nor a sequence of str.
    """
    if isinstance(value, str):
        if not value.strip():
            msg = f"Daemon '{identifier}': {what} is an empty string"
            raise ValueError(msg)
        return value
    if isinstance(value, bytes):
        msg = f"Daemon '{identifier}': {what} must be a str or a sequence of str, not bytes"
        raise TypeError(msg)
    try:
        argv = tuple(os.fspath(part) for part in value)
    except TypeError:
        msg = f"Daemon '{identifier}': {what} must be a str or a sequence of str, not {value!r}"
        raise TypeError(msg) from None
    if not argv:
        msg = f"Daemon '{identifier}': {what} is an empty argument list"
        raise ValueError(msg)
    if not all(isinstance(part, str) for part in argv):
        msg = f"Daemon '{identifier}': every argument of {what} must be a str"
        raise TypeError(msg)
    return argv


def command_text(value: Command) -> str:
    """A command as a person would type it, for messages."""
    return value if isinstance(value, str) else " ".join(value)


def seconds(identifier: str, what: str, value: float, *, allow_zero: bool = True) -> float:
    """Check a duration in seconds: a non-negative number (positive unless ``allow_zero``).

    Raises:
        TypeError: Not a number.
        ValueError: Negative, NaN, or zero where zero makes no sense.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"Daemon '{identifier}': {what} must be a number of seconds, not {value!r}"
        raise TypeError(msg)
    if value < 0 or (value == 0 and not allow_zero) or value != value:  # noqa: PLR0124 - NaN check
        least = "at least 0" if allow_zero else "more than 0"
        msg = f"Daemon '{identifier}': {what} must be {least} seconds, not {value!r}"
        raise ValueError(msg)
    return float(value)


def descriptors(identifier: str, fds: Iterable[object]) -> tuple[int, ...]:
    """File descriptor numbers from ints or objects with ``fileno()``.

    Raises:
        TypeError: Something is neither.
    """
    numbers: list[int] = []
    for fd in fds:
        number = fd if isinstance(fd, int) and not isinstance(fd, bool) else None
        fileno = getattr(fd, "fileno", None)
        if number is None and callable(fileno):
            number = fileno()
        if not isinstance(number, int) or number < 0:
            msg = f"Daemon '{identifier}': keep_fds() takes file descriptors, not {fd!r}"
            raise TypeError(msg)
        numbers.append(number)
    return tuple(numbers)


def environment(
    identifier: str, current: tuple[tuple[str, str], ...], added: Mapping[str, object]
) -> tuple[tuple[str, str], ...]:
    """``current`` environment additions with ``added`` merged in (later names win).

    Raises:
        TypeError: A name or value is not a str.
    """
    merged = dict(current)
    for key, value in added.items():
        if not isinstance(key, str) or not isinstance(value, str):
            msg = f"Daemon '{identifier}': env() takes str names and values, not {key!r}={value!r}"
            raise TypeError(msg)
        merged[key] = value
    return tuple(merged.items())


@dataclass(frozen=True, slots=True)
class Preparation:
    """A one-time preparation of a daemon's state, copied into each run directory.

    Attributes:
        command: Run once, with ``{run_dir}`` standing for the directory being
            prepared (the template): a str through the shell, an argv tuple,
            or a function called with that directory.
        inputs: Files (or directories) the preparation reads: a change to one
            of them, or to the command, prepares a new template.
        hardlinks: Copies share the template's files through hard links: only
            for daemons that never write a file in place (they write a new
            one and rename it over the old one).
        fresh: Every start (a restart excepted) begins from a new copy, so
            what a test suite wrote never outlives its session; otherwise
            the run directory is kept until the template changes.
        template: Where the prepared templates are kept, one per fingerprint
            (``<template>-<fingerprint>``); filled in by ``Daemon.resolved()``.
    """

    command: Command | Callable[[Path], object]
    inputs: tuple[Path, ...] = ()
    hardlinks: bool = False
    fresh: bool = False
    template: Path | None = None


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Every option of a daemon, named as the builder methods that set them. Times in seconds.

    Attributes:
        start_command: How to start the daemon: a str (run through the shell), an
            argv tuple (run directly), or a function returning either.
        stop_command: How to stop it; ``None`` sends ``stop_signal``.
        restart_command: How to restart it; ``None`` means stop, then start.
        ping: How to tell that it is ready to serve, by asking it (an address,
            a command or a function, tried again and again).
        pid_file: Where the daemon writes its PID.
        log_file: Where the daemon writes its log; read for error messages.
        lock_file: The lock serialising starts and stops; ``None`` means the PID
            file's path with ``.lock`` added.
        before_start: Called under the lock right before the start command; not
            counted against ``start_timeout``. A function taking one argument
            gets the ``Daemon`` as this start sees it (port chosen, run
            directory made, placeholders filled in).
        start_timeout: Longest a start may take, including waiting for the
            daemon to answer pings.
        start_abort_timeout: After a failed start, how long what it started
            gets to exit after SIGTERM before it is killed.
        stop_timeout: Longest a stop may take before the daemon is killed.
        log_activity_timeout: While waiting for the PID file of a daemon that
            went into the background: if its log file did not change for this
            long, the daemon is taken to have died.
        ping_interval: The longest pause between two pings while waiting.
        stop_signal: The signal a stop sends when there is no stop command.
        dont_stop_if_pid_file_invalid: Do not run the stop command when the PID
            file does not name a running process.
        foreground: The program stays in the foreground; the library detaches
            it, captures its output as its log and writes its PID file.
        keep_fds: File descriptors the start command inherits besides 0, 1 and 2.
        env: Extra environment variables for the start, stop and restart commands.
        cwd: The working directory for those commands; ``None`` keeps ours.
        user: Run those commands as this user (POSIX, when we are root).
        logger: Where the library logs what it does.
        port: The daemon's TCP port: ``"auto"`` (a free one, chosen when it
            starts), a number, or ``None`` (no ``{port}`` placeholder). Once
            chosen, the number: the ``Daemon`` given to ``before_start`` has it.
        run_dir: The daemon's own directory, the ``{run_dir}`` placeholder:
            ``"auto"`` (private, under the per-user runtime directory), a
            path, or ``None``. ``Daemon.resolved()`` has the path.
        prepare: A one-time preparation that each run directory starts as a
            copy of, or ``None``.
        instance: Tells apart instances of one description (a test worker's
            own): each has its own default files, run directory and port.
        ping_log: Ready once a line matching this pattern appears in the
            log after the start began (with ``ping``: once both hold).
        notify: The daemon says when it is ready, through the sd_notify
            protocol (``NOTIFY_SOCKET``); with ``ping``/``ping_log``, all must hold.
    """

    start_command: StartCommand | None = None
    stop_command: Command | None = None
    restart_command: Command | None = None
    ping: Probe | None = None
    pid_file: Path | None = None
    log_file: Path | None = None
    lock_file: Path | None = None
    before_start: Callable[[], object] | Callable[[Daemon], object] | None = None
    start_timeout: float = 30.0
    start_abort_timeout: float = 10.0
    stop_timeout: float = 30.0
    log_activity_timeout: float = 10.0
    ping_interval: float = 0.1
    stop_signal: str | int = _platform.DEFAULT_STOP_SIGNAL
    dont_stop_if_pid_file_invalid: bool = False
    foreground: bool = False
    keep_fds: tuple[int, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    user: str | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("daemon_controller"))
    # A port, a run directory and a prepared state per instance (see _instance.py).
    port: int | Literal["auto"] | None = None
    run_dir: Path | Literal["auto"] | None = None
    prepare: Preparation | None = None
    instance: str | None = None
    ping_log: re.Pattern[str] | None = None
    notify: bool = False

    @property
    def readiness(self) -> tuple[str, ...]:
        """How a start tells that the daemon is ready: ``"notify"``, ``"log"``, ``"ping"``.

        In that order, each present when it is used (all must hold); empty
        when nothing is set. For machines (``status --json``) and messages.
        """
        methods = (
            ("notify", self.notify),
            ("log", self.ping_log is not None),
            ("ping", self.ping is not None),
        )
        return tuple(name for name, used in methods if used)

    @property
    def own_pid_file(self) -> bool:
        """Whether the library may write the PID file when the daemon writes none.

        It may for a program it runs in the foreground, and for a daemon
        that names its PID itself (``notify()``: ``MAINPID=``, or the process
        that sent ``READY=1``).
        """
        return self.foreground or self.notify


@dataclass(frozen=True, slots=True)
class Target:
    """A daemon as the actions that read or stop it see it: its files are known.

    Attributes:
        name: The daemon's name, for messages.
        config: All its options.
        files: Its PID, lock and side files.
    """

    name: str
    config: DaemonConfig
    files: DaemonFiles


@dataclass(frozen=True, slots=True)
class StartTarget(Target):
    """A daemon as the actions that start it see it: everything a start needs is set.

    Attributes:
        command: The start command (or the function returning it).
        probe: The readiness check asked again and again, or ``None`` when the
            daemon tells us instead (``notify()``, ``ping_log()``).
        log_file: The daemon's log.
        before_start: Runs ``config.before_start`` given the options of the
            attempt about to start (port chosen, placeholders filled in).
    """

    command: StartCommand
    probe: Probe | None
    log_file: Path
    before_start: Callable[[DaemonConfig], object] | None = None


_HINTS = {
    "start_command": "start_with(...)",
    "ping": (
        "ping_tcp(...), ping_unix(...), ping_http(...), ping_command(...), ping(...), "
        "ping_log(...) or notify()"
    ),
    "pid_file": "pid(...)",
    "log_file": "log(...)",
}


def _missing(name: str, config: DaemonConfig, parts: tuple[str, ...]) -> ValueError:
    missing = [
        part
        for part in parts
        if getattr(config, part) is None and not (part == "ping" and config.readiness)
    ]
    hints = "; ".join(f"{part}: set it with .{_HINTS[part]}" for part in missing)
    return ValueError(f"Daemon '{name}' is missing {', '.join(missing)} ({hints})")


def target(name: str, config: DaemonConfig) -> Target:
    """What ``stop()``, ``is_running()`` and ``read_pid()`` need: the PID file.

    Raises:
        ValueError: The PID file is not set (the message says how to set it).
    """
    if config.pid_file is None:
        raise _missing(name, config, ("pid_file",))
    return Target(name, config, DaemonFiles.of(config.pid_file, config.lock_file))


def start_target(
    name: str,
    config: DaemonConfig,
    before_start: Callable[[DaemonConfig], object] | None = None,
) -> StartTarget:
    """What a start needs: a start command, a readiness check, a PID file and a log file.

    The readiness check is a ping, ``ping_log()`` or ``notify()`` (or several).
    ``before_start`` calls ``config.before_start`` for an attempt (the facade
    passes it the ``Daemon``); without it, that function is called without
    arguments.

    Raises:
        ValueError: Any of them is not set (the message names each, and how to
            set it), or ``ping_log()`` is given a log that cannot be read back.
    """
    cmd, pid_file, log_file = config.start_command, config.pid_file, config.log_file
    if cmd is None or not config.readiness or pid_file is None or log_file is None:
        raise _missing(name, config, ("start_command", "ping", "pid_file", "log_file"))
    if config.ping_log is not None and str(log_file) in _platform.PASSTHROUGH_LOG_PATHS:
        msg = (
            f"Daemon '{name}': ping_log() reads the daemon's log, but its log "
            f"{str(log_file)!r} is our own terminal; give log() a file"
        )
        raise ValueError(msg)
    files = DaemonFiles.of(pid_file, config.lock_file)
    hook = cast("Callable[[], object] | None", config.before_start)
    if before_start is None and hook is not None:
        before_start = lambda _: hook()  # noqa: E731 - the zero-argument form, as in the gem
    return StartTarget(name, config, files, cmd, config.ping, log_file, before_start)


def ping_of(name: str, config: DaemonConfig) -> Probe:
    """The ping, which a restart by restart command needs.

    A restart command's daemon is waited for by asking its ping; a log line
    or a notify message of the restarted daemon is not listened for.

    Raises:
        ValueError: No ping is set.
    """
    if config.ping is None:
        msg = (
            f"Daemon '{name}': a restart command is waited for through a ping "
            "(ping_tcp(...), ping_unix(...), ping_http(...), ping_command(...) or "
            "ping(...)); without one, leave out restart_with() and restart() stops, "
            "then starts it"
        )
        raise ValueError(msg)
    return config.ping
