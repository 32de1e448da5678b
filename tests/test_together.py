"""Several daemons at once: ``all_running()`` and ``start_all()``, with real daemons.

* the daemons start concurrently (every start begins before any daemon is
  ready), sync and async, and are stopped together after the block;
* all or nothing: one failure aborts the starts still under way, stops the
  daemons the block started, leaves alone one that ran before, and is raised
  as itself; several are raised as one ``StartFailures`` naming each;
* Ctrl-C while the starts run, and a timeout around ``async with``, take the
  same way out: nothing keeps running, no lock or lease stays held;
* ``start_all()``, the machinery for the CLI's ``up``: per-daemon outcomes as
  they come, with and without rolling back.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest
from helpers import gone, wait_until

from daemon_controller import (
    AllRunning,
    Daemon,
    StartError,
    StartFailures,
    _pidfile,
    all_running,
)
from daemon_controller._together import Outcome, start_all

if TYPE_CHECKING:
    from pathlib import Path

PROMPT = 3.0


class Several:
    """Echo daemons of one test, each in a directory of its own, with a record file."""

    def __init__(self, echo, tmp_path: Path) -> None:
        self.echo = echo
        self.tmp_path = tmp_path
        self.began: dict[str, float] = {}

    def __call__(self, name: str, *args: str) -> Daemon:
        directory = self.tmp_path / name
        directory.mkdir()
        factory = type(self.echo)(directory, self.echo.test_id)
        record = directory / "record.jsonl"

        def before_start() -> None:
            self.began[name] = time.monotonic()

        return factory(*args, "--record", str(record), name=name).before_start(before_start)

    def listening(self, daemon: Daemon) -> float:
        """When the daemon started listening (CLOCK_MONOTONIC, as recorded by itself)."""
        record = daemon.config.pid_file.parent / "record.jsonl"
        lines = [json.loads(line) for line in record.read_text().splitlines()]
        return max(line["monotonic"] for line in lines if line["event"] == "listening")

    def files(self, *daemons: Daemon) -> list[Path]:
        return [path for d in daemons for path in (d._target().files.lock, d._target().files.users)]


@pytest.fixture
def several(echo, tmp_path) -> Several:
    return Several(echo, tmp_path)


# -- together ---------------------------------------------------------------------------------


def test_all_running_starts_them_together_and_stops_them_after(several, lock_probe):
    daemons = [several(name, "--wait-before-listen", "1") for name in ("a", "b", "c")]
    with all_running(*daemons) as inside:
        assert inside == tuple(daemons)
        pids = [d.read_pid() for d in daemons]
    assert None not in pids
    # Concurrent: every start began before any daemon was ready.
    assert max(several.began.values()) < min(several.listening(d) for d in daemons)
    assert all(wait_until(lambda pid=pid: gone(pid)) for pid in pids)
    assert not any(d.is_running() for d in daemons)
    assert lock_probe.held(*several.files(*daemons)) == []


def test_all_running_async_starts_them_together(several):
    daemons = [several(name, "--wait-before-listen", "1") for name in ("a", "b")]

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        async with all_running(*daemons) as inside:
            during = ticks
            pids = [await d.aread_pid() for d in inside]
        task.cancel()
        return during, pids

    during, pids = asyncio.run(main())
    assert during >= 20, f"the loop ticked only {during} times during the starts"
    assert max(several.began.values()) < min(several.listening(d) for d in daemons)
    assert all(wait_until(lambda pid=pid: gone(pid)) for pid in pids)


def test_a_daemon_running_before_is_left_running(several):
    before, fresh = several("before"), several("fresh")
    before.start()
    try:
        pid = before.read_pid()
        with all_running(before, fresh):
            fresh_pid = fresh.read_pid()
        assert before.read_pid() == pid
        assert wait_until(lambda: gone(fresh_pid))
    finally:
        before.stop()


def test_all_running_as_a_decorator(several):
    a, b = several("a"), several("b")

    @all_running(a, b)
    def work(x):
        return x, a.is_running() and b.is_running()

    @all_running(a, b)
    async def awork(x):
        return x, await a.ais_running() and await b.ais_running()

    assert work(1) == (1, True)
    assert asyncio.run(awork(2)) == (2, True)
    assert not a.is_running()
    assert not b.is_running()


# -- all or nothing ---------------------------------------------------------------------------


def test_one_failure_aborts_the_rest_and_is_raised_as_itself(several, lock_probe):
    good = several("good")
    slow = several("slow", "--wait-before-listen", "30")
    broken = several(
        "broken", "--before-daemonize-message", "broken config", "--exit-before-daemonize", "1"
    )
    began = time.monotonic()
    with pytest.raises(StartError) as caught, all_running(good, slow, broken):
        pytest.fail("entered although a start failed")
    assert time.monotonic() - began < 15  # not slow's start_timeout of 15 s
    error = caught.value
    assert type(error) is StartError
    assert error.identifier == "broken"
    assert "broken config" in error.output
    assert not good.is_running()
    assert not slow.is_running()
    assert not several.echo.marked()
    assert lock_probe.held(*several.files(good, slow, broken)) == []
    # The error says which starts it cut short.
    assert any("'slow'" in note for note in getattr(error, "__notes__", []))


def test_several_failures_are_one_start_failures(several):
    both_failing = threading.Barrier(2, timeout=30)

    def fail(name: str):
        def before_start() -> None:
            both_failing.wait()  # so that neither is cancelled by the other's failure
            raise RuntimeError(f"{name}: bad configuration")

        return before_start

    good = several("good")
    one = several("one").before_start(fail("one"))
    two = several("two").before_start(fail("two"))
    with pytest.raises(StartFailures) as caught, all_running(one, good, two):
        pytest.fail("entered although starts failed")
    error = caught.value
    assert isinstance(error, StartError)
    assert list(error.errors) == ["one", "two"]
    assert error.total == 3
    text = str(error)
    assert text.startswith("2 of 3 daemons failed to start: 'one', 'two'")
    assert "RuntimeError: one: bad configuration" in text
    assert "RuntimeError: two: bad configuration" in text
    # Not our errors: their tracebacks are kept, chained as an exception group.
    assert isinstance(error.__cause__, ExceptionGroup)
    assert len(error.__cause__.exceptions) == 2
    assert not good.is_running()
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == text


def test_start_failures_text_holds_each_error_in_full(several):
    errors = {}
    for name in ("one", "two"):
        daemon = several(
            name, "--stdout-message", f"{name} says no", "--exit-before-daemonize", "2"
        )
        with pytest.raises(StartError) as caught:
            daemon.start()
        errors[name] = caught.value
    text = str(StartFailures(errors, 3))
    assert text.splitlines()[0] == "2 of 3 daemons failed to start: 'one', 'two'"
    assert "- Daemon 'one' failed to start: the start command failed." in text
    assert "  one says no" in text
    assert "  two says no" in text
    assert "  (exited with status 2)" in text


def test_a_timeout_around_async_all_running_aborts_every_start(several, lock_probe):
    slow = [several(name, "--wait-before-listen", "30") for name in ("a", "b", "c")]

    async def main():
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0), all_running(*slow):
                pytest.fail("entered")
        return time.monotonic() - began

    assert asyncio.run(main()) < 1.0 + PROMPT
    assert not any(d.is_running() for d in slow)
    assert not several.echo.marked()
    assert lock_probe.held(*several.files(*slow)) == []


def test_ctrl_c_while_starting_stops_everything(several, lock_probe):
    quick = several("quick")
    slow = [several(name, "--wait-before-listen", "30") for name in ("a", "b")]
    main_thread = threading.main_thread().ident
    assert threading.get_ident() == main_thread

    def interrupt() -> None:
        assert wait_until(lambda: all(_pidfile.read_pid(d.config.pid_file) for d in slow))
        signal.pthread_kill(main_thread, signal.SIGINT)

    timer = threading.Thread(target=interrupt)
    timer.start()
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), all_running(quick, *slow):
            pytest.fail("entered")
    finally:
        timer.join(30)
    assert time.monotonic() - began < 15  # not the slow ones' start_timeout
    assert not quick.is_running()
    assert not any(d.is_running() for d in slow)
    assert not several.echo.marked()
    assert lock_probe.held(*several.files(quick, *slow)) == []


# -- start_all(): for the CLI's ``up`` ---------------------------------------------------------


def test_start_all_reports_each_daemon_and_leaves_them_running(several):
    running = several("running")
    fresh = several("fresh", "--wait-before-listen", "0.5")
    broken = several("broken", "--exit-before-daemonize", "1")
    running.start()
    reported: list[Outcome] = []
    try:
        outcomes = start_all([running, fresh, broken], rollback=False, report=reported.append)
        assert [o.daemon for o in outcomes] == [running, fresh, broken]
        by_name = {o.daemon.name: o for o in outcomes}
        assert by_name["running"].started is False
        assert by_name["running"].pid == running.read_pid()
        assert by_name["fresh"].started is True
        assert by_name["fresh"].pid == fresh.read_pid() is not None
        assert isinstance(by_name["broken"].error, StartError)
        # Reported as they came: the failure and the running one before the slow start.
        assert [o.daemon.name for o in reported][-1] == "fresh"
        assert sorted(o.daemon.name for o in reported) == ["broken", "fresh", "running"]
        assert running.is_running()
        assert fresh.is_running()
    finally:
        running.stop()
        fresh.stop()


def test_start_all_with_rollback_stops_only_what_it_started(several):
    running = several("running")
    fresh = several("fresh")
    broken = several("broken", "--exit-after-pid", "1", "--wait-before-pid", "0.5")
    running.start()
    try:
        with pytest.raises(StartError) as caught:
            start_all([running, fresh, broken])
        assert caught.value.identifier == "broken"
        assert running.is_running()
        assert not fresh.is_running()
        assert not broken.is_running()
    finally:
        running.stop()


def test_start_all_whose_report_fails_rolls_back_and_raises(several):
    # A live display that breaks (a closed terminal) must not leave starts
    # running unwatched: they are aborted, what started is stopped, and the
    # display's error comes out.
    fast = several("fast")
    slow = several("slow", "--wait-before-listen", "30")

    def report(outcome: Outcome) -> None:
        msg = f"display broke while showing {outcome.daemon.name}"
        raise BrokenPipeError(msg)

    began = time.monotonic()
    with pytest.raises(BrokenPipeError, match="display broke while showing fast"):
        start_all([fast, slow], report=report)
    assert time.monotonic() - began < 15  # slow's start was aborted, not waited for
    assert not fast.is_running()
    assert not slow.is_running()
    assert not several.echo.marked()


# -- arguments -------------------------------------------------------------------------------


def test_all_running_needs_daemons(echo):
    with pytest.raises(TypeError, match="at least one daemon"):
        all_running()
    with pytest.raises(TypeError, match="Daemon objects"):
        all_running(echo(), "redis")  # type: ignore[arg-type]
    block = all_running(echo())
    assert isinstance(block, AllRunning)
    assert "echo" in repr(block)
