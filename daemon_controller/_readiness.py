"""When is a starting daemon ready? What it tells us, and what we ask it.

Three ways, in any combination (then all must hold):

* ``notify()``: the daemon sends ``READY=1`` to the start's notify socket
  (:mod:`._notify`); it may also name its PID (``MAINPID=``), say what it is
  doing (``STATUS=``), ask for more time (``EXTEND_TIMEOUT_USEC=``) or report
  that it failed (``ERRNO=``, ``STOPPING=1``);
* ``ping_log(pattern)``: a line matching ``pattern`` appears in its log after
  the start began (:class:`._logs.LogLines`);
* a ping (``ping_tcp()`` …): it answers when asked.

The first two are *told*: they arrive as events (the socket, inotify on the
log's directory) and, once seen, hold; waiting for them costs no polling.
Only a ping must be asked again and again. Between looks, a start waits on
:meth:`Readiness.fds` (see :meth:`._start.Start._sleep`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _platform
from ._logs import LogLines
from ._notify import Message, NotifySocket, StatusRecord
from ._probes import PingUnusable

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._logs import LogWatch
    from ._options import StartTarget
    from ._waiting import Deadline

#: At most this many ignored notify messages are logged per start.
_IGNORED_LOGGED = 3


class Failed(Exception):
    """Raised while a start waits; turned into a StartError with the output and log."""

    def __init__(self, message: str, *, timeout: float | None = None, **fields: Any) -> None:  # noqa: ANN401 - StartError fields
        super().__init__(message)
        self.message = message
        self.timeout = timeout
        self.fields = fields


class Readiness:
    """What one start has been told so far, and the descriptors that tell it more.

    Args:
        target: The daemon.
        log: Its log as it was when the start began.
        deadline: The start's deadline, extended by ``EXTEND_TIMEOUT_USEC=``.
        is_ours: Whether a PID is a process of this start: messages from
            anyone else are ignored (and logged).

    Raises:
        OSError: The notify socket cannot be made.
    """

    def __init__(
        self,
        target: StartTarget,
        log: LogWatch,
        deadline: Deadline,
        is_ours: Callable[[int], bool],
    ) -> None:
        cfg = target.config
        self.name = target.name
        self.logger = cfg.logger
        self.probe = target.probe
        self.pattern = cfg.ping_log
        self.deadline = deadline
        self.is_ours = is_ours
        self.lines = LogLines(log) if self.pattern is not None else None
        self.watch = _platform.watch_files([log.path]) if self.pattern is not None else None
        self.seen: str | None = None  # the line that matched
        self.notify = cfg.notify
        self.socket: NotifySocket | None = None
        self.record: StatusRecord | None = None
        if cfg.notify:
            try:
                self.socket = NotifySocket()
            except BaseException:
                self._stop_reading()
                raise
            self.record = StatusRecord(target.files.status)
        self.notified = False  # READY=1 received
        self.sender: int | None = None  # who sent it
        self.main_pid: int | None = None  # MAINPID=
        self.status: str | None = None  # the last STATUS=
        self.status_pid: int | None = None  # whose it is, as recorded
        self.ignored = 0

    # what the daemon is given, and what wakes us ---------------------------------------------

    def environment(self) -> dict[str, str]:
        """``NOTIFY_SOCKET`` for the start command, when the daemon may notify."""
        return {} if self.socket is None else {"NOTIFY_SOCKET": self.socket.address}

    def fds(self) -> list[int]:
        """Descriptors that become readable when the daemon tells us something."""
        fds = [] if self.socket is None else [self.socket.fileno()]
        if self.watch is not None:
            fds.append(self.watch.fileno())
        return fds

    @property
    def evented(self) -> bool:
        """Whether everything still awaited arrives as an event (no need to poll for it)."""
        if self.seen is not None or self.pattern is None:
            return True
        return self.watch is not None and self.watch.complete

    @property
    def behind(self) -> bool:
        """Whether the log has more to read right now: look again without a pause."""
        return self.lines is not None and self.seen is None and self.lines.behind

    # taking in what arrived ---------------------------------------------------------------------

    def take(self) -> None:
        """Read the messages and log lines that arrived.

        Raises:
            Failed: The daemon reported that it failed (``ERRNO=``) or is
                stopping (``STOPPING=1``).
        """
        if self.socket is not None:
            for message in self.socket.receive():
                self._message(message)
        if self.lines is not None and self.seen is None:
            if self.watch is not None:
                self.watch.changed()  # drained first: later writes wake the next pause
            assert self.pattern is not None  # noqa: S101 - set with lines
            for line in self.lines.read():
                if self.pattern.search(line):
                    self.seen = line
                    self.logger.info("Daemon '%s' logged its ready line: %s", self.name, line)
                    self._stop_reading()
                    break

    def _message(self, message: Message) -> None:
        sender, fields = message.pid, message.fields
        if sender is not None and not self.is_ours(sender):
            self.ignored += 1
            if self.ignored <= _IGNORED_LOGGED:
                self.logger.warning(
                    "Daemon '%s': ignored a notify message from PID %d, which is not a "
                    "process of this start: %r",
                    self.name,
                    sender,
                    fields,
                )
            return
        if "STATUS" in fields:
            self._status(fields["STATUS"], self.main_pid or sender)
        if "MAINPID" in fields:
            self._main_pid(fields["MAINPID"], sender)
        if "EXTEND_TIMEOUT_USEC" in fields:
            self._extend(fields["EXTEND_TIMEOUT_USEC"])
        errno = _number(fields.get("ERRNO", ""))
        if errno:
            detail = os.strerror(errno) if errno < 4096 else "unknown error"  # noqa: PLR2004 - errno range
            raise self._failed(f"it reported error {errno} ({detail})", sender)
        if fields.get("STOPPING") == "1":
            raise self._failed("it reported that it is stopping (STOPPING=1)", sender)
        if fields.get("READY") == "1" and not self.notified:
            self.notified, self.sender = True, sender
            self.logger.info("Daemon '%s' sent READY=1 (PID %s)", self.name, sender)

    def _status(self, text: str, pid: int | None) -> None:
        self.logger.info("Daemon '%s' says: %s", self.name, text)
        self._record(text, pid)

    def _record(self, text: str, pid: int | None) -> None:
        self.status, self.status_pid = text, pid
        if self.record is not None:
            self.record.append(pid, text)

    def _extend(self, value: str) -> None:
        usec = _number(value)
        if usec is not None:
            self.deadline.extend(usec / 1e6)
            self.logger.info("Daemon '%s' asked for %.3f s more to start", self.name, usec / 1e6)

    def _main_pid(self, value: str, sender: int | None) -> None:
        pid = _number(value)
        if pid is None or pid <= 1 or not (pid == sender or self.is_ours(pid)):
            self.logger.warning(
                "Daemon '%s': ignored MAINPID=%s, which is not a process of this start",
                self.name,
                value,
            )
            return
        self.main_pid = pid

    def _failed(self, what: str, sender: int | None) -> Failed:
        status = f" (its last STATUS: {self.status})" if self.status else ""
        return Failed(
            f"Daemon '{self.name}' failed to start: {what}{status}.",
            pid=self.main_pid or sender,
        )

    def _stop_reading(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.lines is not None:
            self.lines.close()

    # what we know -------------------------------------------------------------------------------

    @property
    def told(self) -> bool:
        """Whether everything the daemon is to tell us has been told (nothing to tell: yes)."""
        notified = not self.notify or self.notified
        return notified and (self.pattern is None or self.seen is not None)

    def ready(self, pid: int | None) -> bool:
        """Whether the daemon is ready: it told all it is to tell, then answers its ping.

        Args:
            pid: The daemon's PID, if known (for the error).

        Raises:
            Failed: The ping can never answer (its command cannot be run).
        """
        if not self.told:
            return False
        if self.probe is None:
            return True
        try:
            return self.probe.check(min(max(self.deadline.remaining(), 0.001), 1.0))
        except PingUnusable as err:
            raise Failed(
                f"Daemon '{self.name}' failed to start: its ping can never answer: {err.detail}",
                exit_status=err.exit_status,
                pid=pid,
            ) from err

    def death(self, pid: int, status: int | None, signame: str | None, *, logged: bool) -> str:
        """What was missing when the daemon died, and how it died, for the error's first line.

        E.g. "pattern 'x' not seen; the daemon (PID 12) exited with status 1; its last lines:".

        Args:
            pid: The daemon that exited.
            status: Its exit status, if known.
            signame: The signal that ended it, if known.
            logged: Whether it wrote anything to its log (shown after this text).
        """
        how = f" with status {status}" if status is not None else ""
        how = f" on {signame}" if signame is not None else how
        lines = "; its last lines:" if logged else "."
        return f"{self.missing()}; the daemon (PID {pid}) exited{how}{lines}"

    @property
    def named_pid(self) -> int | None:
        """The PID the daemon named (``MAINPID=``), or the one that sent ``READY=1``."""
        return self.main_pid or (self.sender if self.notified else None)

    def missing(self, *, answered: bool = False) -> str:
        """What has not happened yet, for messages: "pattern 'x' not seen; …".

        Args:
            answered: Whether the ping has answered (it is not listed then).
        """
        parts = []
        if self.notify and not self.notified:
            status = f" (its last STATUS: {self.status})" if self.status else ""
            parts.append(f"no READY=1 received{status}")
        if self.pattern is not None and self.seen is None:
            parts.append(f"pattern {self.pattern.pattern!r} not seen")
        if self.probe is not None and not answered:
            parts.append(f"no answer from {self.probe.describe()}")
        return "; ".join(parts) or "not ready"

    def finish(self, pid: int | None) -> None:
        """The start is over: the last status is the ready daemon ``pid``'s; close everything."""
        if pid is not None and self.status is not None and self.status_pid != pid:
            self._record(self.status, pid)
        self.close()

    def close(self) -> None:
        """Close the socket and stop following the log."""
        self._stop_reading()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.record is not None:
            self.record.close()


def _number(text: str) -> int | None:
    """A non-negative decimal number, or ``None``."""
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 20 else None  # noqa: PLR2004 - a uint64
