"""The pytest plugin: ``daemon_fixture(...)`` in a real, separate pytest run.

Every test writes a small test suite with
``pytester`` whose ``conftest.py`` declares an echo-server daemon with
``daemon_fixture``, runs it with ``runpytest_subprocess`` (a fresh interpreter,
so the plugin is loaded through its ``pytest11`` entry point, as for users) and
looks at the real effects afterwards: the daemon's log ("daemonized" lines
count the starts), the PIDs the inner tests saw, and the process table.

* function, module and session scopes: started and stopped per scope;
* a daemon that was running before the run is left running;
* a failing test's report shows the daemon's new log lines (the newest 64 KiB);
* a daemon that cannot be stopped is listed in the terminal summary and fails
  the run, with and without xdist;
* under ``pytest -n 4`` a session daemon is started once for all workers and
  stopped after the last one.
"""

from __future__ import annotations

import fcntl
import textwrap
from pathlib import Path

import psutil
import pytest
from echo_server import echo_command, free_port
from helpers import gone

from daemon_controller import Daemon

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parent
MARKER = "DC_TEST_ID"
NAME = "inner echo"

# -- helpers ------------------------------------------------------------------------------


def daemonized_count(log_file: Path) -> int:
    if not log_file.exists():
        return 0
    return sum(1 for line in log_file.read_text().splitlines() if line.endswith("] daemonized"))


