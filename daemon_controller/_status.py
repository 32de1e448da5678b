"""``Daemon.status()``: what a daemon is doing right now, as one small record.

``is_running()`` keeps the gem's meaning (the PID file names a live process).
A status also asks the daemon's ping, so "running but not answering" — a hung
server, or a stranger's process on a recycled PID file — is told apart from
"running and ready".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import _actions, _notify, _process
from ._errors import hide_frames
from ._probes import PingUnusable

if TYPE_CHECKING:
    from ._options import Target

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


@dataclass(frozen=True, slots=True)
class Status:
    """A daemon's state at one moment.

    Attributes:
        name: The daemon's name.
        pid: The PID of the running daemon, or ``None``.
        running: Whether its PID file names a live process (``is_running()``).
        answering: Whether its ping was answered just now; ``None`` when it
            has no ping. Asked also when it is not running: an answer then
            comes from a stranger holding its address.
        since: When its process started (seconds since the epoch), or ``None``.
        ping: What its ping asks (``"tcp://127.0.0.1:6379"``), or ``None``.
        pid_file: Its PID file.
        problem: Why the ping could not even be asked (its command cannot
            run), or ``None``.
        port: The port it was started with (``port()``), or ``None``: not
            running, or no port declared.
        run_dir: Its run directory (``run_dir()``), or ``None``.
        readiness: How its starts tell that it is ready: ``"notify"``,
            ``"log"`` and/or ``"ping"`` (see ``DaemonConfig.readiness``).
        notify_status: The last ``STATUS=`` text it sent while it started
            (``notify()``), if the running daemon sent one; else ``None``.
    """

    name: str
    pid: int | None
    running: bool
    answering: bool | None
    since: float | None
    ping: str | None
    pid_file: Path
    problem: str | None = None
    port: int | None = None
    run_dir: Path | None = None
    readiness: tuple[str, ...] = ()
    notify_status: str | None = None

    @property
    def ok(self) -> bool:
        """Running, and answering its ping (when it has one)."""
        return self.running and self.answering is not False

    @property
    def uptime(self) -> float | None:
        """Seconds since its process started, or ``None``."""
        return None if self.since is None else max(0.0, time.time() - self.since)

    @property
    def state(self) -> str:
        """``"stopped"``, ``"running"`` or ``"not answering"``, for people."""
        if not self.running:
            return "stopped"
        return "running" if self.answering is not False else "not answering"


def status(target: Target, timeout: float) -> Status:
    """See :meth:`Daemon.status`."""
    pid = _actions.read_pid(target)
    port = None if pid is None else _actions.read_pid_and_port(target)[1]
    if port is not None:
        target = _actions.started(target)
    run_dir = target.config.run_dir
    probe = target.config.ping
    answering: bool | None = None
    problem = None
    if probe is not None:
        try:
            answering = probe.check(timeout)
        except PingUnusable as err:
            answering, problem = False, err.detail
    return Status(
        name=target.name,
        pid=pid,
        running=pid is not None,
        answering=answering,
        since=None if pid is None else _process.create_time(pid),
        ping=None if probe is None else probe.describe(),
        pid_file=target.files.pid,
        problem=problem,
        port=port,
        run_dir=run_dir if isinstance(run_dir, Path) else None,
        readiness=target.config.readiness,
        notify_status=None if pid is None else _notify.read_status(target.files.status, pid),
    )
