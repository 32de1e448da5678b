"""``Daemon.running()``: a daemon for the duration of a block, shared safely.

With real echo-server daemons:

* ``with d.running() as x``: yields the daemon, starts it if needed, stops it on
  leaving only if the block started it; a daemon running before is left running;
* overlapping blocks in two threads and in two processes, nested blocks in one
  thread: the daemon stays up (same PID) while any block is inside and is gone
  after the last one leaves; a process SIGKILLed inside a block does not keep
  the others from stopping it;
* several threads and several processes entering at once start it exactly once;
* a start that fails is shared with everybody who was waiting for it (same
  ``StartError``, one spawn), also for ``connect()``; a later fresh attempt
  tries again;
* ``stop=True`` and ``stop=False``;
* exceptions inside the block propagate unchanged; an error while stopping does
  not hide them;
* ``async with`` keeps the event loop running during a start, and a
  cancellation while entering aborts the start;
* ``running()`` as a decorator, for sequential and concurrent calls.

Other processes are ``helpers.Child`` processes running ``_ENTER_BLOCK``: they
rebuild the same daemon, enter a block when told to, say what they saw and
leave when told to.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import (
    BeforeStart,
    count_starts,
    daemonized_count,
    gone,
    kill_quietly,
    release_together,
    wait_until,
)

from daemon_controller import Daemon, StartError, StopError, _lock, _pidfile

if TYPE_CHECKING:
    from pathlib import Path

FAIL_MESSAGE = "cannot start: broken configuration"

# -- helpers ------------------------------------------------------------------------------


class Worker(threading.Thread):
    """A thread that keeps what its function returned or raised."""

    def __init__(self, function) -> None:
        super().__init__(daemon=True)
        self.function = function
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as err:
            self.error = err

    def finish(self, timeout: float = 60.0):
        """Join; re-raise what the function raised; return its result."""
        self.join(timeout)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def started(function) -> Worker:
    worker = Worker(function)
    worker.start()
    return worker


def enter_unstartable(daemon: Daemon) -> None:
    """Enter a block of a daemon that cannot start (raises its StartError)."""
    with daemon.running():
        pytest.fail("entered the block of a daemon that cannot start")


# -- other processes ----------------------------------------------------------------------

# args: the start record file, the before_start pause, running()'s stop argument (JSON).
_ENTER_BLOCK = """
from helpers import BeforeStart
from daemon_controller import StartError
record, pause, stop = args[0], float(args[1]), json.loads(args[2])
daemon = daemon.before_start(BeforeStart(record, pause))
tell_parent("ready")
wait_for_parent()
try:
    with daemon.running(stop=stop):
        tell_parent({"pid": daemon.read_pid(), "me": os.getpid()})
        wait_for_parent()
except StartError as err:
    tell_parent({"error": {"output": err.output, "log": err.log, "message": err.message,
                           "exit_status": err.exit_status}})