def servers_using(pid_file: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names ``pid_file``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(pid_file) in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


class Inner:
    """The inner suite's daemon: its files, and the same ``Daemon`` for the outer test."""

    def __init__(self, pytester: pytest.Pytester, test_id: str) -> None:
        self.pytester = pytester
        base = pytester.path
        self.pid_file = base / "inner.pid"
        self.log_file = base / "inner.log"
        self.seen = base / "seen.txt"
        self.port = free_port()
        self.test_id = test_id
        self.command = echo_command(
            "--port",
            str(self.port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        )

    def daemon(self) -> Daemon:
        """The very daemon the inner conftest declares."""
        return (
            Daemon(NAME)
            .start_with(self.command)
            .ping_tcp("127.0.0.1", self.port)
            .pid(self.pid_file)
            .log(self.log_file)
            .start_timeout(15)
            .stop_timeout(10)
            .env({MARKER: self.test_id})
        )

    def conftest(self, scope: str, extra: str = "", builder: str = "") -> None:
        """The inner conftest: ``echo_daemon`` in ``scope``; ``builder`` adds to its Daemon."""
        self.pytester.makeconftest(
            textwrap.dedent(
                f"""
                import os
                import sys
                import time

                import pytest

                sys.path.insert(0, {str(TESTS_DIR)!r})

                from daemon_controller import Daemon
                from daemon_controller.pytest_plugin import daemon_fixture

                DAEMON = (
                    Daemon({NAME!r})
                    .start_with({self.command!r})
                    .ping_tcp("127.0.0.1", {self.port!r})
                    .pid({str(self.pid_file)!r})
                    .log({str(self.log_file)!r})
                    .start_timeout(15)
                    .stop_timeout(10)
                    .env({{{MARKER!r}: {self.test_id!r}}})
                    {builder}
                )
                LOG = {str(self.log_file)!r}
                echo_daemon = daemon_fixture("echo_daemon", DAEMON, scope={scope!r})


                @pytest.fixture
                def note(request, echo_daemon):
                    '''Record "worker test pid" for the outer test; check it runs.'''
                    assert echo_daemon is DAEMON
                    assert echo_daemon.is_running()
                    pid = echo_daemon.read_pid()
                    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                    with open({str(self.seen)!r}, "a") as f:
                        f.write(f"{{worker}} {{request.node.nodeid}} {{pid}}\\n")
                    return pid
                """
            )
            + textwrap.dedent(extra)
        )

    def run(self, *args: str, timeout: float = 60) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)

    def seen_rows(self) -> list[tuple[str, str, int]]:
        rows = []
        for line in self.seen.read_text().splitlines():
            worker, nodeid, pid = line.split(" ")
            rows.append((worker, nodeid, int(pid)))
        return rows

    def assert_stopped(self, pids: set[int]) -> None:
        for pid in pids:
            assert gone(pid), f"daemon PID {pid} still running after the run"
        assert not self.daemon().is_running()
        assert servers_using(self.pid_file) == []


@pytest.fixture
def inner(pytester: pytest.Pytester, test_id: str, monkeypatch: pytest.MonkeyPatch):
    # The inner run must not believe it is an xdist worker of the outer run.
    for variable in (
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
        "DAEMON_CONTROLLER_PYTEST_RUN",
        "PYTEST_ADDOPTS",
    ):
        monkeypatch.delenv(variable, raising=False)
    suite = Inner(pytester, test_id)
    yield suite
    # If the run left the daemon behind (a failed test), do not leave it to the sweeper.
    suite.daemon().stop()


# -- scopes ---------------------------------------------------------------------------------


def test_function_scoped_daemon_runs_for_each_test(inner: Inner):
    inner.conftest("function")
    inner.pytester.makepyfile(
        """
        def test_one(note):
            pass

        def test_two(echo_daemon, note):
            assert echo_daemon.read_pid() == note

        def test_three(note):
            pass

        def test_without_the_fixture():
            pass
        """
    )
    result = inner.run()
    result.assert_outcomes(passed=4)
    rows = inner.seen_rows()
    assert len(rows) == 3
    pids = {pid for _, _, pid in rows}
    # Started for each test that uses it and stopped after it.
    assert len(pids) == 3
    assert daemonized_count(inner.log_file) == 3
    inner.assert_stopped(pids)


def test_module_scoped_daemon_runs_once_per_module(inner: Inner):
    inner.conftest("module")
    body = """
        def test_a(note):
            pass

        def test_b(note):
            pass
        """
    inner.pytester.makepyfile(test_first=body, test_second=body)
    result = inner.run()
    result.assert_outcomes(passed=4)
    rows = inner.seen_rows()
    by_module: dict[str, set[int]] = {}
    for _, nodeid, pid in rows:
        by_module.setdefault(nodeid.split("::")[0], set()).add(pid)
    assert sorted(by_module) == ["test_first.py", "test_second.py"]
    assert all(len(pids) == 1 for pids in by_module.values())
    all_pids = set().union(*by_module.values())
    assert len(all_pids) == 2
    assert daemonized_count(inner.log_file) == 2
    inner.assert_stopped(all_pids)


def test_session_scoped_daemon_starts_once_for_six_tests(inner: Inner):
    inner.conftest("session")
    inner.pytester.makepyfile(
        test_one="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_first_module(note, i):
            pass
        """,
        test_two="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_second_module(note, i):
            pass
        """,
    )
    result = inner.run()
    result.assert_outcomes(passed=6)
    rows = inner.seen_rows()
    assert len(rows) == 6
    pids = {pid for _, _, pid in rows}
    assert len(pids) == 1
    assert daemonized_count(inner.log_file) == 1
    inner.assert_stopped(pids)


@pytest.mark.parametrize("scope", ["function", "session"])
def test_daemon_running_before_the_run_is_left_running(inner: Inner, scope: str):
    daemon = inner.daemon()
    daemon.start()
    try:
        before = daemon.read_pid()
        inner.conftest(scope)
        inner.pytester.makepyfile(
            """
            def test_one(note):
                pass

            def test_two(note):
                pass
            """
        )
        result = inner.run()
        result.assert_outcomes(passed=2)
        assert {pid for _, _, pid in inner.seen_rows()} == {before}
        assert daemon.read_pid() == before
        assert not gone(before)
        assert daemonized_count(inner.log_file) == 1
    finally:
        daemon.stop()
    assert gone(before) or not daemon.is_running()


# -- failure reports ------------------------------------------------------------------------


def test_failing_test_report_shows_the_daemons_new_log_lines(inner: Inner):
    inner.conftest("session")
    inner.pytester.makepyfile(
        """
        from conftest import LOG

        def write(line):
            with open(LOG, "a") as f:
                f.write(line + "\\n")

        def test_a_passes(note):
            write("line from the passing test")

        def test_b_fails(note):
            write("custom line from the failing test")
            assert False, "failing on purpose"

        def test_c_fails_without_the_daemon():
            assert False, "no daemon here"
        """
    )
    result = inner.run()
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    header = f"daemon '{NAME}' log (echo_daemon)"
    assert header in out
    assert "custom line from the failing test" in out
    # Only lines added during the failing test; passing tests show nothing.
    assert "line from the passing test" not in out
    assert out.count(header) == 1
    section = out[out.index(header) :]
    assert section.index("custom line from the failing test") < section.index(
        "test_c_fails_without_the_daemon"
    )
    inner.assert_stopped({pid for _, _, pid in inner.seen_rows()})


def test_failure_report_shows_the_newest_part_of_a_long_log(inner: Inner):
    """When a failing test makes the daemon log more than 64 KiB, its report shows the
    last 64 KiB (where the error usually is), not the first."""
    inner.conftest("function")
    inner.pytester.makepyfile(
        """
        from conftest import LOG

        def test_fails(note):
            with open(LOG, "a") as f:
                f.write("early line of the failing test\\n")
                f.write(("x" * 99 + "\\n") * 1000)
                f.write("final line before the failure\\n")
            assert False, "failing on purpose"
        """
    )
    result = inner.run()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    section = out[out.index(f"daemon '{NAME}' log (echo_daemon)") :]
    assert "final line before the failure" in section
    assert "early line of the failing test" not in section
    inner.assert_stopped({pid for _, _, pid in inner.seen_rows()})


# -- pytest-xdist ------------------------------------------------------------------------


def test_xdist_workers_share_one_session_daemon(inner: Inner):
    inner.conftest("session")
    inner.pytester.makepyfile(
        """
        import time

        import pytest

        @pytest.mark.parametrize("i", range(12))
        def test_uses_the_daemon(echo_daemon, note, i):
            time.sleep(0.2)
            assert echo_daemon.read_pid() == note
        """
    )
    # The hypothesis plugin (installed here) spends seconds in each worker's
    # terminal summary after the worker reported "finished"; that delay is
    # covered by the next test, not by this one.
    result = inner.run("-n", "4", "-p", "no:hypothesispytest", timeout=100)
    result.assert_outcomes(passed=12)
    rows = inner.seen_rows()
    assert len(rows) == 12
    workers = {worker for worker, _, _ in rows}
    assert len(workers) >= 2, workers
    assert all(worker.startswith("gw") for worker in workers)
    pids = {pid for _, _, pid in rows}
    assert len(pids) == 1
    assert daemonized_count(inner.log_file) == 1
    inner.assert_stopped(pids)


@pytest.mark.slow
def test_xdist_session_daemon_is_stopped_despite_a_slow_worker_shutdown(inner: Inner):
    """A plugin that is slow after a worker has reported "finished" must not leak the daemon.

    pytest-xdist gives a worker 5 s to exit once the controller starts tearing
    the workers down, then interrupts it (SIGINT). A worker's terminal summary
    runs in that window; plugins do real work there (hypothesis takes seconds
    on a loaded machine). Here it takes longer than the 5 s, as it would on a
    slow CI box: the session daemon must still be stopped at the end of the run.
    """
    inner.conftest(
        "session",
        extra="""

        def pytest_terminal_summary(terminalreporter):
            if os.environ.get("PYTEST_XDIST_WORKER"):
                time.sleep(7)  # a slow plugin in the worker, after "workerfinished"
        """,
    )
    inner.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_uses_the_daemon(note, i):
            pass
        """
    )
    result = inner.run("-n", "2", timeout=100)
    result.assert_outcomes(passed=4)
    pids = {pid for _, _, pid in inner.seen_rows()}
    assert len(pids) == 1
    assert daemonized_count(inner.log_file) == 1
    inner.assert_stopped(pids)


# -- a daemon that cannot be stopped --------------------------------------------------------

SUMMARY = "daemons that could not be stopped"


def test_a_daemon_that_cannot_be_stopped_is_reported_and_fails_the_run(inner: Inner):
    """A session daemon whose stop command fails is listed in the terminal summary (name,
    fixture, error) and the run exits 1; the daemon is left running, not hidden."""
    inner.conftest("session", builder='.stop_with("exit 1")')
    inner.pytester.makepyfile(
        """
        def test_one(note):
            pass

        def test_two(note):
            pass
        """
    )
    result = inner.run()
    result.assert_outcomes(passed=2, errors=1)  # the error: the last test's teardown
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert SUMMARY in out
    assert f"StopError in fixture 'echo_daemon': Daemon '{NAME}' could not be stopped" in out
    assert inner.daemon().is_running()  # the outer fixture stops it


def test_xdist_last_worker_that_cannot_stop_a_daemon_fails_the_run(inner: Inner):
    """Under xdist, the last worker's failure to stop a session daemon (after every test
    passed) reaches the controller: listed in its terminal summary, exit code 1."""
    inner.conftest("session", builder='.stop_with("exit 1")')
    inner.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_uses_the_daemon(note, i):
            pass
        """
    )
    result = inner.run("-n", "2", "-p", "no:hypothesispytest", timeout=100)
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert SUMMARY in out
    assert f"StopError in fixture 'echo_daemon': Daemon '{NAME}' could not be stopped" in out
    assert daemonized_count(inner.log_file) == 1
    assert inner.daemon().is_running()  # the outer fixture stops it


