"""Waiting on several file descriptors at once: how a start pauses between looks.

Everything a start waits for that the OS can announce is a descriptor that
becomes readable: a pidfd when its process exits, an inotify descriptor when
a watched file changes, the notify socket when the daemon sends a message.
One wait on all of them wakes on the first; a timeout bounds it.
"""

from __future__ import annotations

import math
import select
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

#: The longest a single wait lasts (poll() takes a C int of milliseconds: ~24.8
#: days); a caller waiting longer (an infinite timeout) simply waits again.
_LONGEST = (2**31 - 1) / 1000


def wait_readable(fds: Collection[int], timeout: float) -> list[int]:
    """Block until one of ``fds`` is readable or ``timeout`` seconds have passed.

    Args:
        fds: Open descriptors (on Windows, sockets only).
        timeout: The longest wait, in seconds; ``0`` only looks. Rounded up
            to the next millisecond, so that a short pause is a pause and not
            a busy loop; at most about 24 days (``inf`` included).

    Returns:
        The descriptors that are readable (or closed, or in error: all of
        which a caller must look at); empty when the timeout passed first.
    """
    timeout = min(timeout, _LONGEST) if timeout >= 0 else 0.0  # (NaN: not >= 0)
    poll = getattr(select, "poll", None)  # not on Windows
    if poll is None:  # pragma: no cover - Windows
        readable, _, broken = select.select(list(fds), [], list(fds), timeout)
        return sorted({*readable, *broken})
    poller = poll()
    pollin: int = getattr(select, "POLLIN", 1)  # the constant is POSIX-only too
    for fd in fds:
        poller.register(fd, pollin)
    milliseconds = min(math.ceil(timeout * 1000), 2**31 - 1)
    return [fd for fd, _events in poller.poll(milliseconds)]