"""


def entering(child, daemon: Daemon, counter: Path, count: int = 1, pause: float = 0.0) -> list:
    """``count`` other processes entering a block of ``daemon`` at once.

    Each child's ``message()`` then says what it saw inside (or its
    ``StartError``); ``leave()`` lets it out and checks that it exited cleanly.
    """
    children = [
        child(_ENTER_BLOCK, str(counter), str(pause), json.dumps(None), daemon=daemon)
        for _ in range(count)
    ]
    release_together(children)
    return children


def leave(proc) -> None:
    """Let a child out of its block and wait until it has exited successfully."""
    proc.send("leave")
    proc.finish()


# -- basic blocks -------------------------------------------------------------------------


def test_block_yields_the_daemon_and_stops_what_it_started(echo):
    daemon = echo()
    assert not daemon.is_running()
    pid = None
    try:
        with daemon.running() as inside:
            assert inside is daemon
            assert daemon.is_running()
            pid = daemon.read_pid()
            assert pid is not None
            assert "echo_server" in " ".join(psutil.Process(pid).cmdline())
            with socket.create_connection(("127.0.0.1", echo.port), timeout=5):
                pass
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
        assert not echo.pid_file.exists()
    finally:
        kill_quietly(pid if pid is not None and not gone(pid) else None)


def test_daemon_running_before_the_block_is_left_running(echo):
    daemon = echo()
    daemon.start()
    try:
        pid = daemon.read_pid()
        with daemon.running() as inside:
            assert inside is daemon
            assert daemon.read_pid() == pid
        assert daemon.is_running()
        assert daemon.read_pid() == pid
        assert not gone(pid)
        # Also when blocks overlapped and the last one leaves.
        with daemon.running(), daemon.running():
            assert daemon.read_pid() == pid
        assert daemon.read_pid() == pid
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))


def test_daemon_restarted_inside_the_block_is_stopped_on_leaving(echo):
    # The block started the daemon, so it owns the restarted one too.
    daemon = echo()
    first = second = None
    try:
        with daemon.running():
            first = daemon.read_pid()
            daemon.restart()
            second = daemon.read_pid()
            assert second is not None
            assert second != first
            assert gone(first)
        assert wait_until(lambda: gone(second))
        assert not daemon.is_running()
    finally:
        for pid in (first, second):
            kill_quietly(pid if pid is not None and not gone(pid) else None)


def test_daemon_running_before_the_block_and_restarted_inside_is_left_running(echo):
    daemon = echo()
    daemon.start()
    try:
        with daemon.running():
            daemon.restart()
            restarted = daemon.read_pid()
        assert daemon.read_pid() == restarted
        assert not gone(restarted)
    finally:
        daemon.stop()


@pytest.mark.timeout(60)
def test_restart_while_the_last_block_settles_neither_waits_nor_hands_over(echo):
    # The last block out holds .users exclusively while it waits for the daemon
    # lock; restart() holds the daemon lock, so it must not wait for .users.
    # A daemon that was not restarted from inside a block keeps no owner.
    daemon = echo()
    daemon.start()
    try:
        files = daemon._target().files
        first = daemon.read_pid()
        assert first is not None
        _pidfile.write(files.owner, first)  # as if a block had started it
        settling = _lock.acquire(files.users, "test", shared=False)
        assert settling is not None
        try:
            daemon.restart()
        finally:
            settling.release()
        assert daemon.read_pid() not in (None, first)
        assert _pidfile.read_pid(files.owner) == first
    finally:
        daemon.stop()


def test_running_rejects_a_bad_stop_argument(echo):
    daemon = echo()
    with pytest.raises(TypeError, match="running"):
        daemon.running(stop="yes")  # type: ignore[arg-type]


def test_a_daemon_can_be_run_again_after_a_block_stopped_it(echo):
    daemon = echo()
    with daemon.running():
        first = daemon.read_pid()
    assert wait_until(lambda: gone(first))
    with daemon.running():
        second = daemon.read_pid()
        assert second is not None
        assert second != first
    assert wait_until(lambda: gone(second))
    assert daemonized_count(echo.log_file) == 2


# -- overlapping blocks in one process --------------------------------------------------


@pytest.mark.parametrize("first_out", ["starter", "joiner"])
def test_overlapping_blocks_in_two_threads(echo, first_out):
    daemon = echo()
    entered = threading.Event()
    leave = threading.Event()

    def starter():
        with daemon.running():
            pid = daemon.read_pid()
            entered.set()
            assert leave.wait(60)
        return pid

    worker = started(starter)
    try:
        assert entered.wait(60)
        with daemon.running():
            pid = daemon.read_pid()
            assert pid is not None
            if first_out == "starter":
                leave.set()
                assert worker.finish() == pid
                # The block that started it left; we are still inside.
                assert daemon.read_pid() == pid
                assert not gone(pid)
        if first_out == "joiner":
            # We left, the starting block is still inside.
            assert daemon.read_pid() == pid
            assert not gone(pid)
            leave.set()
            assert worker.finish() == pid
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
        assert daemonized_count(echo.log_file) == 1
    finally:
        leave.set()
        worker.join(30)
        daemon.stop()


def test_nested_blocks_in_one_thread(echo):
    daemon = echo()
    with daemon.running():
        pid = daemon.read_pid()
        with daemon.running() as inner:
            assert inner is daemon
            assert daemon.read_pid() == pid
        assert daemon.read_pid() == pid
        assert not gone(pid)
        with daemon.running(), daemon.running():
            assert daemon.read_pid() == pid
        assert daemon.read_pid() == pid
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()
    assert daemonized_count(echo.log_file) == 1


def test_several_threads_entering_at_once_start_it_once(echo, tmp_path):
    counter = tmp_path / "starts"
    daemon = echo("--wait-before-listen", "0.3").before_start(BeforeStart(counter))
    go = threading.Barrier(6)
    all_inside = threading.Barrier(6)

    def enter():
        go.wait(60)
        with daemon.running():
            pid = daemon.read_pid()
            all_inside.wait(60)
        return pid

    workers = [started(enter) for _ in range(6)]
    try:
        pids = [worker.finish() for worker in workers]
        assert len(set(pids)) == 1
        assert pids[0] is not None
        assert count_starts(counter) == 1
        assert daemonized_count(echo.log_file) == 1
        assert wait_until(lambda: gone(pids[0]))
        assert not daemon.is_running()
    finally:
        for worker in workers:
            worker.join(30)
        daemon.stop()


# -- overlapping blocks in several processes --------------------------------------------


@pytest.mark.parametrize("starter", ["child", "parent"])
def test_overlapping_blocks_in_two_processes(echo, tmp_path, child, starter):
    """The block that started the daemon leaves first; the other process stops it."""
    daemon = echo()
    counter = tmp_path / "starts"
    try:
        if starter == "child":
            (other,) = entering(child, daemon, counter)
            pid = other.message()["pid"]
            assert pid is not None
            with daemon.running():
                assert daemon.read_pid() == pid
                leave(other)
                assert daemon.read_pid() == pid
                assert not gone(pid)
        else:
            with daemon.running():
                pid = daemon.read_pid()
                (other,) = entering(child, daemon, counter)
                assert other.message()["pid"] == pid
            # We started it and left; the child is still inside.
            assert daemon.read_pid() == pid
            assert not gone(pid)
            leave(other)
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
        assert daemonized_count(echo.log_file) == 1
    finally:
        daemon.stop()


@pytest.mark.parametrize("starter", ["killed child", "parent"])
def test_process_killed_inside_a_block_does_not_keep_the_daemon_up(echo, tmp_path, child, starter):
    daemon = echo()
    counter = tmp_path / "starts"

    def kill(other) -> None:
        other.signal(signal.SIGKILL)
        assert other.wait() == -signal.SIGKILL

    try:
        if starter == "killed child":
            (other,) = entering(child, daemon, counter)
            pid = other.message()["pid"]
            with daemon.running():
                assert daemon.read_pid() == pid
                kill(other)
                assert daemon.read_pid() == pid
        else:
            with daemon.running():
                pid = daemon.read_pid()
                (other,) = entering(child, daemon, counter)
                assert other.message()["pid"] == pid
                kill(other)
                assert daemon.read_pid() == pid
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
    finally:
        daemon.stop()


def test_several_processes_entering_at_once_start_it_once(echo, tmp_path, child):
    daemon = echo("--wait-before-listen", "0.3")
    counter = tmp_path / "starts"
    try:
        children = entering(child, daemon, counter, count=4)
        reports = [other.message() for other in children]
        pids = {report["pid"] for report in reports}
        assert len(pids) == 1
        (pid,) = pids
        assert pid is not None
        assert daemon.read_pid() == pid
        assert count_starts(counter) == 1
        assert daemonized_count(echo.log_file) == 1
        for other in children:
            leave(other)
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
    finally:
        daemon.stop()


# -- a failed start is shared --------------------------------------------------------------


def failing(echo, counter: Path, pause: float = 0.5) -> Daemon:
    return echo(
        "--before-daemonize-message", FAIL_MESSAGE, "--exit-before-daemonize", "1"
    ).before_start(BeforeStart(counter, pause))


def assert_same_failure(errors: list[BaseException]) -> None:
    assert all(isinstance(err, StartError) for err in errors), errors
    first = errors[0]
    assert FAIL_MESSAGE in first.output
    for err in errors[1:]:
        assert err.output == first.output
        assert err.log == first.log
        assert err.message == first.message
        assert err.exit_status == first.exit_status == 1


def test_failed_start_is_shared_by_threads_entering_at_once(echo, tmp_path):
    counter = tmp_path / "starts"
    daemon = failing(echo, counter)
    go = threading.Barrier(6)

    def enter():
        go.wait(60)
        enter_unstartable(daemon)

    workers = [started(enter) for _ in range(6)]
    for worker in workers:
        worker.join(60)
        assert not worker.is_alive()
    assert_same_failure([worker.error for worker in workers])
    assert count_starts(counter) == 1
    assert not daemon.is_running()
    assert echo.marked() == []

    # A later, fresh attempt tries again.
    with pytest.raises(StartError) as again:
        enter_unstartable(daemon)
    assert FAIL_MESSAGE in again.value.output
    assert count_starts(counter) == 2


def test_entrant_that_waited_for_a_failing_start_gets_its_error(echo, tmp_path):
    """Deterministic: the second block enters while the first one is spawning."""
    counter = tmp_path / "starts"
    spawning = threading.Event()
    record = BeforeStart(counter, pause=1.0)

    def before_start():
        spawning.set()
        record()

    daemon = echo(
        "--before-daemonize-message", FAIL_MESSAGE, "--exit-before-daemonize", "1"
    ).before_start(before_start)

    first = started(lambda: enter_unstartable(daemon))
    assert spawning.wait(60)
    with pytest.raises(StartError) as late:
        enter_unstartable(daemon)
    first.join(60)
    assert_same_failure([first.error, late.value])
    assert count_starts(counter) == 1


def refused_connection(port: int):
    """A connect function for ``Daemon.connect``: ``None`` when nobody listens."""

    def connect():
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            return None

    return connect


def test_failed_start_is_shared_by_threads_connecting_at_once(echo, tmp_path):
    counter = tmp_path / "starts"
    daemon = failing(echo, counter)
    go = threading.Barrier(6)
    connect = refused_connection(echo.port)

    def enter():
        go.wait(60)
        sock = daemon.connect(connect)
        sock.close()
        pytest.fail("connected to a daemon that cannot start")

    workers = [started(enter) for _ in range(6)]
    for worker in workers:
        worker.join(60)
        assert not worker.is_alive()
    assert_same_failure([worker.error for worker in workers])
    assert count_starts(counter) == 1

    with pytest.raises(StartError):
        daemon.connect(connect)
    assert count_starts(counter) == 2
    assert echo.marked() == []


def test_connect_that_waited_for_a_failing_start_gets_its_error(echo, tmp_path):
    """Deterministic: the second connect() begins while the first one is spawning."""
    counter = tmp_path / "starts"
    spawning = threading.Event()
    record = BeforeStart(counter, pause=1.0)

    def before_start():
        spawning.set()
        record()

    daemon = echo(
        "--before-daemonize-message", FAIL_MESSAGE, "--exit-before-daemonize", "1"
    ).before_start(before_start)
    connect = refused_connection(echo.port)
    first = started(lambda: daemon.connect(connect))
    assert spawning.wait(60)
    with pytest.raises(StartError) as late:
        daemon.connect(connect)
    first.join(60)
    assert_same_failure([first.error, late.value])
    assert count_starts(counter) == 1


def test_failed_start_is_shared_by_processes_entering_at_once(echo, tmp_path, child):
    """Fails after daemonizing, so that the shared log lines are not empty either."""
    counter = tmp_path / "starts"
    daemon = echo(
        "--before-daemonize-message",
        FAIL_MESSAGE,
        "--log-message",
        "configuration is broken",
        "--exit-after-daemonize",
        "1",
    )
    children = entering(child, daemon, counter, count=4, pause=0.5)
    errors = [other.message()["error"] for other in children]
    for other in children:
        other.finish()
    assert count_starts(counter) == 1
    assert FAIL_MESSAGE in errors[0]["output"]
    assert "configuration is broken" in errors[0]["log"]
    assert all(error == errors[0] for error in errors)
    assert not daemon.is_running()


# -- stop=True and stop=False --------------------------------------------------------------


def test_stop_true_stops_although_another_block_is_inside(echo):
    daemon = echo()
    entered = threading.Event()
    leave = threading.Event()

    def other():
        with daemon.running():
            entered.set()
            assert leave.wait(60)

    worker = started(other)
    try:
        assert entered.wait(60)
        pid = daemon.read_pid()
        with daemon.running(stop=True) as inside:
            assert inside is daemon
            assert daemon.read_pid() == pid
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
        leave.set()
        worker.finish()  # leaving after the daemon was stopped is no error
        assert not daemon.is_running()
    finally:
        leave.set()
        worker.join(30)
        daemon.stop()


def test_stop_true_stops_a_daemon_that_was_running_before(echo):
    daemon = echo()
    daemon.start()
    try:
        pid = daemon.read_pid()
        with daemon.running(stop=True):
            assert daemon.read_pid() == pid
        assert wait_until(lambda: gone(pid))
        assert not daemon.is_running()
    finally:
        daemon.stop()


def test_stop_false_alone_starts_and_leaves_it_running(echo):
    daemon = echo()
    try:
        with daemon.running(stop=False):
            pid = daemon.read_pid()
            assert pid is not None
        assert daemon.read_pid() == pid
        # A later default block did not start it, so it leaves it running too.
        with daemon.running():
            assert daemon.read_pid() == pid
        assert daemon.read_pid() == pid
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))


@pytest.mark.parametrize("last_out", ["stop=False", "stop=None"])
def test_stop_false_block_keeps_a_default_block_from_stopping(echo, last_out):
    daemon = echo()
    entered = threading.Event()
    leave = threading.Event()

    def keeper():
        with daemon.running(stop=False):
            entered.set()
            assert leave.wait(60)

    worker = None
    try:
        with daemon.running():  # stop=None; this block starts the daemon
            pid = daemon.read_pid()
            worker = started(keeper)
            assert entered.wait(60)
            if last_out == "stop=None":
                leave.set()
                worker.finish()
                assert daemon.read_pid() == pid
        if last_out == "stop=False":
            # The default block started it but a stop=False block is inside.
            assert daemon.read_pid() == pid
            assert not gone(pid)
            leave.set()
            worker.finish()
            # The stop=False block was the last to leave: it stays up.
            assert daemon.read_pid() == pid
            assert not gone(pid)
        else:
            # The default block that started it was the last to leave.
            assert wait_until(lambda: gone(pid))
            assert not daemon.is_running()
    finally:
        leave.set()
        if worker is not None:
            worker.join(30)
        daemon.stop()


# -- exceptions -----------------------------------------------------------------------------


class BlockError(Exception):
    pass


def fail_inside(daemon: Daemon, error: BaseException, pids: list[int | None]) -> None:
    """A block that notes the daemon's PID, then raises ``error``."""
    with daemon.running():
        pids.append(daemon.read_pid())
        raise error


