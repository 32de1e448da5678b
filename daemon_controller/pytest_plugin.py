"""pytest plugin: declare the daemons a test suite needs as fixtures.

Registered through the ``pytest11`` entry point, so installing the package is
enough. In a ``conftest.py``::

    from daemon_controller import Daemon
    from daemon_controller.pytest_plugin import daemon_fixture

    redis = daemon_fixture("redis", Daemon("redis").start_with(...)..., scope="session")

    def test_cache(redis):        # redis is the Daemon, running
        ...

* The daemon is started when the first test asks for the fixture and stopped
  at the end of the fixture's scope, unless it was already running before (as
  with ``Daemon.running()``).
* When a test fails while a daemon fixture is in use, the lines the daemon
  added to its log during that test appear in the failure report.
* Under pytest-xdist, the workers that ask for the same session-scoped daemon
  share one instance: it is started once and stopped after the last worker is
  done, not when the first worker finishes. Each worker holds a shared lock on
  a per-run file for its whole life; the worker that finds itself last
  (a non-blocking exclusive lock succeeds) stops what the run started.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import _lock
from ._errors import hide_frames

if TYPE_CHECKING:
    from collections.abc import Generator

    from ._daemon import Daemon

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

Scope = Literal["function", "class", "module", "package", "session"]

_RUN_ENV = "DAEMON_CONTROLLER_PYTEST_RUN"

#: Every daemon declared with daemon_fixture() in this process, by fixture name.
#: Filled at import time of the conftest, so every xdist worker knows them all,
#: including workers that never use a given fixture.
_declared: dict[str, tuple[Daemon, Scope, bool | None]] = {}
#: Log offsets of the daemons, taken when a test starts.
_log_offsets: dict[str, int] = {}
_run_lease: _lock.Held | None = None
_run_file_key = pytest.StashKey[Path]()


def _xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def daemon_fixture(
    name: str,
    daemon: Daemon,
    *,
    scope: Scope = "function",
    stop: bool | None = None,
    autouse: bool = False,
) -> Any:  # noqa: ANN401 - what pytest.fixture returns differs between pytest versions
    """Make a pytest fixture named ``name`` that yields ``daemon`` running.

    Args:
        name: The fixture's name, as tests request it.
        daemon: The daemon to run.
        scope: The pytest scope; the daemon is stopped at its end (see ``stop``).
        stop: As for :meth:`Daemon.running`: ``None`` stops it only if this
            fixture started it; ``True`` always; ``False`` never.
        autouse: Make every test in the fixture's visibility use it.

    Returns:
        The fixture; assign it to a module-level name in a ``conftest.py`` or
        test module.
    """
    daemon = daemon.resolved()  # default files filled in: settle() and log reports need them
    _declared[name] = (daemon, scope, stop)

    def fixture() -> Generator[Daemon, None, None]:
        block = daemon.running(stop=stop)
        # Under xdist, a session daemon outlives this worker's session scope:
        # the last worker of the run settles it (see pytest_unconfigure).
        block.defer = scope == "session" and _xdist_worker() and _run_lease is not None
        with block:
            yield daemon

    fixture.__name__ = name
    fixture.__doc__ = f"The daemon {daemon.name!r}, running ({scope} scope)."
    return pytest.fixture(fixture, scope=scope, name=name, autouse=autouse)


def _log_size(daemon: Daemon) -> int:
    log = daemon.config.log_file
    if log is None:
        return 0
    try:
        return log.stat().st_size
    except OSError:
        return 0


def _new_log_text(daemon: Daemon, offset: int) -> str:
    log = daemon.config.log_file
    if log is None:
        return ""
    try:
        with log.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset if offset <= size else 0)
            return f.read(64 * 1024).decode("utf-8", errors="replace")
    except OSError:
        return ""


def pytest_configure(config: pytest.Config) -> None:
    """Join (or, in the xdist controller, create) this run's worker lease."""
    global _run_lease  # noqa: PLW0603 - one lease per process
    if hasattr(config, "workerinput") or _xdist_worker():
        path = os.environ.get(_RUN_ENV)
        if path:
            _run_lease = _lock.acquire(Path(path), "pytest run", shared=True)
        return
    if os.environ.get(_RUN_ENV):
        return  # a nested pytest run (pytester) inside another
    numprocesses = config.getoption("numprocesses", default=None)
    if numprocesses:
        # The controller: workers inherit the variable when xdist spawns them.
        run_file = Path(tempfile.gettempdir()) / f"daemon-controller-run-{uuid.uuid4().hex}.lock"
        os.environ[_RUN_ENV] = str(run_file)
        config.stash[_run_file_key] = run_file


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The last xdist worker of the run stops the session daemons the run started.

    Done at the end of the worker's session (its session fixtures are torn
    down by then), before the worker reports "finished" to the xdist
    controller: after that report the controller may interrupt a worker that
    is slow to exit (SIGINT after 5 s), and ``pytest_unconfigure`` would never
    run (found with hypothesis's slow terminal summary).
    """
    del session
    global _run_lease  # noqa: PLW0603 - one lease per process
    if _run_lease is None:
        return
    _run_lease.release()
    _run_lease = None
    path = Path(os.environ[_RUN_ENV])
    last = _lock.acquire(path, "pytest run", shared=False, blocking=False)
    if last is None:
        return  # another worker is still running; it will settle
    try:
        for daemon, scope, stop in _declared.values():
            if scope == "session" and stop is not False:
                with contextlib.suppress(Exception):
                    daemon.running(stop=stop).settle()
    finally:
        last.release()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller removes the run file; a worker drops a lease it still holds."""
    global _run_lease  # noqa: PLW0603 - one lease per process
    run_file = config.stash.get(_run_file_key, None)
    if run_file is not None:  # the controller: tidy up
        os.environ.pop(_RUN_ENV, None)
        with contextlib.suppress(OSError):
            run_file.unlink()
        return
    if _run_lease is not None:  # sessionfinish never ran (an early error)
        _run_lease.release()
        _run_lease = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember where each daemon's log ends before the test (and its fixtures) run."""
    for name in getattr(item, "fixturenames", ()):
        if name in _declared:
            _log_offsets[name] = _log_size(_declared[name][0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the daemons' new log lines to the report of a failed test."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for name in getattr(item, "fixturenames", ()):
            if name not in _declared:
                continue
            daemon = _declared[name][0]
            text = _new_log_text(daemon, _log_offsets.get(name, 0))
            if text.strip():
                report.sections.append((f"daemon {daemon.name!r} log ({name})", text))
    return report
