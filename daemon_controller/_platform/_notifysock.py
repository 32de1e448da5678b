"""A unix datagram socket for the sd_notify protocol, with the sender's PID on each message.

On Linux the socket is *abstract* (a name, no file: nothing to clean up, and a
daemon run as another user through ``.user()`` can reach it), and
``SO_PASSCRED`` makes the kernel attach the sender's PID to every message.
Elsewhere it is a file in a fresh 0700 directory of our runtime directory,
which only our user can reach, and senders are not identified.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# The type checker reads this module for POSIX only (see _posix).
assert sys.platform != "win32" or not TYPE_CHECKING  # noqa: S101 - a type-checker directive

#: Larger than any message the protocol's senders write (systemd reads 4 KiB).
_MESSAGE_LIMIT = 8192
_SO_PASSCRED: int | None = getattr(socket, "SO_PASSCRED", None)
_SCM_CREDENTIALS: int | None = getattr(socket, "SCM_CREDENTIALS", None)
_UCRED = struct.Struct("iII")  # pid, uid, gid
#: Descriptors passed along (FDSTORE=1) that we accept only in order to close them.
_MAX_FDS = 16
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_MAX_FDS * 4)


class NotifySocket:
    """A bound, non-blocking datagram socket; ``address`` is what ``NOTIFY_SOCKET`` says.

    Args:
        runtime_dir: Where a socket file may go (called only where there is
            no abstract namespace).

    Raises:
        OSError: The socket cannot be made.
    """

    def __init__(self, runtime_dir: Callable[[], Path]) -> None:
        self._dir: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)  # noqa: FBT003 - the socket module's own signature
            name = f"daemon-controller/{os.urandom(12).hex()}"
            if _SO_PASSCRED is not None:
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
                self._sock.bind("\0" + name)
                self.address = "@" + name
            else:  # pragma: no cover - macOS and the BSDs
                import tempfile  # noqa: PLC0415 - import time: only here

                self._dir = tempfile.mkdtemp(prefix="notify-", dir=runtime_dir())
                self.address = os.path.join(self._dir, "notify")  # noqa: PTH118 - a str for bind()
                self._sock.bind(self.address)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """The socket's descriptor: readable when a message is waiting."""
        return self._sock.fileno()

    def receive(self) -> list[tuple[int | None, bytes]]:
        """Every message waiting, oldest first: ``(sender's PID or None, bytes)``."""
        messages: list[tuple[int | None, bytes]] = []
        while True:
            try:
                data, cmsgs, _flags, _address = self._sock.recvmsg(_MESSAGE_LIMIT, _ANCILLARY)
            except OSError:  # nothing more waiting (BlockingIOError), or closed
                return messages
            pid = None
            for level, kind, payload in cmsgs:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == _SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
                elif kind == socket.SCM_RIGHTS:
                    _close_passed(payload)
            messages.append((pid, data))

    def close(self) -> None:
        """Close the socket (and remove its file, where it has one)."""
        self._sock.close()
        if self._dir is not None:
            import shutil  # noqa: PLC0415 - import time: only here

            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _close_passed(payload: bytes) -> None:
    """Close descriptors a sender passed along: we keep none of them."""
    fds = array.array("i")
    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
