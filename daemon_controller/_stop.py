"""Stopping a daemon: ask (stop command or signal), wait for it to exit, force if it won't.

Then what it started: the processes that carry its start's marker (found
through the start record, see ``_record``) and still run once the main process
has exited get SIGTERM, and SIGKILL at ``stop_timeout``. A worker that ignores
SIGTERM would otherwise keep the daemon's port after ``stop()`` returned.

Everything here runs under the daemon's exclusive lock (see ``_actions``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import psutil

from . import _commands, _pidfile, _platform, _process, _record, _tracking
from ._errors import DaemonError, StopError, StopTimeout, hide_frames
from ._files import UnsafeFileError
from ._waiting import Deadline, poll_until

if TYPE_CHECKING:
    from pathlib import Path

    from ._options import Target
    from ._record import Record
    from ._waiting import Clock

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


def start_record(target: Target) -> Record | None:
    """The daemon's start record, if there is one.

    Raises:
        DaemonError: It belongs to another user (who could point us at anything).
    """
    try:
        return _record.read(target.files.record)
    except UnsafeFileError as err:
        msg = f"Daemon '{target.name}': refusing its start record: {err}. Remove it."
        raise DaemonError(target.name, msg) from err


def leftovers(target: Target, clock: Clock) -> None:
    """Stop what an unfinished start left running (its controller was killed).

    The caller holds the exclusive lock and found no live daemon in the PID
    file: whatever still carries the recorded marker is left over. SIGTERM,
    ``start_abort_timeout``, SIGKILL, as for an aborted start.
    """
    record = start_record(target)
    if record is None:
        return
    left = _tracking.marked(record.marker)
    if left:
        target.config.logger.warning(
            "Daemon '%s': stopping PIDs %s, left running by a start that did not finish",
            target.name,
            ", ".join(str(proc.pid) for proc in left),
        )
        _process.terminate(left, Deadline(target.config.start_abort_timeout, clock))
    _record.clear(target.files.record)


def request(target: Target, pid: int | None, deadline: Deadline, *, group: bool) -> bool:
    """Ask the daemon to stop (stop command or signal); ``False`` if there is nothing to do."""
    cfg = target.config
    name = target.name
    if cfg.stop_command is not None:
        if pid is None and cfg.dont_stop_if_pid_file_invalid:
            cfg.logger.info("Daemon '%s' is not running; not running its stop command", name)
            return False
        cfg.logger.info("Stopping daemon '%s' with its stop command", name)
        result = _commands.run(cfg, cfg.stop_command, deadline.remaining())
        if result.returncode is not None and result.returncode != 0:
            status, signame = _commands.describe_exit(result.returncode)
            msg = f"Daemon '{name}' could not be stopped: the stop command failed."
            raise StopError(
                name, msg, output=result.output, exit_status=status, signal=signame, pid=pid
            )
        return True
    if pid is None:
        return False
    cfg.logger.info("Stopping daemon '%s' (PID %d)", name, pid)
    try:
        _platform.send_signal(pid, _platform.parse_signal(cfg.stop_signal), group=group)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        msg = (
            f"Daemon '{name}' could not be stopped: no permission to signal PID {pid} "
            "(it belongs to another user)."
        )
        raise StopError(name, msg, pid=pid) from err
    return True


def stop_locked(target: Target, clock: Clock) -> None:
    """Stop the daemon and what it started; wait until all of it has exited.

    The caller holds the exclusive lock.

    Raises:
        StopError: The stop command failed, we may not signal the daemon, or
            its PID file names a process not trusted to be it.
        StopTimeout: It (or something it started) did not exit within
            ``stop_timeout`` and was killed.
    """
    cfg = target.config
    pid_file = target.files.pid
    deadline = Deadline(cfg.stop_timeout, clock)
    record = start_record(target)
    pid = _pidfile.live(target)
    if pid is None:
        refused = _pidfile.refusal(pid_file)
        if refused is not None:
            raise StopError(target.name, f"Daemon '{target.name}' was not stopped: {refused}.")
        remove_stale(pid_file)
    # A program we run in the foreground leads a session of its own; when it is
    # a shell running a pipeline, its group is the daemon, not the PID. Only the
    # session we made for it is signalled as a whole (without a record, made
    # by an earlier version, a session of its own has to do).
    group = (
        cfg.foreground
        and pid is not None
        and _platform.leads_session(pid)
        and (record is None or record.names(pid))
    )
    # Listed before the stop, while they can still be told from the main process.
    tree = [] if record is None else _tracking.marked(record.marker)
    if request(target, pid, deadline, group=group):
        # Forgotten now, while the daemon shuts down, not after: the record
        # read above is all the rest of the stop needs.
        _record.clear(target.files.record)
        if pid is not None:
            gone = _process.wait_gone(pid, deadline, max_interval=cfg.ping_interval)
            if gone and group:
                gone = bool(
                    poll_until(
                        lambda: None if _platform.group_alive(pid) else True,
                        deadline=deadline,
                        max_interval=cfg.ping_interval,
                    )
                )
        else:
            gone = bool(
                poll_until(
                    lambda: True if _pidfile.live(target) is None else None,
                    deadline=deadline,
                    max_interval=cfg.ping_interval,
                ),
            )
        if not gone:
            force(target, pid, clock, group=group, record=record)
    killed = _stop_tree(target, record, tree, pid, deadline)
    if pid is not None:
        _pidfile.remove_if_names(pid_file, pid)
    elif record is not None:
        _record.clear(target.files.record)
    if killed:
        msg = (
            f"Daemon '{target.name}' exited, but processes it started did not exit within "
            f"{cfg.stop_timeout:g} s and were killed (PIDs {', '.join(map(str, killed))})."
        )
        raise StopTimeout(target.name, msg, timeout=cfg.stop_timeout, pid=pid)
    cfg.logger.info("Daemon '%s' stopped after %.3f s", target.name, deadline.elapsed())


def _stop_tree(
    target: Target,
    record: Record | None,
    tree: list[psutil.Process],
    pid: int | None,
    deadline: Deadline,
) -> list[int]:
    """Stop what the daemon started and still runs; the PIDs that had to be killed.

    Looked for again only if something besides the main process was there
    before the stop (a daemon without children costs no second scan of the
    process table while ``stop()`` returns).
    """
    if record is None or not any(proc.pid != pid for proc in tree):
        return []
    left = [proc for proc in _tracking.marked(record.marker) if proc.pid != pid]
    if not left:
        return []
    cfg = target.config
    cfg.logger.info(
        "Daemon '%s': stopping what it started: PIDs %s",
        target.name,
        ", ".join(str(proc.pid) for proc in left),
    )
    for proc in left:
        try:
            proc.send_signal(_platform.parse_signal(cfg.stop_signal))
        except psutil.Error:
            continue
    rest = [
        proc
        for proc in left
        if not _process.wait_gone(proc.pid, deadline, max_interval=cfg.ping_interval)
    ]
    _process.kill_all(rest, Deadline(_process.KILL_GRACE, deadline.clock))
    return sorted(proc.pid for proc in rest)


def force(
    target: Target,
    pid: int | None,
    clock: Clock,
    *,
    group: bool = False,
    record: Record | None = None,
) -> NoReturn:
    """SIGKILL the daemon (and what it started) after its stop timed out; raise StopTimeout."""
    cfg = target.config
    pid_file = target.files.pid
    victim = pid if pid is not None else _pidfile.live(target)
    cfg.logger.warning(
        "Daemon '%s' did not exit within %g s; killing PID %s",
        target.name,
        cfg.stop_timeout,
        victim,
    )
    if victim is not None:
        # Listed before the kill, while they are still its children: a killed
        # nginx master leaves its workers running (re-parented to PID 1), still
        # serving the requests that held up the stop.
        family = _process.descendants(victim)
        if record is not None:
            family += [p for p in _tracking.marked(record.marker) if p.pid != victim]
        try:
            _platform.force_kill(victim, group=group)
        except PermissionError as err:
            msg = (
                f"Daemon '{target.name}' did not exit within {cfg.stop_timeout:g} s, and "
                f"there is no permission to kill PID {victim} (it belongs to another user)."
            )
            raise StopError(target.name, msg, pid=victim) from err
        _process.wait_gone(victim, Deadline(_process.KILL_GRACE, clock), max_interval=0.05)
        _process.kill_all(family, Deadline(_process.KILL_GRACE, clock))
    _pidfile.remove(pid_file)
    _record.clear(target.files.record)
    msg = (
        f"Daemon '{target.name}' did not exit within {cfg.stop_timeout:g} s and was killed"
        f" (PID {victim})."
    )
    raise StopTimeout(target.name, msg, timeout=cfg.stop_timeout, pid=victim)


def remove_stale(pid_file: Path) -> None:
    """Remove the PID file if it names a process that is not (or no longer) ours."""
    if _pidfile.read_pid(pid_file) is not None:
        _pidfile.remove(pid_file)