def test_exception_in_the_block_propagates_and_the_daemon_is_stopped(echo):
    daemon = echo()
    error = BlockError("from inside the block")
    pids: list[int | None] = []
    with pytest.raises(BlockError) as caught:
        fail_inside(daemon, error, pids)
    assert caught.value is error
    assert not getattr(error, "__notes__", [])
    (pid,) = pids
    assert pid is not None
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()


def test_stop_error_does_not_hide_the_blocks_exception(echo):
    daemon = echo(name="stubborn echo").stop_with("exit 3")
    error = BlockError("from inside the block")
    pids: list[int | None] = []
    try:
        with pytest.raises(BlockError) as caught:
            fail_inside(daemon, error, pids)
        assert caught.value is error
        notes = getattr(error, "__notes__", [])
        assert any("stubborn echo" in note for note in notes), notes
        assert pids[0] is not None
        # The stop command failed, so the daemon is still there.
        assert not gone(pids[0])
    finally:
        for pid in pids:
            kill_quietly(pid)


def test_stop_error_is_raised_when_the_block_succeeded(echo):
    daemon = echo(name="stubborn echo").stop_with("exit 3")
    pid = None
    try:
        with pytest.raises(StopError) as caught, daemon.running():
            pid = daemon.read_pid()
        assert caught.value.exit_status == 3
        assert "stubborn echo" in str(caught.value)
    finally:
        kill_quietly(pid)
    assert pid is not None


