"""``with daemon.running():`` — a daemon for the duration of a block, shared safely.

Entering a block makes sure the daemon runs, starting it if needed (race-free:
several threads or processes entering at once start it exactly once). Leaving
it stops the daemon only if a ``running()`` block started it and no other
block, in any thread or process on this machine, is still inside (the
protocol is in ``_ownership``).

:func:`wrap` is the one decorator wrapper for plain and ``async def``
functions, used by ``running()`` as a decorator and by ``@requires``: for a
coroutine function the blocks are entered when the coroutine *runs*, not when
it is created.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from . import _actions, _failures, _lock, _ownership, _pidfile
from ._errors import hide_frames

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence
    from types import TracebackType

    from ._daemon import Daemon
    from ._options import StartTarget

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

P = ParamSpec("P")
R = TypeVar("R")


def wrap(function: Callable[P, Any], blocks: Callable[[], Sequence[Running]]) -> Callable[P, Any]:
    """``function`` run inside fresh ``blocks()`` on each call (entered in order, left reversed).

    A coroutine function gets a coroutine function whose blocks are entered
    with ``async with`` while the coroutine runs.
    """
    import inspect  # noqa: PLC0415 - 20 ms of import time; only decorating needs it

    if inspect.iscoroutinefunction(function):
        coroutine_function = cast("Callable[P, Awaitable[Any]]", function)

        @functools.wraps(function)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:  # noqa: ANN401 - the wrapped function's result
            async with contextlib.AsyncExitStack() as stack:
                for block in blocks():
                    await stack.enter_async_context(block)
                return await coroutine_function(*args, **kwargs)

        return async_wrapper

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:  # noqa: ANN401 - the wrapped function's result
        with contextlib.ExitStack() as stack:
            for block in blocks():
                stack.enter_context(block)
            return function(*args, **kwargs)

    return wrapper


class _Handoff:
    """Who leaves an ``async with`` block whose entering task was cancelled.

    The worker thread that enters and the cancelled task decide under one lock,
    so exactly one of them leaves the block: the thread, if it finishes entering
    after the cancellation; the task, if the thread had finished before.
    """

    __slots__ = ("_abandoned", "_entered", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entered = False
        self._abandoned = False

    def entered(self) -> bool:
        """Called by the thread once inside: ``False`` if the task gave up meanwhile."""
        with self._lock:
            self._entered = not self._abandoned
            return self._entered

    def abandon(self) -> bool:
        """Called by the cancelled task: ``True`` if the thread was already inside."""
        with self._lock:
            self._abandoned = True
            return self._entered


class Running:
    """The context manager returned by :meth:`Daemon.running`.

    Usable as ``with``, ``async with`` and as a decorator of plain and
    ``async def`` functions (each call of the decorated function is one block).
    It yields the :class:`Daemon`.
    """

    def __init__(self, daemon: Daemon, target: StartTarget, stop: bool | None = None) -> None:
        if stop not in (None, True, False):
            msg = f"Daemon '{daemon.name}': running(stop=...) takes None, True or False"
            raise TypeError(msg)
        self.daemon = daemon
        self.target = target
        self.stop = stop
        #: Leave without deciding whether to stop; for the pytest plugin, which
        #: settles session daemons when the last xdist worker finishes.
        self.defer = False
        self._held: list[_lock.Held] = []
        self._guard = threading.Lock()

    def _fresh(self) -> Running:
        fresh = Running(self.daemon, self.target, self.stop)
        fresh.defer = self.defer
        return fresh

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, function: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``function``: each call runs in a block of its own."""
        return wrap(function, lambda: (self._fresh(),))

    # -- sync -----------------------------------------------------------------------

    def __enter__(self) -> Daemon:
        since = _failures.now()
        # Blocks while the last block out holds it exclusively to stop the daemon.
        held = _ownership.lease(self.target)
        try:
            self._enter_locked(since)
        except BaseException:
            held.release()
            raise
        with self._guard:
            self._held.append(held)
        return self.daemon

    def _enter_locked(self, since: int) -> None:
        target = self.target
        with _lock.locked(target.files.lock, target.name, shared=False):
            if _actions.ensure_running_locked(target, since):
                pid = _pidfile.read_pid(target.files.pid)
                if pid is not None:
                    _ownership.write_owner(target.files, pid)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._guard:
            held = self._held.pop()
        try:
            self._leave(held)
        except Exception as err:
            if exc is None:
                raise
            # The block's own exception matters more; keep the stop error visible.
            exc.add_note(f"while leaving daemon '{self.daemon.name}': {type(err).__name__}: {err}")
            self.target.config.logger.warning(
                "Daemon '%s': error while stopping after a failed block: %s", self.daemon.name, err
            )

    def _leave(self, held: _lock.Held) -> None:
        held.release()
        if self.defer:
            return  # the pytest plugin settles it later (see settle())
        if self.stop is True:
            _actions.stop(self.target)
            _ownership.clear_owner(self.target.files)
            return
        self.settle()

    def settle(self) -> bool:
        """If no block is inside, stop the daemon when a block started it (or ``stop=True``).

        Returns:
            ``True`` if nobody was inside (the decision was ours), else ``False``.
        """
        target = self.target
        last = _ownership.last_out(target)
        if last is None:
            return False  # somebody else is inside; the last one out decides
        try:
            if self.stop is True:
                _actions.stop(target)
            elif self.stop is None:
                owner = _ownership.read_owner(target.files)
                if owner is not None and owner == _actions.read_pid(target):
                    _actions.stop(target)
            _ownership.clear_owner(target.files)
        finally:
            last.release()
        return True

    # -- async ----------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        # Lock waits, spawning and polling all block; they run in a worker thread
        # so the event loop keeps serving other tasks during a start.
        import asyncio  # noqa: PLC0415 - 25 ms of import time, only for async users

        handoff = _Handoff()

        def leave_abandoned() -> None:
            # Nobody awaits this any more: an error can only be logged.
            try:
                self.__exit__(None, None, None)
            except Exception as err:  # noqa: BLE001 - reported, not raised
                self.target.config.logger.warning(
                    "Daemon '%s': error while leaving a cancelled block: %s", self.daemon.name, err
                )

        def enter() -> Daemon:
            self.__enter__()
            if not handoff.entered():
                # The awaiting task was cancelled meanwhile: nobody will leave
                # this block, so leave it here, in this thread.
                leave_abandoned()
            return self.daemon

        task = asyncio.ensure_future(asyncio.to_thread(enter))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The start goes on in its thread. If it has already entered, leave
            # from another thread; if not, it leaves by itself once entered.
            # Either way that work no longer depends on this task: a second
            # cancellation only stops the waiting for it here.
            leaving = (
                asyncio.ensure_future(asyncio.to_thread(leave_abandoned))
                if handoff.abandon()
                else task
            )
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(leaving)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio  # noqa: PLC0415 - see __aenter__

        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Running daemon={self.daemon.name!r} stop={self.stop!r}>"
