"""``__version__`` comes from the installed metadata, and only when asked for."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import portalocker
import psutil
import pytest
import tenacity

import daemon_controller


def test_version_is_the_installed_distributions():
    assert daemon_controller.__version__ == importlib.metadata.version("daemon-controller")
    assert "__version__" in daemon_controller.__all__


def test_import_does_not_look_up_the_version():
    # importlib.metadata costs milliseconds of import time; only __version__ needs it.
    code = (
        "import sys, daemon_controller\n"
        "print('importlib.metadata' in sys.modules)\n"
        "daemon_controller.__version__\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_unknown_attributes_still_raise():
    with pytest.raises(AttributeError, match="no_such_name"):
        daemon_controller.no_such_name  # noqa: B018 - the lookup is the test


def test_version_of_a_checkout_that_was_never_installed(tmp_path: Path):
    # The package and its dependencies on PYTHONPATH, without site-packages (-S),
    # so no dist-info for daemon-controller can be found.
    for module in (daemon_controller, psutil, tenacity, portalocker):
        package = Path(module.__file__).parent
        (tmp_path / package.name).symlink_to(package)
    code = "import daemon_controller; print(daemon_controller.__version__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "0+unknown"