# -- async with --------------------------------------------------------------------------------


def test_async_with_keeps_the_event_loop_running_during_a_start(echo):
    daemon = echo("--wait-before-listen", "0.5")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        before = ticks
        async with daemon.running() as inside:
            during_start = ticks - before
            assert inside is daemon
            pid = await asyncio.to_thread(daemon.read_pid)
            running = await asyncio.to_thread(daemon.is_running)
        task.cancel()
        return during_start, pid, running

    during_start, pid, running = asyncio.run(main())
    assert running
    assert pid is not None
    assert during_start >= 10, f"the loop ticked only {during_start} times during the start"
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()


def test_async_with_exception_propagates_and_the_daemon_is_stopped(echo):
    daemon = echo()
    error = BlockError("from inside the async block")
    seen: list[int | None] = []

    async def main():
        async with daemon.running():
            seen.append(await asyncio.to_thread(daemon.read_pid))
            raise error

    with pytest.raises(BlockError) as caught:
        asyncio.run(main())
    assert caught.value is error
    (pid,) = seen
    assert pid is not None
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()


@pytest.mark.parametrize("cancellations", [1, 2])
def test_async_with_cancelled_while_entering_aborts_the_start(echo, cancellations):
    # The start is aborted, and only then does the cancellation propagate,
    # however often the task is cancelled meanwhile (tests/test_async.py has more).
    daemon = echo("--wait-before-listen", "30")
    entered = []

    async def block():
        async with daemon.running():
            entered.append(True)
            await asyncio.sleep(60)

    async def main():
        task = asyncio.create_task(block())
        for _ in range(cancellations):
            await asyncio.sleep(0.3)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert entered == []
    assert daemonized_count(echo.log_file) <= 1
    assert not daemon.is_running()  # at once: the abort was over
    assert not echo.marked()
    assert not echo.pid_file.exists()


