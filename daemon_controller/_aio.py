"""Blocking work awaited from asyncio, in a worker thread that a cancellation reaches.

:func:`call` runs one piece of the library's blocking work (a start, a lock
wait, a stop) in a thread of its own, so the event loop keeps running, and
turns the awaiting task's cancellation into the work's token (``_cancel``):

* The task always waits for its thread to end before it goes on, also when
  cancelled (however often): what the thread holds or has spawned is settled
  by then, and nothing runs on behind the caller's back. That wait is short,
  because the thread's waits watch the token: a lock wait stops at once, a
  start is aborted (SIGTERM, then SIGKILL after ``start_abort_timeout``).
  Work that must not be cut short (a stop, leaving a block) runs with
  ``cancellable=False`` and simply finishes first.
* If the work had already finished when the cancellation arrived, ``undo``
  takes its effect back (stops the daemon a cancelled ``astart()`` started,
  leaves the block a cancelled ``async with`` entered), then the
  cancellation propagates.

Each call gets a fresh daemon thread, not the loop's default executor: calls
wait for each other (a block entering waits for the block leaving), and a
bounded pool could fill with waiters while the call they wait for queues
behind them. ``asyncio`` is imported when first needed (25 ms of import time
that synchronous users do not pay).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from . import _cancel

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

T = TypeVar("T")


async def call(
    work: Callable[[], T],
    *,
    name: str,
    undo: Callable[[T], object] | None = None,
    cancellable: bool = True,
) -> T:
    """Await ``work()`` run in a worker thread; a cancellation cancels the work.

    Args:
        work: The blocking work. It sees the token through ``_cancel.current()``.
        name: The worker thread's name (for debuggers and thread dumps).
        undo: Called with the result, in a worker thread that cannot be
            cancelled, if the task was cancelled but the work had finished
            anyway; it should not raise (nobody is left to see its error).
        cancellable: ``False``: the work runs to its end, and only then does
            the cancellation propagate.

    Returns:
        What ``work()`` returned.

    Raises:
        asyncio.CancelledError: The task was cancelled; the work has ended.
        Exception: Whatever ``work()`` raised.
    """
    import asyncio  # noqa: PLC0415 - 25 ms of import time, only for async users

    token = _cancel.Token() if cancellable else None
    done = _start(work, token, name)
    try:
        await asyncio.wait((done,))
    except asyncio.CancelledError:
        if token is not None:
            token.cancel()
        await _outlast(done)
        if done.exception() is None and undo is not None:
            result = done.result()
            undone = _start(lambda: undo(result), None, f"{name} (undo)")
            await _outlast(undone)
            undone.exception()  # retrieved: undo reports its own errors
        raise
    return done.result()


def _start(work: Callable[[], T], token: _cancel.Token | None, name: str) -> asyncio.Future[T]:
    """Run ``work`` in a new daemon thread under ``token``; its outcome arrives in a future."""
    import asyncio  # noqa: PLC0415 - see call()

    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:  # noqa: ANN401 - a result or an exception
        if done.done():  # pragma: no cover - nothing else completes it
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def body() -> None:
        try:
            with _cancel.watching(token):
                outcome: tuple[bool, Any] = (True, work())
        except BaseException as err:  # noqa: BLE001 - delivered to the awaiting task
            outcome = (False, err)
        finally:
            if token is not None:
                token.close()
        # A loop closed meanwhile has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=context.run, args=(body,), name=name, daemon=True).start()
    return done


async def _outlast(done: asyncio.Future[Any]) -> None:
    """Wait until ``done`` is done, however often the task is cancelled meanwhile."""
    import asyncio  # noqa: PLC0415 - see call()

    while not done.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((done,))
