"""Readiness checks ("pings"): can the daemon be connected to right now?

Each probe is a small frozen object whose ``check(timeout)`` returns ``True``
when the daemon answers and ``False`` when it does not (yet), within
``timeout`` seconds in all (a server trickling its answer a byte at a time
does not hold a start past its ``start_timeout``). Errors that mean "nobody is
listening yet" are a plain ``False``; anything else (a bug in a user's ping
function) propagates. A ping that could never succeed is refused when it is
built: a unix socket path too long to connect to, credentials in a URL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from . import _platform
from ._options import PORT, command_text
from ._sockets import connect, http_status, send_all, start_tls

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

#: An argv whose program cannot be executed; a shell reports that as 126 / 127.
_UNRUNNABLE = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR})
_SHELL_UNRUNNABLE = frozenset({126, 127})

#: How many layers of wrapping is_connect_error() looks through.
_MAX_WRAPPING = 5

_CONNECT_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EINVAL, errno.EHOSTUNREACH},
)


def is_connect_error(exc: BaseException) -> bool:
    """Whether ``exc`` means "the daemon cannot be connected to (yet)".

    These are the errors the Ruby gem treats as "not running": refused, reset,
    timed out, no such socket file, network or address unavailable, and EINVAL
    (what some systems report for a connect to a half-closed socket). Client
    libraries often wrap them (``urllib``'s ``URLError`` keeps the socket
    error as ``reason``; others chain it as the cause): the wrapped error
    counts.
    """
    for _ in range(_MAX_WRAPPING):
        if isinstance(
            exc,
            ConnectionRefusedError
            | ConnectionResetError
            | ConnectionAbortedError
            | TimeoutError
            | FileNotFoundError,
        ) or (isinstance(exc, OSError) and exc.errno in _CONNECT_ERRNOS):
            return True
        reason = getattr(exc, "reason", None)
        inner = reason if isinstance(reason, BaseException) else exc.__cause__
        if inner is None and getattr(exc, "errno", None) is None:
            # A wrapper raised while handling the real error (requests does
            # this); an error with an errno of its own is a real one.
            inner = exc.__context__
        if inner is None:
            return False
        exc = inner
    return False


class PingUnusable(Exception):
    """The ping itself cannot work (its command cannot be executed): waiting is pointless.

    Attributes:
        detail: What went wrong, with the command's own error output.
        exit_status: The command's exit status (126 or 127 from a shell), if any.
    """

    def __init__(self, detail: str, exit_status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.exit_status = exit_status


def close_quietly(obj: object) -> None:
    """Call ``obj.close()`` if it has one, ignoring whatever it raises."""
    close = getattr(obj, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


class Probe(Protocol):
    """Something that can tell whether the daemon is ready."""

    def check(self, timeout: float) -> bool:
        """Return whether the daemon answers, waiting at most ``timeout`` seconds."""
        ...

    def describe(self) -> str:
        """A short description for messages, e.g. ``tcp://127.0.0.1:6379``."""
        ...


def _unfilled(text: str) -> PingUnusable | None:
    """A ping whose address still holds ``{port}`` asks a daemon that has not started."""
    if PORT not in text:
        return None
    return PingUnusable(f"its address {text} is known only once the daemon has started")


