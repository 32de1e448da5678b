"""Several daemons at once: started concurrently, used together, all or nothing.

``with all_running(redis, search, db):`` enters each daemon's ``running()``
block at the same time, each in a thread of its own, so three daemons that
take 0.3 s each are up after 0.3 s, not 0.9 s. If any fails, the others'
starts are aborted at once (each thread's work watches a cancellation token,
see ``_cancel``), the blocks that did enter are left (which stops the daemons
they started), and the failure is raised: itself if it is the only one,
:class:`StartFailures` naming every one otherwise. Ctrl-C while waiting takes
the same path, and so does a cancelled ``async with``.

:func:`start_all` is what a command like the CLI's ``up`` needs: start what
is not running, report each daemon as it is done, and leave running what
started. Both run on ``_concurrently.each``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _actions, _aio, _cancel, _failures, _pidfile
from ._concurrently import each
from ._daemon import Daemon
from ._errors import DaemonError, StartFailures
from ._scoped import Running, wrap

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from types import TracebackType

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)


def _cut_short(result: object) -> bool:
    return isinstance(result, _cancel.Cancelled)


def _failures_of(names: Sequence[str], results: Sequence[object]) -> dict[str, BaseException]:
    """The real failures: not the actions cancelled because another failed."""
    return {
        name: result
        for name, result in zip(names, results, strict=True)
        if isinstance(result, BaseException) and not isinstance(result, _cancel.Cancelled)
    }


def _raise_failures(failures: dict[str, BaseException], total: int) -> None:
    if len(failures) == 1:
        raise next(iter(failures.values()))
    error = StartFailures(failures, total)
    others = [err for err in failures.values() if not isinstance(err, DaemonError)]
    if others:
        raise error from BaseExceptionGroup("failures that are not DaemonErrors", others)
    raise error


def _described(problems: list[tuple[str, BaseException]]) -> list[str]:
    return [f"while leaving daemon '{name}': {type(e).__name__}: {e}" for name, e in problems]


def _note(error: BaseException | None, problems: list[str]) -> None:
    if error is not None:
        for problem in problems:
            error.add_note(problem)


class AllRunning:
    """The context manager returned by :func:`all_running`.

    Usable as ``with``, ``async with`` and as a decorator (each call of the
    decorated function is one block). It yields the daemons, as a tuple.
    """

    def __init__(self, daemons: tuple[Daemon, ...], stop: bool | None = None) -> None:
        self.daemons = daemons
        self.stop = stop
        self._entered: list[list[Running]] = []
        self._guard = threading.Lock()

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, function: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``function``: each call runs in a block of its own."""
        return wrap(function, lambda: (AllRunning(self.daemons, self.stop),))

    # -- the work, in the calling thread or a worker ---------------------------------

    def _enter_blocks(self, blocks: list[Running]) -> list[Running]:
        """Enter every block at once; all or nothing."""
        results, interrupt = each(blocks, Running.__enter__)
        entered = [
            b for b, r in zip(blocks, results, strict=True) if not isinstance(r, BaseException)
        ]
        if len(entered) == len(blocks):
            if interrupt is not None:  # everything entered just before Ctrl-C arrived
                _note(interrupt, _described(self._leave_blocks(entered)))
                raise interrupt
            return entered
        failures = _failures_of([b.daemon.name for b in blocks], results)
        problems = _described(self._leave_blocks(entered))
        cut = [b.daemon.name for b, r in zip(blocks, results, strict=True) if _cut_short(r)]
        if failures and cut:
            names = ", ".join(f"'{name}'" for name in cut)
            problems.insert(0, f"cut short by the failure, not waited for: {names}")
        error: BaseException = interrupt or _cancel.Cancelled()
        try:
            if interrupt is None and failures:
                _raise_failures(failures, len(blocks))
        except BaseException as err:  # noqa: BLE001 - re-raised below, with notes
            error = err
        _note(error, problems)
        raise error

    @staticmethod
    def _leave_blocks(
        blocks: list[Running], exc_info: tuple[Any, Any, Any] = (None, None, None)
    ) -> list[tuple[str, BaseException]]:
        """Leave every block at once, to the end; what leaving raised, per daemon.

        Ctrl-C meanwhile is raised once every block has been left.
        """
        with _cancel.shielded():
            results, interrupt = each(blocks, lambda b: b.__exit__(*exc_info), fail_fast=False)
        if interrupt is not None:
            raise interrupt
        return [
            (b.daemon.name, r)
            for b, r in zip(blocks, results, strict=True)
            if isinstance(r, BaseException)
        ]

    def _leave_quietly(self, blocks: list[Running]) -> None:
        for problem in _described(self._leave_blocks(blocks)):
            self.daemons[0].config.logger.warning("after a cancelled start: %s", problem)

    def _push(self, entered: list[Running]) -> tuple[Daemon, ...]:
        with self._guard:
            self._entered.append(entered)
        return tuple(block.daemon for block in entered)

    def _pop(self) -> list[Running]:
        with self._guard:
            return self._entered.pop()

    def _exit(self, entered: list[Running], exc: BaseException | None, exc_info: Any) -> None:  # noqa: ANN401 - the __exit__ triple
        errors = [error for _, error in self._leave_blocks(entered, exc_info)]
        if not errors or exc is not None:
            return  # the block's own exception goes on, with notes added by Running
        first, *rest = errors
        _note(first, [f"also: {type(e).__name__}: {e}" for e in rest])
        raise first

    # -- sync -----------------------------------------------------------------------

    def __enter__(self) -> tuple[Daemon, ...]:
        blocks = [daemon.running(stop=self.stop) for daemon in self.daemons]
        return self._push(self._enter_blocks(blocks))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(self._pop(), exc, (exc_type, exc, tb))

    # -- async ----------------------------------------------------------------------

    async def __aenter__(self) -> tuple[Daemon, ...]:
        """Enter all blocks from a worker thread; a cancellation aborts and leaves them all."""
        blocks = [daemon.running(stop=self.stop) for daemon in self.daemons]
        entered = await _aio.call(
            lambda: self._enter_blocks(blocks),
            name="daemon_controller: all_running",
            undo=self._leave_quietly,
        )
        return self._push(entered)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave all blocks from a worker thread; a cancellation meanwhile waits for it."""
        entered = self._pop()
        await _aio.call(
            lambda: self._exit(entered, exc, (exc_type, exc, tb)),
            name="daemon_controller: all_running",
            cancellable=False,
        )

    def __repr__(self) -> str:
        names = ", ".join(repr(d.name) for d in self.daemons)
        return f"<AllRunning daemons=({names}) stop={self.stop!r}>"


def check_daemons(what: str, daemons: tuple[Daemon, ...]) -> None:
    """Refuse an empty list and anything that is not a ``Daemon`` (a common slip: a name)."""
    if not daemons:
        msg = f"{what}() needs at least one daemon"
        raise TypeError(msg)
    for daemon in daemons:
        if not isinstance(daemon, Daemon):
            msg = f"{what}() takes Daemon objects, not {daemon!r}"
            raise TypeError(msg)


def all_running(*daemons: Daemon, stop: bool | None = None) -> AllRunning:
    """A block (``with`` or ``async with``) during which all these daemons run.

    Entering starts the daemons that do not run, all at once (each as
    :meth:`Daemon.running` would). All or nothing: if one fails, the starts
    still under way are aborted, the daemons this block started are stopped
    again, and the failure is raised, itself if it is the only one, else a
    :class:`StartFailures` naming each. Leaving leaves every daemon's block
    at once. For daemons that need each other, nest the blocks instead.

    Args:
        *daemons: The daemons, independent of each other.
        stop: As for :meth:`Daemon.running`.

    Returns:
        A context manager (also a decorator) yielding the daemons as a tuple.

    Example::

        async with all_running(redis, search) as (redis, search):
            ...
    """
    check_daemons("all_running", daemons)
    return AllRunning(daemons, stop)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`start_all` did with one daemon.

    Attributes:
        daemon: The daemon.
        started: Whether this call started it (``False``: it was running, or
            its start failed).
        pid: Its PID afterwards, if it runs.
        seconds: How long this daemon took.
        error: What its start raised, or ``None``.
    """

    daemon: Daemon
    started: bool
    pid: int | None
    seconds: float
    error: BaseException | None = None


