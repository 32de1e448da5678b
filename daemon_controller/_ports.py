"""A TCP port chosen when a daemon starts, and the record through which everyone finds it.

The port is chosen by letting the kernel pick a free one on the loopback
address, and recorded beside the daemon's lock file (``DaemonFiles.port``)
before the start command runs, under the daemon's lock; every process and every
later run that describes the daemon the same way reads it there. A restart
keeps the port when it is still free, so clients that remember it can
reconnect.

Choosing a port and binding it are two steps: something else (an outgoing
connection, another program) can take the port in between. The caller
recognises that failure (:func:`says_address_in_use`, :func:`is_free`) and
chooses again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from typing import TYPE_CHECKING

from ._files import atomic_write

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

#: What daemons say when they cannot bind: Python and the C library, nginx ("bind() to
#: ... failed (98: Address already in use)"), Redis, PostgreSQL, memcached, Windows.
_IN_USE = re.compile(
    r"address already in use|address in use|eaddrinuse|"
    r"only one usage of each socket address",
    re.IGNORECASE,
)
#: How many ports are drawn before giving up (each is free when drawn).
_DRAWS = 64
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_WRITE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_NO_IPV6 = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


def says_address_in_use(*texts: str | None) -> bool:
    """Whether a daemon's output or log says its address was taken."""
    return any(text and _IN_USE.search(text) for text in texts)


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As a server binds: a connection of a previous daemon lingering in
        # TIME_WAIT does not make the port taken, a listener does. (Where
        # SO_EXCLUSIVEADDRUSE exists, Windows, SO_REUSEADDR would let us bind
        # even a port somebody listens on.)
        if not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return family == socket.AF_INET6 and err.errno in _NO_IPV6
    return True


def is_free(port: int) -> bool:
    """Whether a server could bind ``port`` on the loopback addresses (IPv4 and IPv6)."""
    return _bindable(socket.AF_INET, "127.0.0.1", port) and _bindable(socket.AF_INET6, "::1", port)


def choose(previous: int | None = None, avoid: Collection[int] = ()) -> int:
    """A free TCP port: ``previous`` if it is still free, else one the kernel picks.

    Args:
        previous: The port the daemon had last time: kept if free and not in ``avoid``.
        avoid: Ports that failed already during this start.

    Raises:
        OSError: No free port could be found.
    """
    if previous is not None and previous not in avoid and is_free(previous):
        return previous
    for _ in range(_DRAWS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in avoid and _bindable(socket.AF_INET6, "::1", port):
            return port
    raise OSError(errno.EADDRINUSE, "no free TCP port on the loopback address")


def record(path: Path, port: int) -> None:
    """Record ``port`` (readable by others, like a PID file); the caller holds the daemon's lock.

    An existing record is overwritten in place with one ``write`` of a
    fixed width (the port and a newline, padded to six bytes): no new file
    and no rename, a tenth of the time of
    :func:`~daemon_controller._files.atomic_write` on a disk, and the
    record is written at every start. Readers read it under the
    daemon's lock, so they never meet a write half done. Anything but a
    regular file of that size at ``path`` (a symlink, a FIFO, junk) is
    replaced atomically instead, never written through.

    Raises:
        OSError: The file cannot be written.
    """
    data = f"{port:5d}\n".encode()
    try:
        fd = os.open(path, _WRITE_FLAGS, 0o644)
    except OSError:
        fd = -1  # a symlink or a FIFO there, or the file cannot be opened: replace it
    if fd >= 0:
        try:
            info = os.fstat(fd)
            fits = info.st_size in (0, len(data))  # new, or a record: nothing left after it
            if stat.S_ISREG(info.st_mode) and fits and os.write(fd, data) == len(data):
                return
        finally:
            os.close(fd)
    atomic_write(path, data, mode=0o644)


def read(path: Path) -> int | None:
    """The recorded port, or ``None`` (no record, or not a plain small file holding a port)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 16).strip()
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not text.isdigit() or len(text) > 5:  # noqa: PLR2004 - 65535 has five digits
        return None
    port = int(text)
    return port if 0 < port < 65536 else None  # noqa: PLR2004 - the TCP port range
