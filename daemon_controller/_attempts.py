"""A start with a run directory and a port: made ready, recorded, retried if the port was taken.

Before the first attempt, the run directory is made (or copied from the
prepared template: ``_prepare``). Then, for a daemon with ``port()``, a port
is chosen (the one it had last time if that is still free), recorded beside
its lock file, and filled in for ``{port}``; each attempt runs
``before_start`` and the start itself with those values.

Choosing a free port and the daemon binding it are two steps, and something
else can take the port in between. When an attempt fails that way (the
daemon says "address in use", or it died before answering while something
else holds the port), another port is chosen, a bounded number of times;
then the start fails, naming what holds the port. A start that failed for
any other reason is not retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _ports, _prepare, _templates
from ._errors import StartError, StartTimeout, hide_frames
from ._probes import address_holder

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._options import StartTarget

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

#: How many ports one start tries before it gives up.
ATTEMPTS = 5


def _record(target: StartTarget, port: int) -> None:
    try:
        _ports.record(target.files.port, port)
    except OSError as err:
        msg = (
            f"Daemon '{target.name}' failed to start: cannot record its port in "
            f"{str(target.files.port)!r}: {err.strerror or err}"
        )
        raise StartError(target.name, msg, ran=False) from err


def port_taken(error: StartError, port: int) -> bool:
    """Whether a failed attempt lost its port to somebody else, so another may work.

    Either the daemon said so, or it died before answering (not a timeout)
    and something holds the port now that everything the attempt started
    has been stopped.
    """
    if error.reason == "address in use":  # a stranger answered before the attempt ran
        return True
    if isinstance(error, StartTimeout) or not error.ran:
        return False
    return _ports.says_address_in_use(error.output, error.log) or not _ports.is_free(port)


def _exhausted(target: StartTarget, tried: list[int], last: StartError) -> StartError:
    port = tried[-1]
    who = address_holder("inet", port, listening=False)  # the listener, else whoever uses it
    held = f"port {port} is held by {who}" if who else f"port {port} is taken"
    msg = (
        f"Daemon '{target.name}' failed to start: each of {len(tried)} ports chosen for it "
        f"({', '.join(map(str, tried))}) was taken before it could bind it; {held}."
    )
    return StartError(
        target.name,
        msg,
        output=last.output,
        log=last.log,
        exit_status=last.exit_status,
        signal=last.signal,
        pid=last.pid,
        reason="address in use",
    )


def start(
    target: StartTarget, attempt: Callable[[StartTarget], None], *, restart: bool = False
) -> None:
    """Start ``target`` with ``attempt``, given the target as each attempt sees it.

    The caller holds the daemon's exclusive lock. A ``restart`` keeps the
    run directory as it is, even for a preparation that wants it fresh.

    Raises:
        StartError: What the last attempt raised; or, when every chosen port
            was taken, an error naming what holds the last one.
    """
    config = target.config
    if config.run_dir is not None:
        _prepare.populate(target, restart=restart)
    wanted = config.port
    if wanted is None:
        attempt(target)
        return
    if wanted != "auto":
        _record(target, wanted)
        attempt(_templates.bind_port(target, wanted))
        return
    previous = _ports.read(target.files.port)
    tried: list[int] = []
    while True:
        try:
            port = _ports.choose(previous, tried)
        except OSError as err:
            msg = f"Daemon '{target.name}' failed to start: {err.strerror or err}"
            raise StartError(target.name, msg, ran=False) from err
        _record(target, port)
        try:
            attempt(_templates.bind_port(target, port))
        except StartError as err:
            if not port_taken(err, port):
                raise
            tried.append(port)
            if len(tried) >= ATTEMPTS:
                raise _exhausted(target, tried, err) from err
            config.logger.warning(
                "Daemon '%s': port %d was taken before the daemon could bind it; trying another",
                target.name,
                port,
            )
        else:
            return
