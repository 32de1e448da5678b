"""The awaitable actions of a ``Daemon``: ``astart()``, ``astop()``, ``aconnect()`` ...

Each is its synchronous namesake run in a worker thread (``_aio``), so lock
waits, process waits and pings never block the event loop, with asyncio's
cancellation carried into the work:

* Waiting for the lock (somebody else is starting or stopping the daemon):
  a cancelled call stops waiting at once and has done nothing.
* Running a start: the start is aborted as a failed one is (SIGTERM to
  everything it spawned, SIGKILL after ``start_abort_timeout``, the lock
  released, and whoever waited for that start gets a ``StartError`` saying it
  was cancelled), then ``CancelledError`` propagates. The call that runs the
  start is its *starter*; every other call, task, thread or process waiting for
  the lock meanwhile is a *waiter*, and a waiter's cancellation only ends its
  own wait.
* Running a stop: the stop finishes (it is bounded by ``stop_timeout``), then
  the cancellation propagates.

They live in this mixin, which ``Daemon`` inherits, to keep the builder's
module about describing a daemon.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import _actions, _aio, _failures, _lock, _options, _pidfile
from ._errors import ConnectError
from ._probes import is_connect_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._options import DaemonConfig, StartTarget, Target

T = TypeVar("T")

#: How often an async connect function may find the daemon stopped again
#: (by somebody else) right after making sure it runs, before giving up.
_ROUNDS = 3


class AsyncActions:
    """The awaitable actions, for ``Daemon`` to inherit (see the module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by Daemon
        name: str
        config: DaemonConfig

        def _target(self) -> Target: ...
        def _start_target(self) -> StartTarget: ...

    def _thread(self, action: str) -> str:
        return f"daemon_controller: {action} {self.name!r}"

    async def astart(self) -> None:
        """:meth:`start`, awaitable: returns once the daemon answers pings.

        Cancelled while it waits for the lock, it has done nothing. Cancelled
        during the start, it aborts the start as a failed start is aborted
        (SIGTERM to everything it spawned, SIGKILL after
        ``start_abort_timeout``; the lock released; callers waiting for this
        start get a ``StartError`` saying it was cancelled), and only then does
        ``CancelledError`` propagate. Cancelled just after the daemon became
        ready, it stops the daemon again. So a cancelled ``astart()`` never
        leaves a daemon running.

        Raises:
            As :meth:`start`.
        """
        target = self._start_target()
        await _aio.call(
            lambda: _actions.start(target),
            name=self._thread("astart"),
            undo=lambda _: _stop_quietly(target),
        )

    async def astop(self) -> None:
        """:meth:`stop`, awaitable: returns once the daemon's process has exited.

        Cancelled while it waits for the lock, it has done nothing; once the
        stop is under way, the stop finishes (within ``stop_timeout``, then
        SIGKILL) before ``CancelledError`` propagates.

        Raises:
            As :meth:`stop`.
        """
        target = self._target()
        await _aio.call(lambda: _actions.stop(target), name=self._thread("astop"))

    async def arestart(self) -> None:
        """:meth:`restart`, awaitable.

        Cancelled while it waits for the lock, it has done nothing. Cancelled
        later, the stop finishes and the start is aborted as in
        :meth:`astart`, so the daemon is left stopped; a restart command runs
        to its end, but the wait for the daemon to answer stops.

        Raises:
            As :meth:`restart`.
        """
        command = self.config.restart_command
        work: Callable[[], None]
        if command is None:
            start_target = self._start_target()
            work = lambda: _actions.restart(start_target)  # noqa: E731 - one of two bodies
        else:
            target, probe = self._target(), _options.ping_of(self.name, self.config)
            work = lambda: _actions.restart_with(target, command, probe)  # noqa: E731 - ditto
        await _aio.call(work, name=self._thread("arestart"))

    async def ais_running(self) -> bool:
        """:meth:`is_running`, awaitable (it waits while a start or stop holds the lock)."""
        return await self.aread_pid() is not None

    async def aread_pid(self) -> int | None:
        """:meth:`read_pid`, awaitable (it waits while a start or stop holds the lock)."""
        target = self._target()
        return await _aio.call(lambda: _actions.read_pid(target), name=self._thread("aread_pid"))

    @overload
    async def aconnect(self, function: Callable[[], Awaitable[T | None]]) -> T: ...

    @overload
    async def aconnect(self, function: Callable[[], T | None]) -> T: ...

    async def aconnect(self, function: Callable[[], Any]) -> Any:
        """:meth:`connect`, awaitable: connect, starting the daemon first if needed.

        ``function`` may be an ``async def`` function (awaited on the event
        loop) or a plain one (run in a worker thread); a plain function that
        returns an awaitable (``lambda: asyncio.open_connection(...)``) is
        refused: write it as ``async def``. Either way, returning ``None`` or
        raising a connect error (refused, reset, timed out, no such socket
        file...) means "cannot connect".

        A plain function gets exactly :meth:`connect`'s behaviour. A coroutine
        function is awaited under the daemon's shared lock, so it never meets a
        daemon half-way through a start or stop; if it cannot connect, the
        daemon is started unless it runs (once, however many callers), and the
        function awaited again. It must not start or stop this daemon itself.

        Cancelled while a start runs, the start is aborted (see
        :meth:`astart`); cancelled after a plain function connected, the
        result's ``close()`` is called, if it has one.

        Returns:
            What ``function`` returned (awaited).

        Raises:
            ConnectError: Still no connection after making sure the daemon runs.
            StartError: The daemon had to be started and failed.
            TypeError: A plain function returned an awaitable.
        """
        target = self._start_target()
        if _is_coroutine_function(function):
            return await _connect_async(target, function)

        def connect() -> object:
            return _actions.connect(target, lambda: _no_awaitable(target.name, function()))

        return await _aio.call(connect, name=self._thread("aconnect"), undo=_close_quietly)


def _stop_quietly(target: Target) -> None:
    """Stop a daemon a cancelled call started; nobody is left to see an error but the log."""
    try:
        _actions.stop(target)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        target.config.logger.warning(
            "Daemon '%s': error while stopping it after a cancelled start: %s", target.name, err
        )


def _close_quietly(result: object) -> None:
    close = getattr(result, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


def _is_coroutine_function(function: object) -> bool:
    import inspect  # noqa: PLC0415 - 20 ms of import time, only for aconnect()

    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )


def _no_awaitable(name: str, result: T) -> T:
    import inspect  # noqa: PLC0415 - see _is_coroutine_function

    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: no warning about it
        msg = (
            f"Daemon '{name}': the function given to aconnect() returned an awaitable; "
            "make it an 'async def' function so that it is awaited"
        )
        raise TypeError(msg)
    return result


async def _attempt(function: Callable[[], Awaitable[T | None]]) -> tuple[T | None, OSError | None]:
    try:
        return await function(), None
    except OSError as err:
        if is_connect_error(err):
            return None, err
        raise


async def _attempt_locked(
    target: StartTarget, function: Callable[[], Awaitable[T | None]]
) -> tuple[T | None, OSError | None, bool]:
    """One attempt under the shared lock: its result, its connect error, whether the daemon ran."""
    files = target.files
    held = await _aio.call(
        lambda: cast("_lock.Held", _lock.acquire(files.lock, target.name, shared=True)),
        name=f"daemon_controller: aconnect {target.name!r}",
        undo=lambda held: held.release(),
    )
    try:
        running = _pidfile.live_pid(files.pid) is not None
        result, error = await _attempt(function)
    finally:
        held.release()
    return result, error, running


async def _connect_async(target: StartTarget, function: Callable[[], Awaitable[T | None]]) -> T:
    """See :meth:`AsyncActions.aconnect` for a coroutine function."""
    since = _failures.now()  # a start already under way is the one this call waits for
    result, error, _ = await _attempt_locked(target, function)
    for _ in range(_ROUNDS):
        if result is not None:
            return result
        await _aio.call(
            lambda: _actions.ensure_running(target, since),
            name=f"daemon_controller: aconnect {target.name!r}",
        )
        result, error, running = await _attempt_locked(target, function)
        if running:
            break  # it runs, and that was the attempt that counts
    if result is not None:
        return result
    detail = f": {error} ({type(error).__name__})" if error is not None else ""
    msg = f"Daemon '{target.name}' is running but cannot be connected to{detail}"
    raise ConnectError(target.name, msg) from error
