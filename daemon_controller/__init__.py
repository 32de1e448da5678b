"""Start, stop and connect to local daemons robustly and without races.

A Python port of Phusion's ``daemon_controller`` Ruby gem::

    from daemon_controller import Daemon

    redis = (
        Daemon("Redis")
        .start_with(["redis-server", "redis.conf"])
        .ping_tcp("127.0.0.1", 6390)
        .pid("tmp/redis.pid")
        .log("log/redis.log")
    )
    redis.start()   # returns once Redis answers; errors from its log are raised
    redis.stop()    # returns once the process has exited
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._daemon import Daemon
from ._decorators import requires
from ._errors import (
    AlreadyStarted,
    ConfigError,
    ConnectError,
    DaemonError,
    StartError,
    StartFailures,
    StartTimeout,
    StopError,
    StopTimeout,
)
from ._options import DaemonConfig
from ._probes import CallablePing, CommandPing, HttpPing, Probe, TcpPing, UnixPing
from ._ruby import DaemonController
from ._scoped import Running
from ._status import Status
from ._together import AllRunning, all_running
from ._toml import load

if TYPE_CHECKING:
    __version__: str
else:

    def __getattr__(name: str) -> str:
        # The version lives in one place, pyproject.toml, and reaches us through
        # the installed metadata. It is looked up on first use, not at import:
        # importlib.metadata costs milliseconds, and import time is benchmarked.
        # (Hidden from type checkers, which would otherwise type every unknown
        # attribute of the package as a str.)
        if name != "__version__":
            msg = f"module {__name__!r} has no attribute {name!r}"
            raise AttributeError(msg)
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - lazy, see above

        try:
            found = version("daemon-controller")
        except PackageNotFoundError:  # a checkout on sys.path that was never installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found


__all__ = [
    "AllRunning",
    "AlreadyStarted",
    "CallablePing",
    "CommandPing",
    "ConfigError",
    "ConnectError",
    "Daemon",
    "DaemonConfig",
    "DaemonController",
    "DaemonError",
    "HttpPing",
    "Probe",
    "Running",
    "StartError",
    "StartFailures",
    "StartTimeout",
    "Status",
    "StopError",
    "StopTimeout",
    "TcpPing",
    "UnixPing",
    "__version__",
    "all_running",
    "load",
    "requires",
]