def start_all(
    daemons: Sequence[Daemon],
    *,
    rollback: bool = True,
    report: Callable[[Outcome], object] | None = None,
) -> list[Outcome]:
    """Start, all at once, every one of these daemons that does not run; leave them running.

    For a command like the CLI's ``up``, called once per group of
    independent daemons. Each daemon is started as :meth:`Daemon.start` would,
    except that one found running (or started by somebody else meanwhile) is
    not an error; a start somebody else was running when this call began and
    that failed is this daemon's failure too (as for ``running()``).

    Args:
        daemons: Daemons that do not depend on each other.
        rollback: ``True``: all or nothing: the first failure aborts the
            starts under way, stops the daemons this call started and is
            raised (several: :class:`StartFailures`). ``False``: every daemon
            gets its chance, nothing is stopped, and failures are only in the
            outcomes.
        report: Called in the calling thread with each daemon's outcome as
            soon as it is known (for a live display).

    Returns:
        One :class:`Outcome` per daemon, in the order given.
    """
    since = _failures.now()

    def start(daemon: Daemon) -> Outcome:
        began = time.monotonic()
        target = daemon._start_target()  # noqa: SLF001 - the actions' view of the daemon
        started = _actions.ensure_running(target, since)
        pid = _pidfile.read_pid(target.files.pid)
        return Outcome(daemon, started, pid, time.monotonic() - began)

    def outcome(index: int, result: Outcome | BaseException) -> Outcome:
        if isinstance(result, Outcome):
            return result
        return Outcome(daemons[index], started=False, pid=None, seconds=0.0, error=result)

    def tell(index: int, result: Outcome | BaseException) -> None:
        if report is not None:
            report(outcome(index, result))

    results, interrupt = each(daemons, start, fail_fast=rollback, report=tell)
    outcomes = [outcome(i, r) for i, r in enumerate(results)]
    failures = _failures_of([d.name for d in daemons], results)
    cut = any(_cut_short(r) for r in results)  # a failure's doing, or the caller was cancelled
    if interrupt is None and not (rollback and (failures or cut)):
        return outcomes
    problems: list[str] = []
    if rollback:
        started = [o.daemon for o in outcomes if o.started]
        with _cancel.shielded():
            stopped, late = each(started, lambda d: d.stop(), fail_fast=False)
        interrupt = interrupt or late  # Ctrl-C during the rollback: raised once it is done
        problems = [
            f"while stopping daemon '{d.name}': {type(r).__name__}: {r}"
            for d, r in zip(started, stopped, strict=True)
            if isinstance(r, BaseException)
        ]
    error: BaseException | None = interrupt
    if error is None and failures:
        try:
            _raise_failures(failures, len(daemons))
        except BaseException as err:  # noqa: BLE001 - re-raised below, with notes
            error = err
    error = error or _cancel.Cancelled()
    _note(error, problems)
    raise error
