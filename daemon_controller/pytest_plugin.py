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
* A daemon that cannot be stopped is logged, listed in a section of the
  terminal summary, and makes the run fail (exit code 1): it is still
  running, and the next run may trip over it.
* Under pytest-xdist, the workers that ask for the same session-scoped daemon
  share one instance: it is started once and stopped after the last worker is
  done, not when the first worker finishes. Each worker holds a shared lock on
  a per-run file for its whole life; the worker that finds itself last
  (a non-blocking exclusive lock succeeds) stops what the run started.

The plugin's state lives in each run's ``config.stash``, so runs in one
process (``pytester``) do not see each other's. A declaration is attached to
the fixture object ``daemon_fixture`` returns; a run finds the declarations in
the modules it collected and its conftest files.
"""

from __future__ import annotations

import logging
import tempfile
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import _lock
from ._errors import DaemonError
from ._files import read_tail

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

    from ._daemon import Daemon

Scope = Literal["function", "class", "module", "package", "session"]

#: The key of ``config.workerinput`` naming the run file to the xdist workers.
#: Handed over by xdist itself, not through the environment: a pytest run
#: nested in a worker (pytester, a subprocess) inherits the environment, and
#: must not take itself for a worker of the outer run.
_RUN_KEY = "daemon_controller_run_file"
#: The attribute of a fixture function that carries its declaration.
_DECLARATION = "_daemon_controller_declaration"
#: The key of ``config.workeroutput`` carrying a worker's stop failures to the controller.
_WORKER_FAILURES = "daemon_controller_stop_failures"

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Declared:
    """What one ``daemon_fixture()`` call declared."""

    fixture: str
    daemon: Daemon
    scope: Scope
    stop: bool | None


@dataclass
class _State:
    """One run's state (in ``config.stash``)."""

    #: The declared daemon fixtures, by fixture name. Every xdist worker
    #: collects every module, so each knows them all, including the fixtures it
    #: never uses: the last worker stops the session daemons of the whole run.
    declared: dict[str, _Declared] = field(default_factory=dict)
    #: Where each daemon's log ended when the current test started.
    log_offsets: dict[str, int] = field(default_factory=dict)
    #: An xdist worker's shared lock on the run file, and the file.
    run_lease: _lock.Held | None = None
    run_lease_path: Path | None = None
    #: The run file, in the process that created it (the xdist controller).
    run_file: Path | None = None
    #: One line per daemon that could not be stopped.
    stop_failures: list[str] = field(default_factory=list)


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash.setdefault(_STATE, _State())


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
        test module (that is where a run looks for it).
    """
    # Default files filled in: settling and log reports need them.
    declared = _Declared(name, daemon.resolved(), scope, stop)

    def fixture(request: pytest.FixtureRequest) -> Generator[Daemon, None, None]:
        state = _state(request.config)
        state.declared.setdefault(name, declared)  # also when declared where no scan looks
        block = declared.daemon.running(stop=stop)
        # Under xdist, a session daemon outlives this worker's session scope:
        # the last worker of the run settles it (see pytest_sessionfinish).
        block.defer = scope == "session" and state.run_lease is not None
        entered = False
        try:
            with block:
                entered = True
                yield declared.daemon
        except DaemonError as err:
            if entered:  # leaving the block: the stop failed
                _stop_failed(state, declared, err)
            raise

    fixture.__name__ = name
    fixture.__doc__ = f"The daemon {declared.daemon.name!r}, running ({scope} scope)."
    # pytest 8 returns this function itself, pytest 9 a wrapper that copies its __dict__.
    setattr(fixture, _DECLARATION, declared)
    return pytest.fixture(fixture, scope=scope, name=name, autouse=autouse)


def _stop_failed(state: _State, declared: _Declared, err: BaseException) -> None:
    """Log a daemon that could not be stopped, and keep a line for the summary."""
    _LOG.error("Fixture %r could not stop its daemon: %s", declared.fixture, err)
    first = str(err).strip().splitlines()[:1] or [repr(err)]
    state.stop_failures.append(f"{type(err).__name__} in fixture {declared.fixture!r}: {first[0]}")


def _declarations_in(namespaces: Iterable[object]) -> Iterator[_Declared]:
    """The daemon fixtures found among the attributes of ``namespaces`` (modules)."""
    for namespace in namespaces:
        for value in list(vars(namespace).values()):
            try:  # a module-level object may do anything when asked for its attributes
                attributes = getattr(value, "__dict__", None)
                declared = attributes.get(_DECLARATION) if isinstance(attributes, dict) else None
            except Exception:  # noqa: BLE001, S112 - whatever it raised, it is not ours
                continue
            if isinstance(declared, _Declared):
                yield declared


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find the run's daemon fixtures: in its conftest files, plugins and test modules."""
    modules: dict[int, object] = {}
    for plugin in session.config.pluginmanager.get_plugins():
        if isinstance(plugin, types.ModuleType):  # conftest files, pytest_plugins modules
            modules[id(plugin)] = plugin
    for item in session.items:
        module = item.getparent(pytest.Module)
        if module is not None:
            modules.setdefault(id(module.obj), module.obj)
    declared = _state(session.config).declared
    for each in _declarations_in(modules.values()):
        declared[each.fixture] = each


