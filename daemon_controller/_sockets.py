"""Sockets with one deadline for a whole exchange: connect, TLS, send, read a status line.

A ping's ``timeout`` bounds the whole check, not each socket operation: a
server that trickles its answer a byte at a time cannot hold a start past its
``start_timeout``.
"""

from __future__ import annotations

import re
import selectors
import socket
import sys
import time


def connect(host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first address of ``host`` that answers before ``deadline``.

    Raises:
        OSError: None did (``TimeoutError`` once the deadline passed).
    """
    error: OSError = TimeoutError(f"no connection to {host}:{port} in time")
    for family, kind, proto, _name, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(address)
        except OSError as err:
            sock.close()
            error = err
            continue
        return sock
    raise error


def wait_io(sock: socket.socket, deadline: float, *, write: bool = False) -> None:
    """Wait until ``sock`` may be read (written), until ``deadline``; TimeoutError after."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with selectors.DefaultSelector() as selector:  # no FD_SETSIZE limit, unlike select()
            selector.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
            if selector.select(remaining):
                return
    raise TimeoutError("no answer in time")


def start_tls(sock: socket.socket, host: str, deadline: float) -> socket.socket:
    """``sock`` wrapped in TLS (certificate checked), the handshake done by ``deadline``."""
    import ssl  # noqa: PLC0415 - 10 ms of import time, only for https pings

    tls = ssl.create_default_context().wrap_socket(
        sock, server_hostname=host, do_handshake_on_connect=False
    )
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            wait_io(tls, deadline)
        except ssl.SSLWantWriteError:
            wait_io(tls, deadline, write=True)
        else:
            return tls


def _blocked(err: OSError) -> str | None:
    """``"read"`` or ``"write"`` if a non-blocking call must wait for that; ``None``: a failure."""
    if isinstance(err, BlockingIOError | InterruptedError):
        return "io"
    ssl = sys.modules.get("ssl")  # imported if the socket is a TLS one
    if ssl is not None and isinstance(err, ssl.SSLWantReadError):
        return "read"
    if ssl is not None and isinstance(err, ssl.SSLWantWriteError):
        return "write"
    return None


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    while data:
        try:
            data = data[sock.send(data) :]
        except OSError as err:
            wait_for = _blocked(err)
            if wait_for is None:
                raise
            wait_io(sock, deadline, write=wait_for != "read")


_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? +([1-5]\d\d)\b")


def http_status(sock: socket.socket, deadline: float) -> int:
    """The status code of the response on ``sock``, read by ``deadline``.

    Raises:
        ValueError: What came back is not an HTTP response.
        OSError: The connection failed, or ``TimeoutError`` at the deadline.
    """
    received = b""
    while b"\n" not in received:
        try:
            chunk = sock.recv(1024)
        except OSError as err:
            wait_for = _blocked(err)
            if wait_for is None:
                raise
            wait_io(sock, deadline, write=wait_for == "write")
            continue
        if not chunk or len(received) > 8192:  # noqa: PLR2004 - a status line is short
            break
        received += chunk
    found = _STATUS_LINE.match(received)
    if found is None:
        msg = "not an HTTP response"
        raise ValueError(msg)
    return int(found.group(1))
