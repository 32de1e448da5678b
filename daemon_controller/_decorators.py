"""``@requires(daemon, ...)``: a function that needs daemons running while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._errors import hide_frames
from ._scoped import Decorator
from ._together import AllRunning, check_daemons

if TYPE_CHECKING:
    from ._daemon import Daemon
    from ._scoped import Running

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

P = ParamSpec("P")
R = TypeVar("R")


class _Requires(Decorator):
    """The decorator ``requires(...)`` returns; see :func:`requires`."""

    def __init__(self, daemons: tuple[Daemon, ...], stop: bool | None) -> None:
        self.daemons = daemons
        self.stop = stop

    def _blocks(self) -> list[Running | AllRunning]:
        daemons, stop = self.daemons, self.stop
        if len(daemons) == 1:
            return [daemons[0].running(stop=stop)]
        return [AllRunning(daemons, stop)]


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