def pytest_configure(config: pytest.Config) -> None:
    """Join (or, in the xdist controller, create) this run's worker lease."""
    state = _state(config)
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict):
        path = workerinput.get(_RUN_KEY)
        if path:
            state.run_lease_path = Path(path)
            state.run_lease = _lock.acquire(state.run_lease_path, "pytest run", shared=True)
        return
    if config.getoption("numprocesses", default=None):
        # The controller: each worker is told the file when xdist sets it up.
        run_file = Path(tempfile.gettempdir()) / f"daemon-controller-run-{uuid.uuid4().hex}.lock"
        state.run_file = run_file


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # noqa: ANN401 - xdist's WorkerController
    """The xdist controller names the run file to each worker it starts."""
    run_file = _state(node.config).run_file
    if run_file is not None:
        node.workerinput[_RUN_KEY] = str(run_file)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Settle the session daemons (last xdist worker); fail a run that left daemons running.

    The last xdist worker of the run stops the session daemons the run
    started. Done at the end of the worker's session (its session fixtures
    are torn down by then), before the worker reports "finished" to the
    xdist controller: after that report the controller may interrupt a worker
    that is slow to exit (SIGINT after 5 s), and ``pytest_unconfigure`` would
    never run (found with hypothesis's slow terminal summary). A worker hands
    its stop failures to the controller with that report.
    """
    config = session.config
    state = _state(config)
    if state.run_lease is not None:
        state.run_lease.release()
        state.run_lease = None
        _settle_if_last(state)
    workeroutput = getattr(config, "workeroutput", None)
    if isinstance(workeroutput, dict):
        workeroutput[_WORKER_FAILURES] = list(state.stop_failures)
    elif state.stop_failures and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _settle_if_last(state: _State) -> None:
    if state.run_lease_path is None:
        return
    last = _lock.acquire(state.run_lease_path, "pytest run", shared=False, blocking=False)
    if last is None:
        return  # another worker is still running; it will settle
    try:
        for declared in state.declared.values():
            if declared.scope == "session" and declared.stop is not False:
                try:
                    declared.daemon.running(stop=declared.stop).settle()
                except Exception as err:  # noqa: BLE001 - reported, and the other daemons still settled
                    _stop_failed(state, declared, err)
    finally:
        last.release()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:  # noqa: ANN401 - xdist's WorkerController
    """The xdist controller collects the stop failures a worker reports."""
    del error
    output = getattr(node, "workeroutput", None)
    failures = output.get(_WORKER_FAILURES) if isinstance(output, dict) else None
    if failures:
        _state(node.config).stop_failures.extend(str(line) for line in failures)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the daemons that could not be stopped: they are still running."""
    failures = _state(terminalreporter.config).stop_failures
    if not failures:
        return
    terminalreporter.section("daemons that could not be stopped", sep="=", red=True, bold=True)
    for line in failures:
        terminalreporter.line(line, red=True)
    terminalreporter.line("They may still be running; `daemon-controller down` or kill them.")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller removes the run file; a worker drops a lease it still holds."""
    state = _state(config)
    if state.run_file is not None:  # the controller: tidy up
        state.run_file.unlink(missing_ok=True)
        state.run_file = None
        return
    if state.run_lease is not None:  # sessionfinish never ran (an early error)
        state.run_lease.release()
        state.run_lease = None


def _log_size(daemon: Daemon) -> int:
    log = daemon.config.log_file
    if log is None:
        return 0
    try:
        return log.stat().st_size
    except OSError:
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember where each daemon's log ends before the test (and its fixtures) run."""
    state = _state(item.config)
    for name in getattr(item, "fixturenames", ()):
        if name in state.declared:
            state.log_offsets[name] = _log_size(state.declared[name].daemon)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the daemons' new log lines to the report of a failed test."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        state = _state(item.config)
        for name in getattr(item, "fixturenames", ()):
            declared = state.declared.get(name)
            log = None if declared is None else declared.daemon.config.log_file
            if declared is None or log is None:
                continue
            text = read_tail(log, since=state.log_offsets.get(name, 0)) or ""
            if text.strip():
                report.sections.append((f"daemon {declared.daemon.name!r} log ({name})", text))
    return report
