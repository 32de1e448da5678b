"""Waiting for a busy lock in a way that a cancellation can cut short.

``flock()`` cannot be interrupted from another thread. A cancellable waiter
therefore lets a helper thread block in it, on a descriptor of its own, and
waits for that thread or for the cancellation (see ``_cancel``).
"""

from __future__ import annotations

import os
import threading

from . import _cancel, _platform


class _Claim:
    """A blocking lock request handed to a helper thread, so that its waiter can give up.

    ``flock()`` cannot be interrupted from another thread. A cancellable
    waiter therefore lets a helper thread block in it, on a descriptor of its
    own, and waits for that thread or for the cancellation. If the waiter gives
    up first, the descriptor is the helper's: once the lock is granted, the
    helper releases it and closes the descriptor. Whoever decides second
    cleans up, under one mutex, so the lock never stays held by nobody.
    """

    __slots__ = ("abandoned", "answered", "error", "fd", "guard", "shared", "token")

    def __init__(self, fd: int, *, shared: bool, token: _cancel.Token) -> None:
        self.fd = fd
        self.shared = shared
        self.token = token
        self.guard = threading.Lock()
        self.answered = False  # the lock was granted, or failed
        self.abandoned = False
        self.error: BaseException | None = None

    def run(self) -> None:
        """In the helper thread: wait for the lock, then hand it over or let it go."""
        try:
            _platform.lock_fd(self.fd, shared=self.shared)
        except BaseException as err:  # noqa: BLE001 - handed to the waiter, who raises it
            error: BaseException | None = err
        else:
            error = None
        with self.guard:
            self.error = error
            self.answered = True
            abandoned = self.abandoned
        if abandoned:
            let_go(self.fd, locked=error is None)
        self.token.notify()

    def wait(self) -> None:
        """In the waiter: return holding the lock, or raise ``Cancelled`` (or the lock's error)."""
        self.token.wait_for(lambda: self.answered)
        with self.guard:
            if not self.answered:
                self.abandoned = True  # the helper lets go of it once granted
                raise _cancel.Cancelled
        if self.error is not None:
            os.close(self.fd)
            raise self.error


def let_go(fd: int, *, locked: bool) -> None:
    try:
        if locked:
            _platform.unlock_fd(fd)
    finally:
        os.close(fd)


def lock_cancellable(fd: int, *, shared: bool, token: _cancel.Token) -> None:
    """Lock ``fd`` (waiting), or raise ``Cancelled`` as soon as ``token`` is cancelled.

    On ``Cancelled`` (or another error) ``fd`` has been, or will be, closed
    by someone else: the caller must not touch it again.
    """
    try:
        token.check()
        if _platform.lock_fd(fd, shared=shared, blocking=False):
            return
    except BaseException:
        os.close(fd)
        raise
    claim = _Claim(fd, shared=shared, token=token)
    threading.Thread(target=claim.run, name="daemon_controller lock wait", daemon=True).start()
    claim.wait()
