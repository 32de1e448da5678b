"""Stopping a daemon: ask (stop command or signal), wait for it to exit, force if it won't.

Everything here runs under the daemon's exclusive lock (see ``_actions``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from . import _commands, _pidfile, _platform, _process
from ._errors import StopError, StopTimeout, hide_frames
from ._waiting import Deadline, poll_until

if TYPE_CHECKING:
    from pathlib import Path

    from ._options import Target
    from ._waiting import Clock

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


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
    """Stop the daemon and wait until it has exited (the caller holds the exclusive lock).

    Raises:
        StopError: The stop command failed, or we may not signal the daemon.
        StopTimeout: It did not exit within ``stop_timeout`` and was killed.
    """
    cfg = target.config
    pid_file = target.files.pid
    deadline = Deadline(cfg.stop_timeout, clock)
    pid = _pidfile.live_pid(pid_file)
    if pid is None:
        remove_stale(pid_file)
    # A program we run in the foreground leads a process group of its own; when
    # it is a shell running a pipeline, the group is the daemon, not the PID.
    group = cfg.foreground and pid is not None and _platform.leads_group(pid)
    if not request(target, pid, deadline, group=group):
        return
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
                lambda: True if _pidfile.live_pid(pid_file) is None else None,
                deadline=deadline,
                max_interval=cfg.ping_interval,
            ),
        )
    if not gone:
        force(target, pid, clock, group=group)
    if pid is not None:
        _pidfile.remove_if_names(pid_file, pid)
    cfg.logger.info("Daemon '%s' stopped after %.3f s", target.name, deadline.elapsed())


def force(target: Target, pid: int | None, clock: Clock, *, group: bool = False) -> NoReturn:
    """SIGKILL the daemon (and what it started) after its stop timed out; raise StopTimeout."""
    cfg = target.config
    pid_file = target.files.pid
    victim = pid if pid is not None else _pidfile.live_pid(pid_file)
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
    msg = (
        f"Daemon '{target.name}' did not exit within {cfg.stop_timeout:g} s and was killed"
        f" (PID {victim})."
    )
    raise StopTimeout(target.name, msg, timeout=cfg.stop_timeout, pid=victim)


def remove_stale(pid_file: Path) -> None:
    """Remove the PID file if it names a process that is not (or no longer) ours."""
    if _pidfile.read_pid(pid_file) is not None:
        _pidfile.remove(pid_file)