def test_runs_in_one_process_do_not_share_the_plugins_state(inner: Inner):
    """Two pytest runs in one process (pytester in-process): what the first run recorded
    (here a daemon it could not stop) is not reported again by the second."""
    inner.conftest("session", builder='.stop_with("exit 1")')
    inner.pytester.makepyfile(test_first="def test_one(note):\n    pass\n")
    first = inner.pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert SUMMARY in first.stdout.str()
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    inner.pytester.makeconftest("")
    (inner.pytester.path / "test_first.py").unlink()
    inner.pytester.makepyfile(test_second="def test_two():\n    pass\n")
    second = inner.pytester.runpytest_inprocess("-p", "no:cacheprovider")
    second.assert_outcomes(passed=1)
    assert SUMMARY not in second.stdout.str()
    assert second.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_a_run_nested_in_an_xdist_worker_settles_its_own_session_daemon(
    inner: Inner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...]
):
    # A pytest run started from inside an xdist worker (a docs example, a
    # pytester subprocess) inherits that worker's environment. It must not take
    # itself for one of the outer run's workers, whose last one would settle
    # its daemons: here that outer run is still going, so nobody would.
    outer_run = tmp_path / "outer-run.lock"
    outer_run.touch()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("DAEMON_CONTROLLER_PYTEST_RUN", str(outer_run))
    with outer_run.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # the outer run's other worker is still inside
        inner.conftest("session")
        inner.pytester.makepyfile(
            """
            import pytest

            @pytest.mark.parametrize("i", range(4))
            def test_uses_it(note, i):
                pass
            """
        )
        result = inner.run(*args)
        result.assert_outcomes(passed=4)
        pids = {pid for _, _, pid in inner.seen_rows()}
        assert len(pids) == 1
        inner.assert_stopped(pids)
