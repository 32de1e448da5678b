"""``@requires(daemon, ...)``: a function that needs daemons running while it runs."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from ._spec import Daemon

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
        import inspect  # noqa: PLC0415 - 20 ms of import time; only decorating needs it

        daemons, stop = self.daemons, self.stop
        if inspect.iscoroutinefunction(function):
            coroutine_function = cast("Callable[P, Awaitable[Any]]", function)

            @functools.wraps(function)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:  # noqa: ANN401 - the wrapped function's result
                async with contextlib.AsyncExitStack() as stack:
                    for daemon in daemons:
                        await stack.enter_async_context(daemon.running(stop=stop))
                    return await coroutine_function(*args, **kwargs)

            return async_wrapper

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:  # noqa: ANN401 - the wrapped function's result
            with contextlib.ExitStack() as stack:
                for daemon in daemons:
                    stack.enter_context(daemon.running(stop=stop))
                return function(*args, **kwargs)

        return wrapper


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
    from ._spec import Daemon  # noqa: PLC0415 - _spec imports the package's modules

    for daemon in daemons:
        if not isinstance(daemon, Daemon):
            msg = f"requires() takes Daemon objects, not {daemon!r}"
            raise TypeError(msg)
    return _Requires(daemons, stop)
