"""``@requires(...)``: functions that need daemons running while they run.

With two real echo-server daemons: sync and
``async def`` functions, daemons started together and stopped together
(recorded by a ``before_start`` callback and by a stop command that append to
the same file: every start comes before every stop), stacked decorators for an
order, the wrapper's name, docstring, signature and return value, exceptions,
``stop=False``, and bad arguments.
"""

from __future__ import annotations

import asyncio
import inspect
import shlex
import time
from typing import TYPE_CHECKING

import pytest
from helpers import gone, lines, wait_until

from daemon_controller import Daemon, StartError, requires

if TYPE_CHECKING:
    from pathlib import Path

# -- helpers ------------------------------------------------------------------------------


def recorded(echo, tmp_path: Path, name: str, order: Path, *args: str) -> Daemon:
    """An echo daemon in its own directory whose starts and stops append to ``order``.

    The stop command appends ``stop NAME`` and then sends SIGTERM to the PID in
    the PID file; the library waits for that process to exit. It is not run
    when the daemon is not running.
    """
    directory = tmp_path / name
    directory.mkdir()
    factory = type(echo)(directory, echo.test_id)
    pid_file = shlex.quote(str(factory.pid_file))
    stop = f"echo 'stop {name}' >> {shlex.quote(str(order))}; kill -TERM $(cat {pid_file})"

    def before_start() -> None:
        with order.open("a") as f:
            f.write(f"start {name}\n")

    return (
        factory(*args, name=name)
        .before_start(before_start)
        .stop_with(stop)
        .dont_stop_if_pid_file_invalid()
    )


@pytest.fixture
def order(tmp_path: Path) -> Path:
    return tmp_path / "order"


@pytest.fixture
def pair(echo, tmp_path, order):
    """Two daemons, stopped (if still running) after the test."""
    first = recorded(echo, tmp_path, "first", order)
    second = recorded(echo, tmp_path, "second", order)
    yield first, second
    for daemon in (first, second):
        daemon.stop()


def phases(path: Path) -> tuple[list[str], list[str]]:
    """The recorded starts and stops, each sorted; every start must precede every stop."""
    got = lines(path)
    starts = [line for line in got if line.startswith("start")]
    stops = [line for line in got if line.startswith("stop")]
    assert got == starts + stops, got
    return sorted(starts), sorted(stops)


EXPECTED_ORDER = (["start first", "start second"], ["stop first", "stop second"])


# -- sync functions -----------------------------------------------------------------------


def test_sync_function_runs_with_both_daemons(pair, order):
    first, second = pair
    seen = {}

    @requires(first, second)
    def work(a, b=2, *, c=3):
        seen["running"] = (first.is_running(), second.is_running())
        seen["pids"] = (first.read_pid(), second.read_pid())
        return a + b + c

    assert not first.is_running()
    assert not second.is_running()
    assert work(1, c=10) == 13
    assert seen["running"] == (True, True)
    assert None not in seen["pids"]
    assert phases(order) == EXPECTED_ORDER
    assert all(wait_until(lambda pid=pid: gone(pid)) for pid in seen["pids"])
    assert not first.is_running()
    assert not second.is_running()


def test_stacked_decorators_give_an_order(pair, order):
    first, second = pair

    @requires(second)
    @requires(first)
    def work():
        return first.is_running() and second.is_running()

    assert work() is True
    assert lines(order) == ["start second", "start first", "stop first", "stop second"]


def test_daemons_start_together(echo, tmp_path, order):
    # Each takes 1 s to answer: one after the other would take 2 s.
    slow = [recorded(echo, tmp_path, name, order, "--wait-before-listen", "1") for name in "ab"]

    @requires(*slow)
    def work():
        return [daemon.read_pid() for daemon in slow]

    try:
        started = time.monotonic()
        pids = work()
        took = time.monotonic() - started
        assert None not in pids
        # The second start began long before the first could have finished.
        assert took < 1.9, f"two 1 s starts took {took:.2f} s: not concurrent"
        assert phases(order) == (["start a", "start b"], ["stop a", "stop b"])
    finally:
        for daemon in slow:
            daemon.stop()


def test_sync_wrapper_keeps_name_doc_and_signature(pair):
    first, second = pair

    def work(a: int, b: str = "x", *args: int, c: float = 1.0, **kwargs: str) -> str:
        """Do the work."""
        return f"{a}{b}"

    wrapped = requires(first, second)(work)
    assert wrapped.__name__ == "work"
    assert wrapped.__qualname__ == work.__qualname__
    assert wrapped.__doc__ == "Do the work."
    assert inspect.signature(wrapped) == inspect.signature(work)
    assert wrapped.__wrapped__ is work
    assert not inspect.iscoroutinefunction(wrapped)


