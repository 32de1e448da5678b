"""``with daemon.running():`` — a daemon for the duration of a block, shared safely.

Entering a block makes sure the daemon runs, starting it if needed (race-free:
several threads or processes entering at once start it exactly once). Leaving
it stops the daemon only if a ``running()`` block started it and no other
block, in any thread or process on this machine, is still inside.

Who is inside is recorded with the OS's help, so a process that dies inside a
block is counted out automatically:

* ``<lock file>.users`` — every block holds a *shared* lock on its own open
  handle of this file while inside. A block leaving releases its handle and
  tries a *non-blocking exclusive* lock: it succeeds only if nobody else is
  inside, and it keeps that lock while stopping the daemon, so a block entering
  meanwhile waits and then starts a fresh daemon.
* ``<lock file>.owner`` — written when a block starts the daemon, holding the
  daemon's PID. Only a daemon recorded there is stopped by the last block out;
  a daemon that was already running before anyone entered is left running.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from . import _controller, _failures, _lock, _pidfile
from ._lock import owner_path, users_path
from ._waiting import SYSTEM_CLOCK

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from ._spec import Daemon


def _write_owner(lock_file: Path, pid: int) -> None:
    _pidfile.write(owner_path(lock_file), pid)


def _clear_owner(lock_file: Path) -> None:
    with contextlib.suppress(OSError):
        owner_path(lock_file).unlink()


def settle(daemon: Daemon, *, stop: bool | None = None) -> bool:
    """If no block is inside, stop the daemon when a block started it.

    Returns:
        ``True`` if nobody was inside (the decision was ours), else ``False``.
    """
    lock = daemon.config.effective_lock_file
    if lock is None:
        return False
    last = _lock.acquire(users_path(lock), daemon.name, shared=False, blocking=False)
    if last is None:
        return False  # somebody else is inside; the last one out decides
    try:
        if stop is True:
            daemon.stop()
        elif stop is None:
            owner = _pidfile.read_pid(owner_path(lock))
            if owner is not None and owner == daemon.read_pid():
                daemon.stop()
        _clear_owner(lock)
    finally:
        last.release()
    return True


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


class Running(contextlib.ContextDecorator):
    """The context manager returned by :meth:`Daemon.running`.

    Usable as ``with``, ``async with`` and as a decorator (each call of the
    decorated function is one block). It yields the :class:`Daemon`.
    """

    def __init__(self, daemon: Daemon, stop: bool | None = None) -> None:
        if stop not in (None, True, False):
            msg = f"Daemon '{daemon.name}': running(stop=...) takes None, True or False"
            raise TypeError(msg)
        self.daemon = daemon
        self.stop = stop
        #: Leave without deciding whether to stop; for the pytest plugin, which
        #: settles session daemons when the last xdist worker finishes.
        self.defer = False
        self._held: list[_lock.Held] = []
        self._guard = threading.Lock()

    def _recreate_cm(self) -> Running:
        # ContextDecorator reuses this object for every call of a decorated
        # function; concurrent calls need blocks of their own.
        fresh = Running(self.daemon, self.stop)
        fresh.defer = self.defer
        return fresh

    def _lock_file(self) -> Path:
        _controller._require(self.daemon, *_controller._START_PARTS)  # noqa: SLF001 - same package
        lock = self.daemon.config.effective_lock_file
        assert lock is not None  # noqa: S101 - follows from pid_file
        return lock

    # -- sync -----------------------------------------------------------------------

    def __enter__(self) -> Daemon:
        lock = self._lock_file()
        since = _failures.now()
        # Blocks while the last block out holds it exclusively to stop the daemon.
        held = _lock.acquire(users_path(lock), self.daemon.name, shared=True)
        assert held is not None  # noqa: S101 - a blocking acquire returns a lock
        try:
            self._enter_locked(lock, since)
        except BaseException:
            held.release()
            raise
        with self._guard:
            self._held.append(held)
        return self.daemon

    def _enter_locked(self, lock: Path, since: int) -> None:
        pid_file = self.daemon.config.pid_file
        assert pid_file is not None  # noqa: S101 - checked by _require
        with _lock.locked(lock, self.daemon.name, shared=False):
            started = _controller._ensure_running_locked(  # noqa: SLF001 - same package
                self.daemon, since, SYSTEM_CLOCK
            )
            if started:
                pid = _pidfile.read_pid(pid_file)
                if pid is not None:
                    _write_owner(lock, pid)

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
            self.daemon.config.logger.warning(
                "Daemon '%s': error while stopping after a failed block: %s", self.daemon.name, err
            )

    def _leave(self, held: _lock.Held) -> None:
        held.release()
        if self.defer:
            return  # the pytest plugin settles it later (see settle())
        if self.stop is True:
            self.daemon.stop()
            _clear_owner(self._lock_file())
            return
        settle(self.daemon, stop=self.stop)

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
                self.daemon.config.logger.warning(
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
