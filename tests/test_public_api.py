"""The public surface: what ``import daemon_controller`` offers is a contract."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files

import daemon_controller

EXPECTED = {
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
}


def test_all_is_pinned():
    assert set(daemon_controller.__all__) == EXPECTED
    assert daemon_controller.__all__ == sorted(daemon_controller.__all__)


def test_every_exported_name_exists_and_belongs_to_the_package():
    for name in daemon_controller.__all__:
        value = getattr(daemon_controller, name)
        if name != "__version__":
            assert value.__module__.startswith("daemon_controller"), name


def test_ships_py_typed():
    assert files("daemon_controller").joinpath("py.typed").is_file()


def test_import_does_not_import_pytest():
    # The pytest plugin is a separate module; importing the library must not drag pytest in.
    code = "import sys, daemon_controller; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
