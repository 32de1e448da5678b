"""Shared fixtures: echo-server daemons, child processes, shared directories, a sweeper.

Every process a test starts through :func:`echo` carries the environment
variable ``DC_TEST_ID`` with a value unique to that test. After the test, the
``_sweep`` fixture kills every live process that carries it (found through
psutil, so it also finds daemons that double-forked or whose PID file is gone)
and fails the test if it had to: a test must clean up after itself, and a test
that crashed must not leave a daemon running for the next one.

Plain helper functions live in ``helpers.py``; this file holds only fixtures.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from echo_server import ECHO_SERVER, echo_command
from helpers import MARKER, Child, LockProbe, free_port, marked_processes
from runtime_files import forget

from daemon_controller import Daemon


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _sweep(test_id: str, request: pytest.FixtureRequest):
    yield
    left = marked_processes(test_id)
    if left:
        descr = ", ".join(f"{p.pid} {p.info.get('name', '')}" for p in left)
        kill_all(left)
        if not request.node.get_closest_marker("allow_leftovers"):
            pytest.fail(f"test left processes running (killed now): {descr}")


@pytest.fixture
def lock_probe():
    """Takes a daemon's locks and leases from a separate process: is anything still held?"""
    probe = LockProbe()
    yield probe
    probe.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def daemons():
    """Daemons to stop and forget after the test, whatever happened."""
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.stop()
        forget(daemon)


class EchoFactory:
    """Builds echo-server ``Daemon`` objects in a test's temporary directory."""

    def __init__(self, tmp_path: Path, test_id: str) -> None:
        self.tmp_path = tmp_path
        self.test_id = test_id
        self.pid_file = tmp_path / "echo.pid"
        self.log_file = tmp_path / "echo.log"

    def __call__(self, *args: str, port: int | None = None, name: str = "echo") -> Daemon:
        """A daemon running ``echo_server.py --port PORT --pid-file --log-file ARGS``."""
        port = port if port is not None else free_port()
        self.port = port
        command = echo_command(
            "--port",
            str(port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
            *args,
        )
        return (
            Daemon(name)
            .start_with(command)
            .ping_tcp("127.0.0.1", port)
            .pid(self.pid_file)
            .log(self.log_file)
            .start_timeout(15)
            .stop_timeout(10)
            .start_abort_timeout(3)
            .env({MARKER: self.test_id})
        )

    def marked(self) -> list[psutil.Process]:
        """Live processes started by this test."""
        return marked_processes(self.test_id)


@pytest.fixture
def echo(tmp_path: Path, test_id: str) -> EchoFactory:
    return EchoFactory(tmp_path, test_id)


@pytest.fixture
def child():
    """``child(script, *args, **options)``: a :class:`helpers.Child`, reaped after the test."""
    children: list[Child] = []

    def start(script: str, *args: str, **options) -> Child:
        children.append(Child(script, *args, **options))
        return children[-1]

    yield start
    for proc in children:
        proc.kill()


@pytest.fixture
def shared_tmp():
    """A fresh directory that every user may write (``tmp_path`` is private to us).

    For tests that act as another user: they need a place of their own too.
    """
    path = Path(tempfile.mkdtemp(prefix="dc-shared-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def world_readable_echo_server():
    """A copy of ``echo_server.py`` that any user may read and run.

    The checkout may sit in a directory only we can enter (a private home, a
    0700 temporary directory): a daemon run as another user could not open the
    original.
    """
    directory = Path(tempfile.mkdtemp(prefix="dc-echo-"))
    directory.chmod(0o755)
    copy = directory / ECHO_SERVER.name
    shutil.copyfile(ECHO_SERVER, copy)
    copy.chmod(0o644)
    yield copy
    shutil.rmtree(directory, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_leftovers: the test kills its processes on purpose late"
    )
