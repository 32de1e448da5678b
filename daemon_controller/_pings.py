"""The ``Daemon`` builder methods that say how to tell the daemon is ready.

A ping asked again and again (``ping_tcp()``, ``ping_unix()``,
``ping_http()``, ``ping_command()``, ``ping()``), a line in its log
(``ping_log()``), or its own word (``notify()``). A mixin of ``Daemon``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Self

from . import _options, _platform
from ._errors import hide_frames
from ._options import PathArg, absolute
from ._probes import CallablePing, CommandPing, HttpPing, TcpPing, UnixPing

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._options import DaemonConfig
    from ._probes import Probe

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


def probe(identifier: str, kind: Callable[..., Probe], *args: object) -> Probe:
    """Build a probe; an error about its arguments names the daemon."""
    try:
        return kind(*args)
    except (ValueError, TypeError) as err:
        msg = f"Daemon '{identifier}': {err}"
        raise type(err)(msg) from None


def log_pattern(identifier: str, pattern: object) -> re.Pattern[str]:
    """Check and compile a ``ping_log()`` pattern (a str, or a compiled str pattern).

    Raises:
        ValueError: Not a valid regular expression.
        TypeError: Neither a str nor a compiled str pattern.
    """
    if isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
        return pattern
    if not isinstance(pattern, str) or not pattern:
        msg = f"Daemon '{identifier}': ping_log() takes a regular expression, not {pattern!r}"
        raise TypeError(msg)
    try:
        return re.compile(pattern)
    except re.error as err:
        msg = f"Daemon '{identifier}': ping_log() pattern {pattern!r} is not valid: {err}"
        raise ValueError(msg) from None


class Readiness:
    """How to tell that the daemon is ready to serve."""

    __slots__ = ()

    if TYPE_CHECKING:
        name: str
        config: DaemonConfig

        def _with(self, **changes: Any) -> Self: ...  # noqa: ANN401 - config fields

    def ping_tcp(self, host: str, port: int | str) -> Self:
        """Ready when ``host:port`` accepts a TCP connection (every address it resolves to).

        ``port`` may be ``"{port}"``: the port chosen when the daemon starts (``port()``).
        """
        return self._with(ping=probe(self.name, TcpPing, host, port))

    def ping_unix(self, path: PathArg) -> Self:
        """Ready when the unix socket at ``path`` accepts a connection."""
        return self._with(ping=probe(self.name, UnixPing, absolute(path)))

    def ping_http(self, url: str) -> Self:
        """Ready when a GET of ``url`` answers 2xx or 3xx."""
        return self._with(ping=probe(self.name, HttpPing, url))

    def ping_command(self, command: str | Sequence[str]) -> Self:
        """Ready when ``command`` exits with status 0 (a str runs through the shell)."""
        return self._with(
            ping=CommandPing(_options.command(self.name, "the ping command", command))
        )

    def ping_log(self, pattern: str | re.Pattern[str]) -> Self:
        """Ready once a line matching ``pattern`` appears in the log after the start began.

        The log is ``log()``'s file (where a program run in the foreground
        writes). Lines are read as written, without a line limit; a line
        counts once its newline is written; rotation and truncation are
        followed. With a ping (``ping_tcp()`` ...) both must hold: the ping
        is asked after the line, which many daemons log just before serving.

        Args:
            pattern: A regular expression, searched for in each line.

        Raises:
            ValueError: ``pattern`` is not a valid regular expression.
        """
        return self._with(ping_log=log_pattern(self.name, pattern))

    def notify(self, value: bool = True) -> Self:
        """The daemon says when it is ready, through systemd's notify protocol (sd_notify).

        Each start gets a private socket, passed in ``NOTIFY_SOCKET``. ``READY=1``
        means ready (with a ping or ``ping_log()``: once all hold); ``MAINPID=``
        (or the sender of ``READY=1``) is the daemon, so it needs no PID file:
        the library writes one once it is ready. ``STATUS=`` is logged and kept
        for ``status()``; ``ERRNO=``/``STOPPING=1`` fail the start at once;
        ``EXTEND_TIMEOUT_USEC=`` extends it. Only messages from processes of
        the start count. The daemon may stay in the foreground or not.

        Raises:
            NotImplementedError: The platform has no unix datagram sockets (Windows).
        """
        if value and not _platform.HAS_NOTIFY:
            msg = (
                f"Daemon '{self.name}': notify() needs unix datagram sockets, which "
                "this platform does not have; use a ping or ping_log() instead"
            )
            raise NotImplementedError(msg)
        return self._with(notify=bool(value))

    def ping(self, function: Callable[[], object]) -> Self:
        """Ready when ``function()`` returns something truthy.

        A connect error it raises (refused, reset, timed out...) means "not yet";
        a result with ``close()`` (a socket) is closed for you.
        """
        if not callable(function):
            msg = f"Daemon '{self.name}': ping() takes a function, not {function!r}"
            raise TypeError(msg)
        return self._with(ping=CallablePing(function))
