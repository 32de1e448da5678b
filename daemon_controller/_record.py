"""The start record: what the last start of a daemon spawned, kept beside its lock file.

``<lock>.started`` holds, as JSON:

* ``marker`` — the start's environment marker, which every process it created
  inherits (see ``_tracking``);
* ``pid`` and ``stamp`` — the process the start spawned (a program run in the
  foreground), then the daemon once it answered, with its start time in a
  form that no step of the wall clock changes (``_platform.start_stamp``);
* ``boot`` — the boot it was made in; ``ready`` — whether the start finished;
* ``path`` — where it was written: a record moved here from another daemon's
  files (by a user who can rename files in a shared directory) is not ours.

It is written (0600, atomically, under the exclusive lock) *before* the start
command is spawned, so a controller killed at any moment after that leaves it
behind; updated once the PID is known and once the daemon answers; removed
when the start is aborted or the daemon stopped. It serves three purposes:

* a start that never finished (its controller was killed): the next start or
  stop finds what it left running by the marker and stops it;
* stopping the tree: once the daemon's main process has exited, whatever still
  carries the marker is stopped too;
* identity: a PID file naming the recorded PID with the recorded start time
  names our daemon, whatever the wall clock did since the file was written.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from . import _platform
from ._files import atomic_write, open_file, own_uids, read_own

if TYPE_CHECKING:
    from pathlib import Path

#: A record is a few hundred bytes; more is not one of ours.
_READ_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Record:
    """What one start spawned.

    Attributes:
        marker: The start's environment marker.
        pid: The daemon's PID, or the program's we spawned; ``None`` before the spawn.
        stamp: When that process started (``_platform.start_stamp``).
        boot: The boot the record was made in.
    """

    marker: str
    pid: int | None = None
    stamp: int | None = None
    boot: str = field(default_factory=_platform.boot_id)

    def names(self, pid: int) -> bool:
        """Whether ``pid`` is the recorded process: same PID, same start time, same boot."""
        return (
            pid == self.pid
            and self.stamp is not None
            and self.boot == _platform.boot_id()
            and _platform.start_stamp(pid) == self.stamp
        )


def of(marker: str, pid: int) -> Record:
    """The record of process ``pid``, spawned by the start with ``marker``."""
    return Record(marker, pid, _platform.start_stamp(pid))


def read(path: Path) -> Record | None:
    """The record at ``path``; ``None`` if there is none (or it is not one of ours).

    Raises:
        UnsafeFileError: It belongs to another user.
    """
    data = read_own(path, _READ_LIMIT)
    if data is None:
        return None
    try:
        raw = json.loads(data)
        if raw["path"] != str(path):
            return None
        record = Record(
            str(raw["marker"]),
            None if raw.get("pid") is None else int(raw["pid"]),
            None if raw.get("stamp") is None else int(raw["stamp"]),
            str(raw.get("boot", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    return record


def write(path: Path, record: Record) -> None:
    """Replace the record at ``path`` (0600, atomically); a failure to write is not fatal."""
    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps({**asdict(record), "path": str(path)}).encode())


def update(path: Path, record: Record) -> None:
    """Rewrite the record this start wrote, in place, once the daemon's PID is known.

    A rename over an existing file costs milliseconds on some disks; the start
    holds the daemon's exclusive lock, and every reader of the record takes
    that lock too, so nobody sees it half-written. Falls back to :func:`write`.
    """
    data = json.dumps({**asdict(record), "path": str(path)}).encode()
    try:
        fd = open_file(path, os.O_WRONLY | os.O_TRUNC, owners=own_uids())
    except OSError:
        write(path, record)
        return
    try:
        os.write(fd, data)
    except OSError:
        write(path, record)
    finally:
        os.close(fd)


def clear(path: Path) -> None:
    """Remove the record (the daemon is stopped, or its start aborted)."""
    with contextlib.suppress(OSError):
        path.unlink()
