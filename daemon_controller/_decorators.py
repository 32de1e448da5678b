"""``@requires(daemon, ...)``: a function that needs daemons running while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._daemon import Daemon
from ._errors import hide_frames
from ._scoped import wrap

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

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
        return wrap(function, lambda: [daemon.running(stop=stop) for daemon in daemons])


def requires(*daemons: Daemon, stop: bool | None = None) -> _Requires:
    """Decorate a function (plain or ``async def``) that needs these daemons running.

    Each call runs inside ``daemon.running(stop=stop)`` of every daemon, entered
    in the order given and left in reverse order. The wrapper keeps the
    function's name, docstring, signature and return value.

    Args:
        *daemons: The daemons the function needs.
        stop: As for :meth:`Daemon.running`.

    Example::

        @requires(redis, search)
        def index_everything() -> int: ...
    """
    if not daemons:
        msg = "requires() needs at least one daemon"
        raise TypeError(msg)
    for daemon in daemons:
        if not isinstance(daemon, Daemon):
            msg = f"requires() takes Daemon objects, not {daemon!r}"
            raise TypeError(msg)
    return _Requires(daemons, stop)