@dataclass(frozen=True, slots=True)
class TcpPing:
    """Ready when a TCP connect to ``host:port`` succeeds on any address it resolves to.

    ``port`` may be ``"{port}"``: the port chosen when the daemon starts.
    """

    host: str
    port: int | str

    def __post_init__(self) -> None:
        if self.port == PORT:
            return
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not (
                0 < self.port < 65536  # noqa: PLR2004 - the TCP port range
            )
        ):
            msg = f"TCP port must be an int from 1 to 65535 or {PORT!r}, not {self.port!r}"
            raise ValueError(msg)

    def check(self, timeout: float) -> bool:
        """Try each address ``host`` resolves to (IPv4 and IPv6), within ``timeout`` in all.

        Raises:
            PingUnusable: The port is still ``"{port}"`` (not chosen yet).
        """
        if (unusable := _unfilled(str(self.port))) is not None:
            raise unusable
        with contextlib.suppress(OSError):
            connect(self.host, int(self.port), time.monotonic() + max(timeout, 0.001)).close()
            return True
        return False

    def describe(self) -> str:
        """``tcp://host:port``."""
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixPing:
    """Ready when a connect to the unix socket at ``path`` succeeds."""

    path: Path

    def __post_init__(self) -> None:
        size = len(os.fsencode(self.path))
        if size > _platform.UNIX_PATH_MAX:
            msg = (
                f"the unix socket path {str(self.path)!r} is {size} bytes long; a socket "
                f"can only be connected at a path of up to {_platform.UNIX_PATH_MAX} bytes "
                "here. Choose a shorter path."
            )
            raise ValueError(msg)

    def check(self, timeout: float) -> bool:
        """Connect to the socket file."""
        family = getattr(socket, "AF_UNIX", None)
        if family is None:  # pragma: no cover - Windows builds without AF_UNIX
            return False
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(timeout, 0.001))
            sock.connect(str(self.path))
        except OSError:
            return False
        else:
            return True
        finally:
            sock.close()

    def describe(self) -> str:
        """``unix://path``."""
        return f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class HttpPing:
    """Ready when a GET of ``url`` answers with a 2xx or 3xx status."""

    url: str

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            msg = f"ping_http needs an http:// or https:// URL with a host, not {self.url!r}"
            raise ValueError(msg)
        if parts.username is not None or parts.password is not None:
            msg = (
                f"ping_http does not send the credentials in {self.url!r}, so the daemon "
                "would refuse every ping; use a URL it answers without them, or "
                "ping(fn) with a request of your own"
            )
            raise ValueError(msg)
        try:
            if PORT not in self.url:  # "{port}" is filled in when the daemon starts
                parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as err:
            msg = f"ping_http: bad port in {self.url!r}: {err}"
            raise ValueError(msg) from None

    def check(self, timeout: float) -> bool:
        """Send one GET and read the status line, all within ``timeout`` seconds.

        Raises:
            PingUnusable: The URL still holds ``{port}`` (not chosen yet).
        """
        if (unusable := _unfilled(self.url)) is not None:
            raise unusable
        parts = urllib.parse.urlsplit(self.url)
        https = parts.scheme == "https"
        deadline = time.monotonic() + max(timeout, 0.001)
        target = urllib.parse.quote(
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            safe="/?&=%:@!$'()*+,;~-._",
        )
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Connection: close\r\nAccept: */*\r\n\r\n"
        ).encode()
        try:
            sock = connect(parts.hostname or "", parts.port or (443 if https else 80), deadline)
        except OSError:
            return False
        try:
            sock.settimeout(0.0)  # non-blocking: every wait is bounded by the deadline
            if https:
                sock = start_tls(sock, parts.hostname or "", deadline)
            send_all(sock, request, deadline)
            status = http_status(sock, deadline)
        except (OSError, ValueError):
            return False
        finally:
            sock.close()
        return 200 <= status < 400  # noqa: PLR2004 - 2xx and 3xx

    def describe(self) -> str:
        """The URL."""
        return self.url


@dataclass(frozen=True, slots=True)
class CommandPing:
    """Ready when the command exits with status 0 (a str runs through the shell).

    Attributes:
        command: The command.
        cwd: Where it runs; ``None`` is our working directory.
    """

    command: str | tuple[str, ...]
    cwd: Path | None = None

    def check(self, timeout: float) -> bool:
        """Run the command, discarding its output.

        Raises:
            PingUnusable: The command cannot be executed (not found, not
                executable: a shell's status 126 or 127), so it never will
                answer; its error output is in the exception.
        """
        try:
            result = subprocess.run(
                self.command,
                shell=isinstance(self.command, str),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=max(timeout, 0.1),
                check=False,
                cwd=self.cwd,
            )
        except subprocess.TimeoutExpired:
            return False
        except OSError as err:
            if err.errno in _UNRUNNABLE:
                raise PingUnusable(f"cannot run {self.describe()}: {err}") from err
            return False
        if result.returncode in _SHELL_UNRUNNABLE and isinstance(self.command, str):
            said = result.stderr[-2000:].decode(errors="replace").strip()
            raise PingUnusable(f"cannot run {self.describe()}: {said}", result.returncode)
        return result.returncode == 0

    def describe(self) -> str:
        """The command line."""
        return command_text(self.command)


@dataclass(frozen=True, slots=True)
class CallablePing:
    """Ready when the function returns something truthy.

    A result with a ``close()`` method (a socket, say) is closed; errors from
    ``close()`` are ignored. A connect error raised by the function is "not ready".
    """

    function: Callable[[], Any]

    def check(self, timeout: float) -> bool:  # noqa: ARG002 - the function sets its own timeouts
        """Call the function."""
        try:
            result = self.function()
        except OSError as err:
            if is_connect_error(err):
                return False
            raise
        close_quietly(result)
        return bool(result)

    def describe(self) -> str:
        """The function's name."""
        return getattr(self.function, "__qualname__", repr(self.function))


def has_address(probe: Probe) -> bool:
    """Whether the probe looks at an address (TCP, unix socket, HTTP) that a process holds."""
    return isinstance(probe, TcpPing | UnixPing | HttpPing)


def holder(probe: Probe) -> str | None:
    """Which process listens where the probe looks, as ``"PID 123 (redis-server)"``.

    Best effort through psutil: only TCP, HTTP and unix-socket probes can be
    matched, and another user's sockets may be invisible without privileges.
    """
    wanted: int | str
    if isinstance(probe, HttpPing):
        parts = urllib.parse.urlsplit(probe.url)
        try:
            port = parts.port
        except ValueError:  # "{port}", not chosen yet
            return None
        kind, wanted = "inet", port or (443 if parts.scheme == "https" else 80)
    elif isinstance(probe, TcpPing) and isinstance(probe.port, int):
        kind, wanted = "inet", probe.port
    elif isinstance(probe, UnixPing):
        kind, wanted = "unix", str(probe.path)
    else:
        return None
    return address_holder(kind, wanted)


def address_holder(kind: str, wanted: int | str, *, listening: bool = True) -> str | None:
    """Which process has a port (``kind="inet"``) or a socket path (``"unix"``).

    Args:
        kind: ``"inet"`` or ``"unix"``.
        wanted: The port, or the socket's path.
        listening: Only a listener counts on a port; ``False``: a listener
            if there is one, else a connection using the port (usually an
            outgoing one).
    """
    try:
        connections = psutil.net_connections(kind=kind)
    except (psutil.Error, OSError):
        return None
    found = []
    for conn in connections:
        address: Any = conn.laddr  # a path for unix sockets, (ip, port) for inet
        if not conn.pid or not address:
            continue
        if kind == "unix":
            if address == wanted:
                found.append(conn)
        elif address[1] == wanted and (conn.status == psutil.CONN_LISTEN or not listening):
            found.append(conn)
    if not found:
        return None
    conn = min(found, key=lambda c: c.status != psutil.CONN_LISTEN)  # a listener first
    try:
        name = psutil.Process(conn.pid).name()
    except psutil.Error:
        name = "?"
    return f"PID {conn.pid} ({name})"
