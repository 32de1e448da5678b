"""One action per item, all at once, each in a thread, cancellable together.

The machinery under ``all_running()`` and ``start_all()`` (see ``_together``):
each thread's work carries its own cancellation token (``_cancel``), a child
of the caller's, so one failure can cut the others short, and so can the
caller's own cancellation. The calling thread waits for every thread, even
when Ctrl-C interrupts it: what the threads hold or spawned is settled by the
time it returns.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from . import _cancel

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

R = TypeVar("R")
T = TypeVar("T")


def each(
    items: Sequence[T],
    action: Callable[[T], R],
    *,
    fail_fast: bool = True,
    report: Callable[[int, R | BaseException], object] | None = None,
) -> tuple[list[R | BaseException], BaseException | None]:
    """Run ``action(item)`` for all items at once, each in a thread; wait for every one.

    Each thread's work carries a cancellation token of its own, a child of the
    caller's (``_cancel.current()``): cancelling the caller cancels them all.
    A single item runs in the calling thread, under the caller's token.

    Args:
        items: What to act on.
        action: Run once per item; what it returns or raises is its result.
        fail_fast: When an action raises, cancel the others (they end with
            ``Cancelled``; a start is aborted, a lock wait given up).
        report: Called in this thread with each item's index and result as
            it comes in; if it raises, the actions are cancelled and its
            exception is returned as the interrupt.

    Returns:
        Per item, what its action returned or raised; and the exception that
        interrupted this thread's wait (``KeyboardInterrupt``), if one did:
        the actions were then cancelled, and all of them have ended.
    """
    if len(items) == 1:
        value: R | BaseException
        try:
            value = action(items[0])
        except _cancel.Cancelled as err:
            value = err
        except Exception as err:  # noqa: BLE001 - a result, as in a thread
            value = err
        return [value], _tell(report, 0, value, [])
    tokens = [_cancel.Token(_cancel.current()) for _ in items]
    outcomes = _spawn(items, action, tokens)
    results: list[Any] = [None] * len(items)
    interrupt: BaseException | None = None
    for _ in items:
        index, value, interrupted = _next(outcomes, tokens)
        interrupt = interrupt or interrupted
        results[index] = value
        if fail_fast and isinstance(value, BaseException):
            for token in tokens:
                token.cancel()
        interrupt = interrupt or _tell(report, index, value, tokens)
    return results, interrupt


def _tell(
    report: Callable[[int, R], object] | None, index: int, value: R, tokens: list[_cancel.Token]
) -> BaseException | None:
    """Report one result; what the report raised cancels the actions and is returned."""
    if report is None:
        return None
    try:
        report(index, value)
    except BaseException as err:  # noqa: BLE001 - like Ctrl-C: cancel, wait, re-raise
        for token in tokens:
            token.cancel()
        return err
    return None


def _spawn(
    items: Sequence[T], action: Callable[[T], R], tokens: list[_cancel.Token]
) -> queue.SimpleQueue[tuple[int, R | BaseException]]:
    """Start one thread per item; each puts ``(index, result)`` in the queue returned."""
    outcomes: queue.SimpleQueue[tuple[int, R | BaseException]] = queue.SimpleQueue()

    def run(index: int) -> None:
        token = tokens[index]
        value: R | BaseException
        try:
            with _cancel.watching(token):
                value = action(items[index])
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            value = err
        finally:
            token.close()
        outcomes.put((index, value))

    for index in range(len(items)):
        context = contextvars.copy_context()
        name = f"daemon_controller: together #{index}"
        threading.Thread(target=context.run, args=(run, index), name=name, daemon=True).start()
    return outcomes


def _next(
    outcomes: queue.SimpleQueue[tuple[int, R]], tokens: list[_cancel.Token]
) -> tuple[int, R, BaseException | None]:
    """The next result; Ctrl-C meanwhile cancels every action and is returned, not raised."""
    interrupt: BaseException | None = None
    while True:
        try:
            index, value = outcomes.get()
        except BaseException as err:  # noqa: BLE001 - cancel, wait for the rest, re-raise later
            interrupt = interrupt or err
            for token in tokens:
                token.cancel()
        else:
            return index, value, interrupt
