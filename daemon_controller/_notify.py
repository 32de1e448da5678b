"""The sd_notify protocol: a daemon tells us when it is ready, and who it is.

systemd's ``Type=notify`` services, and every program built for them (Redis
with ``--supervised systemd``, PostgreSQL built with libsystemd, many Go and
Rust services), find a datagram socket's address in ``NOTIFY_SOCKET`` and send
it newline-separated assignments: ``READY=1``, ``STATUS=…``, ``MAINPID=…``,
``ERRNO=…``, ``STOPPING=1``, ``EXTEND_TIMEOUT_USEC=…``.

Each start gets a socket of its own. On Linux it is *abstract* (a name, no
file: nothing to clean up, and a daemon run as another user through
``.user()`` can reach it), and ``SO_PASSCRED`` makes the kernel attach the
sender's PID to every message, so that only messages from processes of this
start are believed (the caller decides which those are). Elsewhere the socket
is a file in a fresh 0700 directory of our runtime directory, which only our
user can reach. Descriptors passed along (``FDSTORE=1``) are closed at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _platform
from ._files import atomic_write, read_tail

if TYPE_CHECKING:
    from pathlib import Path

#: A status record is small; anything larger at its path is not ours.
_RECORD_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    """One datagram: who sent it (``None`` where the kernel does not say) and what it says.

    Attributes:
        pid: The sender's PID, from the kernel (``SO_PASSCRED``).
        fields: Its assignments, e.g. ``{"READY": "1", "STATUS": "Loading"}``.
    """

    pid: int | None
    fields: dict[str, str] = field(default_factory=dict)


def parse(data: bytes) -> dict[str, str]:
    """The ``KEY=value`` lines of a message; other lines are ignored."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifySocket:
    """The socket one start listens on; ``address`` goes into ``NOTIFY_SOCKET``.

    Raises:
        OSError: The socket cannot be made (or the platform has none).
    """

    def __init__(self) -> None:
        self._sock = _platform.NotifySocket(_platform.runtime_dir)
        self.address = self._sock.address

    def fileno(self) -> int:
        """The socket's descriptor: readable when a message is waiting."""
        return self._sock.fileno()

    def receive(self) -> list[Message]:
        """Every message waiting, oldest first (none: an empty list)."""
        return [Message(pid, parse(data)) for pid, data in self._sock.receive()]

    def close(self) -> None:
        """Close the socket (and remove its file, where it has one)."""
        self._sock.close()


# -- the last STATUS= of a start, beside the PID file ---------------------------------------


def write_status(path: Path, pid: int | None, text: str) -> None:
    """Record the last ``STATUS=`` text of the daemon ``pid`` (best effort)."""
    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps({"pid": pid, "status": text}).encode())


def read_status(path: Path, pid: int | None) -> str | None:
    """The recorded ``STATUS=`` text, if it was recorded for ``pid`` (any, for ``None``)."""
    text = read_tail(path, limit=_RECORD_LIMIT)
    try:
        record = json.loads(text or "null")
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("status"), str):
        return None
    if pid is not None and record.get("pid") != pid:
        return None
    return str(record["status"])


def clear_status(path: Path) -> None:
    """Forget the recorded ``STATUS=`` (a new start begins)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
