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
from ._together import AllRunning, all_running
from ._toml import load

__version__ = "0.1.0"

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
    "StopError",
    "StopTimeout",
    "TcpPing",
    "UnixPing",
    "__version__",
    "all_running",
    "load",
    "requires",
]