def test_async_blocks_overlapping_in_one_loop(echo):
    daemon = echo()

    async def main():
        inside = asyncio.Event()
        leave = asyncio.Event()

        async def first():
            async with daemon.running():
                inside.set()
                await leave.wait()

        task = asyncio.create_task(first())
        await inside.wait()
        async with daemon.running():
            pid = await asyncio.to_thread(daemon.read_pid)
            leave.set()
            await task
            still = await asyncio.to_thread(daemon.read_pid)
        return pid, still

    pid, still = asyncio.run(main())
    assert pid is not None
    assert still == pid
    assert wait_until(lambda: gone(pid))


# -- as a decorator ------------------------------------------------------------------------------


def test_running_as_a_decorator_sequential_calls(echo):
    daemon = echo()

    @daemon.running()
    def use(value):
        """Use the daemon."""
        assert daemon.is_running()
        return value, daemon.read_pid()

    assert use.__name__ == "use"
    first_value, first = use(1)
    assert first_value == 1
    assert wait_until(lambda: gone(first))
    assert not daemon.is_running()
    second_value, second = use(2)
    assert second_value == 2
    assert second is not None
    assert wait_until(lambda: gone(second))
    assert not daemon.is_running()
    assert daemonized_count(echo.log_file) == 2


def test_running_as_a_decorator_concurrent_calls(echo):
    daemon = echo()
    both_inside = threading.Barrier(2)

    @daemon.running()
    def use():
        pid = daemon.read_pid()
        both_inside.wait(60)
        # Both calls are inside: neither leaving may stop it under the other.
        return pid

    workers = [started(use) for _ in range(2)]
    try:
        pids = [worker.finish() for worker in workers]
        assert pids[0] == pids[1]
        assert pids[0] is not None
        assert wait_until(lambda: gone(pids[0]))
        assert not daemon.is_running()
        assert daemonized_count(echo.log_file) == 1
    finally:
        for worker in workers:
            worker.join(30)
        daemon.stop()
