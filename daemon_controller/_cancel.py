"""Cutting blocking work short from another thread: a token its waits watch.

The actions block: they wait for lock files, for processes, for pings. Run in
a worker thread (for an asyncio task, or as one of several starts run
together), such work carries a :class:`Token` in its context
(:func:`current`), and the waits that may be cut short watch it:

* a wait for a lock file gives up at once (``_lock``); a lock granted after
  that is let go the moment it arrives, by a helper thread;
* a start's pauses wake at once, and the start is aborted exactly as a
  failed one (``_start``).

Everything else runs to its end, whatever the token says: stopping a daemon,
a start's abort, leaving a ``running()`` block. Cleanup that must not be cut
short runs under :func:`shielded`.

Cancelling raises :class:`Cancelled` in the worker thread at its next check.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._errors import StartError


class Cancelled(BaseException):
    """Raised in a worker thread whose token was cancelled.

    A ``BaseException``, like ``asyncio.CancelledError`` and
    ``KeyboardInterrupt``: a ``before_start`` or ping function catching
    ``Exception`` must not swallow it.

    Attributes:
        error: When a start was aborted: the :class:`StartError` describing
            it (its output and log), which those waiting for that start are
            given; else ``None``.
    """

    def __init__(self, error: StartError | None = None) -> None:
        super().__init__("cancelled")
        self.error = error


class Token:
    """Whether some blocking work should stop, and a way to wake its waits.

    Thread-safe. A token made with a ``parent`` is cancelled with it.
    """

    __slots__ = ("_cancelled", "_children", "_cond", "_pipe")

    def __init__(self, parent: Token | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._cancelled = False
        self._children: list[Token] = []
        self._pipe: tuple[int, int] | None = None
        if parent is not None:
            parent._adopt(self)  # noqa: SLF001 - the same class

    def _adopt(self, child: Token) -> None:
        with self._cond:
            if not self._cancelled:
                self._children.append(child)
                return
        child.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called (on this token or a parent)."""
        return self._cancelled

    def cancel(self) -> None:
        """Ask the work to stop: wake its waits; its next check raises :class:`Cancelled`."""
        with self._cond:
            if self._cancelled:
                return
            self._cancelled = True
            children, self._children = self._children, []
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    os.write(self._pipe[1], b"x")
            self._cond.notify_all()
        for child in children:
            child.cancel()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the token was cancelled."""
        if self._cancelled:
            raise Cancelled

    def sleep(self, seconds: float) -> None:
        """Pause up to ``seconds``; return early once cancelled."""
        with self._cond:
            self._cond.wait_for(lambda: self._cancelled, timeout=max(0.0, seconds))

    def wait_for(self, done: Callable[[], bool]) -> bool:
        """Wait until ``done()`` (re-checked on :meth:`notify`) or cancellation.

        Returns:
            What ``done()`` says at the end.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._cancelled or done())
            return done()

    def notify(self) -> None:
        """Wake :meth:`wait_for` to look at its condition again."""
        with self._cond:
            self._cond.notify_all()

    def wake_fd(self) -> int:
        """A descriptor that polls readable once the token is cancelled (a pipe, made once).

        For waits that already poll a descriptor (a pidfd): one ``poll()``
        then wakes on either the process's exit or the cancellation.
        """
        with self._cond:
            if self._pipe is None:
                self._pipe = os.pipe()
                if self._cancelled:
                    os.write(self._pipe[1], b"x")
            return self._pipe[0]

    def close(self) -> None:
        """Release the pipe, if one was made; the token can still be cancelled."""
        with self._cond:
            pipe, self._pipe = self._pipe, None
        for fd in pipe or ():
            with contextlib.suppress(OSError):
                os.close(fd)


_current: contextvars.ContextVar[Token | None] = contextvars.ContextVar(
    "daemon_controller_token", default=None
)


#: The token the running work watches, or ``None`` (it cannot be cancelled).
#: The context variable's own ``get``: asked by every lock taken, so no Python
#: function stands in between.
current: Callable[[], Token | None] = _current.get


def check() -> None:
    """Raise :class:`Cancelled` if the running work's token was cancelled."""
    token = _current.get()
    if token is not None:
        token.check()


@contextlib.contextmanager
def watching(token: Token | None) -> Iterator[Token | None]:
    """Run the block with ``token`` as the current one (``None``: not cancellable)."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def shielded() -> contextlib.AbstractContextManager[Token | None]:
    """Run the block to its end, whatever happens to the current token (cleanup)."""
    return watching(None)