def test_exception_propagates_and_daemons_are_stopped(pair, order):
    first, second = pair
    error = ValueError("the function failed")
    pids = []

    @requires(first, second)
    def work():
        pids.extend([first.read_pid(), second.read_pid()])
        raise error

    with pytest.raises(ValueError) as caught:
        work()
    assert caught.value is error
    assert phases(order) == EXPECTED_ORDER
    assert None not in pids
    assert all(wait_until(lambda pid=pid: gone(pid)) for pid in pids)


def test_second_daemon_failing_to_start_leaves_the_first_stopped(echo, tmp_path, order):
    first = recorded(echo, tmp_path, "first", order)
    broken = recorded(
        echo,
        tmp_path,
        "broken",
        order,
        "--before-daemonize-message",
        "broken config",
        "--exit-before-daemonize",
        "1",
    )
    called = []

    @requires(first, broken)
    def work():
        called.append(True)

    try:
        with pytest.raises(StartError) as caught:
            work()
        assert "broken config" in caught.value.output
        assert called == []
        # Both were tried; first was either still starting (and its start was
        # aborted) or already up (and was stopped again with its stop command).
        starts, stops = phases(order)
        assert starts == ["start broken", "start first"]
        assert stops in ([], ["stop first"])
        assert not first.is_running()
    finally:
        first.stop()


def test_stop_false_leaves_them_running(pair, order):
    first, second = pair

    @requires(first, second, stop=False)
    def work():
        return first.read_pid(), second.read_pid()

    pids = work()
    assert None not in pids
    assert (first.read_pid(), second.read_pid()) == pids
    assert phases(order) == (["start first", "start second"], [])
    # A second call finds them running and leaves them so.
    assert work() == pids
    assert phases(order) == (["start first", "start second"], [])


def test_daemon_running_before_the_call_is_left_running(pair, order):
    first, second = pair
    first.start()
    before = first.read_pid()

    @requires(first, second)
    def work():
        return first.read_pid()

    assert work() == before
    assert first.read_pid() == before
    assert not second.is_running()
    assert phases(order) == (["start first", "start second"], ["stop second"])


def test_each_call_is_its_own_block(pair, order):
    first, second = pair

    @requires(first, second)
    def work(depth):
        if depth:
            # A nested call of the same decorated function: the outer block
            # is still inside, so leaving the inner one stops nothing.
            work(depth - 1)
            return first.is_running() and second.is_running()
        return None

    assert work(1) is True
    assert phases(order) == EXPECTED_ORDER


# -- async functions ----------------------------------------------------------------------


def test_async_function_runs_with_both_daemons(pair, order):
    first, second = pair
    seen = {}

    @requires(first, second)
    async def work(a, *, b):
        seen["running"] = await asyncio.to_thread(lambda: (first.is_running(), second.is_running()))
        seen["pids"] = await asyncio.to_thread(lambda: (first.read_pid(), second.read_pid()))
        await asyncio.sleep(0)
        return a * b

    assert inspect.iscoroutinefunction(work)
    assert asyncio.run(work(6, b=7)) == 42
    assert seen["running"] == (True, True)
    assert None not in seen["pids"]
    assert phases(order) == EXPECTED_ORDER
    assert all(wait_until(lambda pid=pid: gone(pid)) for pid in seen["pids"])
    assert not first.is_running()
    assert not second.is_running()


def test_async_wrapper_keeps_name_doc_and_signature(pair):
    first, second = pair

    async def fetch(url: str, *, retries: int = 3) -> bytes:
        """Fetch something."""
        return url.encode()

    wrapped = requires(first, second)(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch something."
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert wrapped.__wrapped__ is fetch
    assert inspect.iscoroutinefunction(wrapped)


def test_async_exception_propagates_and_daemons_are_stopped(pair, order):
    first, second = pair
    error = KeyError("async failure")

    @requires(first, second)
    async def work():
        raise error

    with pytest.raises(KeyError) as caught:
        asyncio.run(work())
    assert caught.value is error
    assert phases(order) == EXPECTED_ORDER
    assert not first.is_running()
    assert not second.is_running()


def test_async_stop_false_leaves_them_running(pair, order):
    first, second = pair

    @requires(first, second, stop=False)
    async def work():
        return await asyncio.to_thread(lambda: (first.read_pid(), second.read_pid()))

    pids = asyncio.run(work())
    assert None not in pids
    assert (first.read_pid(), second.read_pid()) == pids
    assert phases(order) == (["start first", "start second"], [])


# -- bad arguments --------------------------------------------------------------------------


def test_requires_without_daemons_is_a_type_error():
    with pytest.raises(TypeError, match="at least one daemon"):
        requires()


def test_requires_with_something_else_is_a_type_error(echo):
    with pytest.raises(TypeError, match="Daemon"):
        requires(echo(), "redis")  # type: ignore[arg-type]
