"""Sharing one failed start with everybody who was waiting for it.

When eight processes enter ``running()`` on a daemon that cannot start, the
first one tries and fails; the seven others were queued on the lock waiting for
that very attempt. The Ruby gem lets each of them try again in turn, eight
failed spawns in a row. We record the failure next to the lock file instead, and
a caller that began waiting before the failure raises the recorded error
(same output and log lines) without spawning again. A caller that arrives after
the failure is a fresh attempt and tries again.

The record is JSON with plain fields (never a pickle: the file is outside our
control), written atomically (0600), only while holding the exclusive lock, and
read back with a size cap (see ``_files.read_own``).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from ._errors import DaemonError, StartError, StartTimeout, hide_frames
from ._files import TAIL_LIMIT, UnsafeFileError, atomic_write, read_own

if TYPE_CHECKING:
    from ._files import DaemonFiles

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

_FIELDS = ("output", "log", "exit_status", "signal", "pid", "reason")
#: A record holds at most two texts of about TAIL_LIMIT each (output, log), JSON-escaped.
_READ_LIMIT = 16 * TAIL_LIMIT


def now() -> int:
    """The cross-process clock the records use (wall clock, nanoseconds)."""
    return time.time_ns()


def write(files: DaemonFiles, error: StartError) -> None:
    """Record ``error`` as the outcome of the start attempt that just ended."""
    record: dict[str, Any] = {
        "failed_at": now(),
        "kind": "StartTimeout" if isinstance(error, StartTimeout) else "StartError",
        "identifier": error.identifier,
        "message": error.message,
        **{name: getattr(error, name) for name in _FIELDS},
        "ran": error.ran,
    }
    if isinstance(error, StartTimeout):
        record["timeout"] = error.timeout
    with contextlib.suppress(OSError):  # sharing is an optimisation; never fail a start on it
        atomic_write(files.failure, json.dumps(record).encode())


def clear(files: DaemonFiles) -> None:
    """Forget the last failure (a start succeeded)."""
    with contextlib.suppress(OSError):
        files.failure.unlink()


def recorded_since(files: DaemonFiles, since: int, name: str) -> StartError | None:
    """The recorded failure if it happened after ``since`` (from :func:`now`).

    Raises:
        DaemonError: The record belongs to another user, who could make us
            raise whatever they like.
    """
    try:
        data = read_own(files.failure, _READ_LIMIT)
    except UnsafeFileError as err:
        msg = f"Daemon '{name}': refusing its failure record: {err}. Remove it."
        raise DaemonError(name, msg) from err
    if data is None:
        return None
    try:
        record = json.loads(data)
        if not isinstance(record, dict) or int(record["failed_at"]) < since:
            return None
        fields: dict[str, Any] = {name: record.get(name) for name in _FIELDS}
        fields["ran"] = bool(record.get("ran", True))
        identifier, message = str(record["identifier"]), str(record["message"])
        if record.get("kind") == "StartTimeout":
            return StartTimeout(identifier, message, timeout=float(record["timeout"]), **fields)
        return StartError(identifier, message, **fields)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
