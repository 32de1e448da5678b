"""``DaemonController(...)``: a :class:`Daemon` from the Ruby gem's option names.

For people porting code from the gem. This is the only place the gem's names
(``identifier``, ``ping_command``, ``log_file_activity_timeout``,
``stop_graceful_signal``, ``daemonize_for_me``, ``keep_ios`` ...) are used;
everywhere else each option has one name, the builder's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _options, _platform
from ._daemon import Daemon
from ._errors import hide_frames
from ._options import absolute
from ._pings import probe
from ._probes import CallablePing, CommandPing, HttpPing, Probe, TcpPing, UnixPing

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping, Sequence

    from ._options import PathArg

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


def _ping_from_option(identifier: str, value: object) -> Probe:
    if callable(value) and not isinstance(value, str):
        return CallablePing(value)
    if isinstance(value, str):
        return CommandPing(_options.command(identifier, "ping_command", value))
    if isinstance(value, TcpPing | UnixPing | HttpPing | CommandPing | CallablePing):
        return value
    if isinstance(value, list | tuple) and value:
        kind = value[0]
        if kind == "tcp" and len(value) == 3:  # noqa: PLR2004 - ("tcp", host, port)
            return probe(identifier, TcpPing, str(value[1]), value[2])
        if kind == "unix" and len(value) == 2:  # noqa: PLR2004 - ("unix", path)
            return UnixPing(absolute(value[1]))
        return CommandPing(_options.command(identifier, "ping_command", value))
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
        .foreground(daemonize_for_me)
        .keep_fds(*keep_ios)
    )
    daemon = daemon._with(ping=_ping_from_option(identifier, ping_command))  # noqa: SLF001
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
