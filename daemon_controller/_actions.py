"""The actions: start, stop, restart, connect, read_pid; and the lock choreography.

Each action takes a :class:`~daemon_controller._options.Target` (what it needs
of a daemon, proven present) and keeps its runtime state in local objects, so
one ``Daemon`` can be used from many threads.

Locking follows the Ruby gem: start, stop and restart hold the lock file
exclusively throughout; read_pid (and so is_running) and the first connect
attempt hold it shared, so they see a daemon either before a start or after
it, never half-way.

Run with a cancellation token (``_cancel``; the awaitable actions do), an
action stops waiting for the lock when the token is cancelled, and a start it
runs is aborted; a stop, once under way, finishes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from . import (
    _attempts,
    _cancel,
    _commands,
    _failures,
    _lock,
    _options,
    _ownership,
    _pidfile,
    _ports,
    _stop,
    _templates,
)
from ._errors import AlreadyStarted, ConnectError, StartError, StartTimeout, hide_frames
from ._probes import PingUnusable, has_address, holder, is_connect_error
from ._start import Start
from ._waiting import SYSTEM_CLOCK, Deadline, poll_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._options import Command, StartTarget, Target
    from ._probes import Probe

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

T = TypeVar("T")
T_Target = TypeVar("T_Target", bound="Target")

#: How often connect() tries the lock without queueing before it queues.
_CONNECT_ROUNDS = 20


# -- start ---------------------------------------------------------------------------------


def _start_command(target: StartTarget) -> Command:
    command = target.command
    if callable(command):
        return _options.command(target.name, "the start command function's result", command())
    return command


def _refuse_stranger(target: StartTarget) -> None:
    """Fail if something already answers the ping although our daemon is not running.

    Otherwise the new daemon would fail to bind (or worse, start() would report
    success because the stranger answers) and the caller would talk to
    whatever holds the port. Only an address can be checked this way: a
    function or a command as ping may answer for reasons of its own (the
    gem's semantics: spawn, wait for the PID file, then ping).
    """
    probe = target.probe
    if probe is None or not has_address(probe) or not probe.check(0.5):
        return
    who = holder(probe)
    where = f" by {who}" if who else ""
    msg = (
        f"Daemon '{target.name}' cannot be started: {probe.describe()} is already answered"
        f"{where}, which is not the process in its PID file "
        f"{str(target.files.pid)!r}. Stop that process or use another address."
    )
    raise StartError(target.name, msg, reason="address in use", ran=False)


def _start_attempt(target: StartTarget) -> None:
    """One attempt, as ``_attempts`` hands it over: port chosen, placeholders filled in."""
    _refuse_stranger(target)
    if target.before_start is not None:
        target.before_start(target.config)
    _cancel.check()  # nothing spawned yet: nothing to abort
    Start(target, _start_command(target), SYSTEM_CLOCK).run()


def start_locked(target: StartTarget, *, restart: bool = False) -> None:
    """Start the daemon; the caller holds the exclusive lock (``restart``: after a stop)."""
    pid_file = target.files.pid
    running = _pidfile.live(target)
    if running is not None:
        raise AlreadyStarted(target.name, running)
    refused = _pidfile.refusal(pid_file)
    if refused is not None:
        msg = (
            f"Daemon '{target.name}' cannot be started: {refused}. If the daemon is not "
            "running, remove the PID file."
        )
        raise StartError(target.name, msg, ran=False)
    _stop.leftovers(target, SYSTEM_CLOCK)  # of a start whose controller was killed
    _pidfile.remove(pid_file)  # leftover from a crash, or stale
    _attempts.start(target, _start_attempt, restart=restart)


def start(target: StartTarget) -> None:
    """See :meth:`Daemon.start`."""
    with _lock.locked(target.files.lock, target.name, shared=False):
        start_locked(target)


def ensure_running_locked(target: StartTarget, since: int) -> bool:
    """Start the daemon unless it runs; share a failure with those who waited for it.

    The caller holds the exclusive lock.

    Args:
        target: The daemon.
        since: When the caller began waiting (``_failures.now()``): a start
            attempt that failed after that moment is the one the caller was
            waiting for, so its error is raised again instead of spawning anew.

    Returns:
        ``True`` if this call started the daemon, ``False`` if it was running.
    """
    files = target.files
    if _pidfile.live(target) is not None:
        return False
    shared = _failures.recorded_since(files, since, target.name)
    if shared is not None:
        target.config.logger.info(
            "Daemon '%s': the start this call waited for failed; not retrying", target.name
        )
        raise shared
    try:
        start_locked(target)
    except StartError as err:
        _failures.write(files, err)
        raise
    except _cancel.Cancelled as cancelled:
        # Those queued for this start learn that it was aborted, as they would
        # learn of a failure, instead of spawning the daemon again each.
        if cancelled.error is not None:
            _failures.write(files, cancelled.error)
        raise
    _failures.clear(files)
    return True


def ensure_running(target: StartTarget, since: int) -> bool:
    """:func:`ensure_running_locked` under the exclusive lock."""
    with _lock.locked(target.files.lock, target.name, shared=False):
        return ensure_running_locked(target, since)


# -- stop and restart -------------------------------------------------------------------------


def recorded_port(target: Target) -> int | None:
    """The port the daemon was started with (recorded then), or its fixed one."""
    port = target.config.port
    if port is None:
        return None
    recorded = _ports.read(target.files.port)
    return recorded if recorded is not None or port == "auto" else port


def started(target: T_Target) -> T_Target:
    """``target`` with ``{port}`` filled in as its running daemon was started.

    With no port known (the daemon never started), a stop command using
    ``{port}`` cannot be run: the daemon's PID is signalled instead.
    """
    bound = _templates.bind_port(target, recorded_port(target))
    stop_command = bound.config.stop_command
    if stop_command is not None and _options.PORT in _options.command_text(stop_command):
        bound.config.logger.info(
            "Daemon '%s': no recorded port for its stop command; signalling it", target.name
        )
        bound = replace(bound, config=replace(bound.config, stop_command=None))
    return bound


def _with_recorded_port(
    target: Target, command: Command, probe: Probe
) -> tuple[Target, Command, Probe]:
    """A restart command and its ping with ``{port}`` filled in, as the daemon runs."""
    port = recorded_port(target)
    if port is None:
        return target, command, probe
    values = {_options.PORT: str(port)}
    filled = _templates.fill_probe(probe, values) or probe
    return started(target), _templates.fill_command(command, values), filled


def stop(target: Target) -> None:
    """See :meth:`Daemon.stop`."""
    with _lock.locked(target.files.lock, target.name, shared=False):
        _stop.stop_locked(started(target), SYSTEM_CLOCK)


def restart(target: StartTarget) -> None:
    """See :meth:`Daemon.restart` without a restart command: stop, then start, atomically."""
    with _lock.locked(target.files.lock, target.name, shared=False):
        before = _pidfile.read_pid(target.files.pid)
        _stop.stop_locked(started(target), SYSTEM_CLOCK)
        start_locked(target, restart=True)
        _ownership.owner_follows(target, before)


def restart_with(target: Target, command: Command, probe: Probe) -> None:
    """See :meth:`Daemon.restart` with a restart command: run it, wait until it answers."""
    cfg = target.config
    pid_file = target.files.pid
    with _lock.locked(target.files.lock, target.name, shared=False):
        target, command, probe = _with_recorded_port(target, command, probe)
        cfg = target.config
        before = _pidfile.read_pid(pid_file)
        deadline = Deadline(cfg.start_timeout, SYSTEM_CLOCK)
        cfg.logger.info("Restarting daemon '%s' with its restart command", target.name)
        result = _commands.run(cfg, command, deadline.remaining())
        if result.returncode != 0:
            status, signame = (
                (None, None)
                if result.returncode is None
                else _commands.describe_exit(result.returncode)
            )
            msg = f"Daemon '{target.name}' could not be restarted: the restart command failed."
            raise StartError(
                target.name, msg, output=result.output, exit_status=status, signal=signame
            )

        token = _cancel.current()

        def ready() -> bool | None:
            _cancel.check()
            if _pidfile.live(target) is None:
                return None
            try:
                return True if probe.check(0.5) else None
            except PingUnusable as err:
                msg = f"Daemon '{target.name}' did not restart: its ping can never answer"
                raise StartError(target.name, f"{msg}: {err.detail}", ran=False) from err

        sleep = token.sleep if token is not None else None
        if not poll_until(ready, deadline=deadline, max_interval=cfg.ping_interval, sleep=sleep):
            msg = (
                f"Daemon '{target.name}' did not answer {probe.describe()} within "
                f"{cfg.start_timeout:g} s after its restart command."
            )
            raise StartTimeout(target.name, msg, timeout=cfg.start_timeout, output=result.output)
        _ownership.owner_follows(target, before)


# -- queries ---------------------------------------------------------------------------------


def read_pid(target: Target) -> int | None:
    """See :meth:`Daemon.read_pid`; also the body of ``is_running()``.

    The hot path: a cached lock file's ``fstat`` and two ``flock`` calls, the
    PID file's ``stat`` and one ``poll``.
    """
    files = target.files
    pid_file = files.pid
    with _lock.locked(files.lock, target.name, shared=True, create=False):
        pid = _pidfile.live_pid(pid_file, files.record, target.config.user)
        if pid is None and _pidfile.refusal(pid_file) is None:
            _stop.remove_stale(pid_file)
    return pid


def read_pid_and_port(target: Target) -> tuple[int | None, int | None]:
    """The running daemon's PID and port (see :meth:`Daemon.read_port`), seen at once."""
    with _lock.locked(target.files.lock, target.name, shared=True, create=False):
        pid = _pidfile.live_pid(target.files.pid)
        return pid, None if pid is None else recorded_port(target)


def read_port(target: Target) -> int | None:
    """See :meth:`Daemon.read_port`."""
    return read_pid_and_port(target)[1]


# -- connect ---------------------------------------------------------------------------------


def _attempt(function: Callable[[], T | None]) -> tuple[T | None, OSError | None]:
    try:
        return function(), None
    except OSError as err:
        if is_connect_error(err):
            return None, err
        raise


def _start_and_connect(
    target: StartTarget, function: Callable[[], T | None], since: int
) -> tuple[T | None, OSError | None]:
    """The daemon did not answer: start it (or wait for whoever is starting it), then connect.

    Nobody busy with the lock: take it exclusively and start the daemon if it
    is not running; the caller that starts it connects under the exclusive
    lock, as in the gem, so no stop() slips in between.

    The lock busy (most likely somebody starting the daemon): wait for it in
    *shared* mode and connect alongside the other waiters. Sixteen callers of
    a starting daemon then connect at the same moment instead of taking the
    exclusive lock one after another (an exclusive waiter must also wait for
    every reader, so it would come last). If the daemon is still not running
    and nobody's start failed meanwhile, try the exclusive lock again; after a
    few rounds, queue for it.
    """
    name, files = target.name, target.files
    for _ in range(_CONNECT_ROUNDS):
        exclusive = _lock.locked(files.lock, name, shared=False)
        if exclusive.enter(blocking=False):
            try:
                if ensure_running_locked(target, since):
                    return _attempt(function)
            finally:
                exclusive.__exit__()
        with _lock.locked(files.lock, name, shared=True):
            if _pidfile.live(target) is not None:
                result, error = _attempt(function)
                if result is not None:
                    return result, error
                break  # running, yet no answer: one last try under the exclusive lock
            shared = _failures.recorded_since(files, since, name)
            if shared is not None:
                raise shared
    # A stop() slipped in, or the lock stayed busy: queue for it this time.
    with _lock.locked(files.lock, name, shared=False):
        ensure_running_locked(target, since)
        return _attempt(function)


def connect(target: StartTarget, function: Callable[[], T | None]) -> T:
    """See :meth:`Daemon.connect`."""
    # Taken before the first attempt: a caller queued behind a start in progress
    # (even for the shared lock) is waiting for that start, and shares its failure.
    since = _failures.now()
    with _lock.locked(target.files.lock, target.name, shared=True):
        try:  # _attempt(), inlined: this is the hot path of every connect()
            result = function()
        except OSError as err:
            if not is_connect_error(err):
                raise
            result = None
    if result is not None:
        return result
    result, error = _start_and_connect(target, function, since)
    if result is not None:
        return result
    detail = f": {error} ({type(error).__name__})" if error is not None else ""
    msg = f"Daemon '{target.name}' is running but cannot be connected to{detail}"
    raise ConnectError(target.name, msg) from error
