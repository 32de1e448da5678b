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
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from . import _actions, _aio, _cancel, _failures, _lock, _ownership, _pidfile
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


class Block(Protocol):
    """What :func:`wrap` enters: a context manager for ``with`` and ``async with``."""

    def __enter__(self) -> object: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def __aenter__(self) -> object: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def wrap(function: Callable[P, Any], blocks: Callable[[], Sequence[Block]]) -> Callable[P, Any]:
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
            self._settle_for_owner()
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

    def _settle_for_owner(self) -> None:
        """After a failed enter: settle in place of a block that left while this one waited.

        A block that waits (for the lock, for a start) is counted in, so a
        block leaving meanwhile does not stop the daemon it started. If this
        one now gives up (cancelled, interrupted) instead of entering, it
        settles as that block would have, whatever its own ``stop`` says: it
        never was inside. Runs to its end even in cancelled work, so a
        cancelled waiter in this rare spot (the owner left while somebody
        else held the daemon's lock) waits for that lock to stop the daemon.
        """
        if self.defer or _ownership.read_owner(self.target.files) is None:
            return  # no block started a daemon: nothing can be waiting to be stopped
        with _cancel.shielded():
            try:
                Running(self.daemon, self.target).settle()
            except Exception as err:  # noqa: BLE001 - the failure to enter is what is raised
                self.target.config.logger.warning(
                    "Daemon '%s': error while stopping after a failed enter: %s",
                    self.daemon.name,
                    err,
                )

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
        """Enter in a worker thread, so the event loop keeps running during a start.

        Cancelled while entering, the block stops waiting at once if it was
        waiting (for another block leaving, or for a start run by somebody
        else), and aborts the start if it was running one (see
        :meth:`Daemon.astart`); if it had just entered, it leaves again
        (stopping the daemon if it started it). Then the cancellation
        propagates.
        """
        return await _aio.call(
            self.__enter__,
            name=f"daemon_controller: entering {self.daemon.name!r}",
            undo=lambda _: self._leave_abandoned(),
        )

    def _leave_abandoned(self) -> None:
        # Nobody awaits this any more: an error can only be logged.
        try:
            self.__exit__(None, None, None)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            self.target.config.logger.warning(
                "Daemon '%s': error while leaving a cancelled block: %s", self.daemon.name, err
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave in a worker thread; a cancellation meanwhile waits until the block is left."""
        await _aio.call(
            lambda: self.__exit__(exc_type, exc, tb),
            name=f"daemon_controller: leaving {self.daemon.name!r}",
            cancellable=False,
        )

    def __repr__(self) -> str:
        return f"<Running daemon={self.daemon.name!r} stop={self.stop!r}>"
