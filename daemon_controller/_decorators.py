"""``@requires(daemon, ...)``: a function that needs daemons running while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._errors import hide_frames
from ._scoped import wrap
from ._together import AllRunning, check_daemons

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from ._daemon import Daemon

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

P = ParamSpec("P")
R = TypeVar("R")


class _Requires:
    """The decorator ``requires(...)`` returns; see :func:`requires`."""

    def __init__(self, daemons: tuple[Daemon, ...], stop: bool | None) -> None:
        self.daemons = daemons
        self.stop = stop

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, function: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        daemons, stop = self.daemons, self.stop
        if len(daemons) == 1:
            return wrap(function, lambda: [daemons[0].running(stop=stop)])
        return wrap(function, lambda: [AllRunning(daemons, stop)])


def requires(*daemons: Daemon, stop: bool | None = None) -> _Requires:
    """Decorate a function (plain or ``async def``) that needs these daemons running.

    Each call runs inside ``all_running(*daemons, stop=stop)``: the daemons
    are started at once, all or nothing (if one fails, those the call started
    are stopped again and the failure is raised; several failures as one
    :class:`StartFailures`). For daemons that need each other, stack the
    decorators: the outer one's daemons are up before the inner one's start.
    The wrapper keeps the function's name, docstring, signature and return
    value.

    Args:
        *daemons: The daemons the function needs.
        stop: As for :meth:`Daemon.running`.

    Example::

        @requires(redis, search)  # started together
        def index_everything() -> int: ...


        @requires(db)  # db first,
        @requires(web)  # then web, which needs it
        def test_signup() -> None: ...
    """
    check_daemons("requires", daemons)
    return _Requires(daemons, stop)
