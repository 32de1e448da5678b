"""Keeping Ctrl-C out of a step that must finish once begun.

The abort of a failed start stops everything the start created. Interrupted
half-way (a second Ctrl-C while it waits for the daemon to exit), it would
leave the daemon running, maybe without a PID file, in the way of every later
start. While such a step runs in the main thread, SIGINT is counted instead of
raising ``KeyboardInterrupt``, and raised once the step is done. Signals reach
Python code only in the main thread; elsewhere there is nothing to defer.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType


class Deferred:
    """The Ctrl-Cs that arrived while a step ran; the step may hurry when there are any."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def pending(self) -> bool:
        """Whether somebody pressed Ctrl-C meanwhile (and so wants it over with)."""
        return self.count > 0

    def _record(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.count += 1


def _ours(handler: object) -> bool:
    return isinstance(getattr(handler, "__self__", None), Deferred)


@contextlib.contextmanager
def deferred() -> Iterator[Deferred]:
    """Count SIGINT instead of raising ``KeyboardInterrupt`` until the block is left.

    Then the handler that was there is restored and, if SIGINT arrived, called
    (Python's own raises ``KeyboardInterrupt``). Only a Python-level handler is
    deferred: with SIGINT ignored or at its default there is nothing to hold
    back. Nested blocks defer to the outermost.
    """
    state = Deferred()
    previous: Callable[[int, FrameType | None], object] | None = None
    if threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGINT)
        if callable(current) and not _ours(current):
            previous = current
    if previous is None:
        yield state
        return
    try:
        signal.signal(signal.SIGINT, state._record)  # noqa: SLF001 - our own handler
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
        if state.count:
            previous(signal.SIGINT, None)


def complete(step: Callable[[Deferred], object]) -> None:
    """Run ``step`` to its end with Ctrl-C deferred; raise ``KeyboardInterrupt`` after if any.

    A Ctrl-C that lands before the deferral has taken hold interrupts the
    step before it began, or at its very start: it is run again, from the
    top, so ``step`` must be safe to repeat.
    """
    interrupted: KeyboardInterrupt | None = None
    done = False
    while not done:
        try:
            with deferred() as state:
                step(state)
                done = True
        except KeyboardInterrupt as err:
            interrupted = err
    if interrupted is not None:
        raise interrupted
