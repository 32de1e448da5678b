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
from ._files import open_file, own_uids, read_tail

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


# -- the STATUS= texts, beside the PID file ------------------------------------------------
#
# One JSON line per message, appended: appending is one write() to a file that
# exists, which costs microseconds, while replacing a file (a rename) can take
# milliseconds on ext4, which a start that has just become ready must not spend.

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
#: The record is started afresh beyond this size (at the start of a start).
_RECORDS_LIMIT = 64 * 1024
#: A status text longer than this is cut.
_STATUS_LIMIT = 2048


class StatusRecord:
    """Where one start appends the ``STATUS=`` texts, opened before the daemon runs.

    Opening is the slow part of an append; with the file open, recording the
    status that comes with ``READY=1`` is one ``write()``. Opened like every
    side file (``_files.open_file``): a regular file of ours, never through a
    symlink; anything else planted at the path is left alone, and no status
    is kept.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            if os.lstat(path).st_size > _RECORDS_LIMIT:
                os.unlink(path)  # start the record afresh once it has grown large
        with contextlib.suppress(OSError):
            self._fd = open_file(path, _APPEND_FLAGS, owners=own_uids())
        self._write({"start": True})  # what came before is an earlier start's

    def append(self, pid: int | None, text: str) -> None:
        """Record that the daemon ``pid`` sent ``STATUS=text`` (best effort)."""
        self._write({"pid": pid, "status": text[:_STATUS_LIMIT]})

    def _write(self, record: dict[str, object]) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        """Close the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_status(path: Path, pid: int | None) -> str | None:
    """The last ``STATUS=`` text recorded for ``pid``, or ``None``.

    ``pid=None``: the last one of the latest start, whoever sent it (for a
    display while the start is under way).
    """
    text = read_tail(path, limit=_RECORD_LIMIT, owners=own_uids()) or ""
    for line in reversed(text.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the first line of the tail may be cut
        if not isinstance(record, dict):
            continue
        if pid is None and record.get("start"):
            return None  # nothing yet from the latest start
        if pid is None or record.get("pid") == pid:
            status = record.get("status")
            return status if isinstance(status, str) else None
    return None
