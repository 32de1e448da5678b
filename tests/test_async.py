"""The awaitable actions, and what cancelling them does, with real daemons.

* ``astart()``, ``astop()``, ``arestart()``, ``ais_running()``, ``aread_pid()``
  and ``aconnect()`` (with a plain or an ``async def`` connect function) do what
  their namesakes do, while the event loop keeps running;
* cancelling a task that is starting a daemon (``astart()``, ``async with
  running()``, an async ``@requires`` function; ``task.cancel()``,
  ``asyncio.timeout``, ``wait_for``) aborts the start at once: nothing keeps
  running, no lock or lease stays held, and it is prompt (generous bounds only:
  the speed is in benchmarks/run.py);
* the task that runs a start is its starter; a task waiting for somebody
  else's start only stops waiting when cancelled, and those waiting for a
  cancelled start are told it was cancelled;
* a stop, and leaving an ``async with``, run to their end when cancelled;
* cancellation at random moments, 200 times, leaves nothing behind.

Locks and leases are checked from a separate process (``LockProbe``), which
tries to take them exclusively without waiting.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from helpers import MARKER, gone, wait_until

from daemon_controller import (
    ConnectError,
    Daemon,
    StartError,
    _pidfile,
    _platform,
    all_running,
    requires,
)

if TYPE_CHECKING:
    from pathlib import Path

#: Generous: a cancellation takes milliseconds (see the benchmarks), a start 30 s.
PROMPT = 3.0


def lock_files(daemon: Daemon) -> tuple[Path, Path]:
    """The daemon's lock file and its ``.users`` lease file."""
    files = daemon._target().files
    return files.lock, files.users


def daemonized_count(log_file: Path) -> int:
    if not log_file.exists():
        return 0
    return sum(1 for line in log_file.read_text().splitlines() if line.endswith("] daemonized"))


async def until(predicate, limit: float = 15.0) -> None:
    """Wait (without blocking the loop) until ``predicate()`` is true."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def quick(tmp_path: Path, test_id: str, name: str) -> Daemon:
    """A cheap daemon (two shells and a sleep): ready about 30 ms after its start.

    The start command puts ``sh -c 'sleep 0.03; echo $$ > ready; exec sleep 60'``
    in the background and writes its PID file; the ping is "the ready file
    names the PID in the PID file", so a ready file left by an earlier, aborted
    daemon does not count. SIGTERM ends it at once.
    """
    directory = tmp_path / name
    directory.mkdir()
    pid, ready, log = directory / "quick.pid", directory / "ready", directory / "quick.log"
    inner = f"sleep 0.03; echo $$ > {shlex.quote(str(ready))}; exec sleep 60"
    command = f"sh -c {shlex.quote(inner)} >/dev/null 2>&1 & echo $! > {shlex.quote(str(pid))}"

    def answers() -> bool:
        try:
            return ready.read_text().strip() == pid.read_text().strip() != ""
        except OSError:
            return False

    return (
        Daemon(name)
        .start_with(command)
        .ping(answers)
        .pid(pid)
        .log(log)
        .start_timeout(10)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


# -- the awaitable actions -------------------------------------------------------------------


def test_awaitable_actions_do_what_their_namesakes_do(echo):
    daemon = echo("--wait-before-listen", "0.3")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        assert await daemon.ais_running() is False
        assert await daemon.aread_pid() is None
        await daemon.astart()
        during_start = ticks
        first = await daemon.aread_pid()
        assert await daemon.ais_running() is True
        await daemon.arestart()
        second = await daemon.aread_pid()
        await daemon.astop()
        assert await daemon.ais_running() is False
        tick.cancel()
        return during_start, first, second

    during_start, first, second = asyncio.run(main())
    assert during_start >= 10, f"the loop ticked only {during_start} times during the start"
    assert first is not None
    assert second is not None
    assert second != first
    assert gone(first)
    assert gone(second)


def test_aconnect_with_an_async_function_starts_the_daemon(echo):
    daemon = echo()

    async def main():
        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", echo.port)
            return reader, writer

        reader, writer = await daemon.aconnect(connect)
        writer.write(b"ping")
        await writer.drain()
        answer = await reader.readexactly(4)
        writer.close()
        await writer.wait_closed()
        pid = await daemon.aread_pid()
        # Running now: the next call connects without starting anything.
        _, again = await daemon.aconnect(connect)
        again.close()
        await again.wait_closed()
        await daemon.astop()
        return answer, pid

    answer, pid = asyncio.run(main())
    assert answer == b"ping"
    assert pid is not None
    assert daemonized_count(echo.log_file) == 1


def test_aconnect_with_a_plain_function_behaves_like_connect(echo):
    daemon = echo()

    async def main():
        sock = await daemon.aconnect(lambda: socket.create_connection(("127.0.0.1", echo.port)))
        sock.close()
        running = await daemon.ais_running()
        await daemon.astop()
        return running

    assert asyncio.run(main()) is True


def test_aconnect_refuses_a_plain_function_returning_a_coroutine(echo):
    daemon = echo()

    async def connect():
        return await asyncio.open_connection("127.0.0.1", echo.port)

    with pytest.raises(TypeError, match="async def"):
        asyncio.run(daemon.aconnect(lambda: connect()))  # noqa: PLW0108 - plain, on purpose
    assert not daemon.is_running()


def test_aconnect_raises_connect_error_when_the_running_daemon_does_not_answer(echo):
    daemon = echo()
    daemon.start()
    try:
        wrong = socket.socket()
        wrong.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = wrong.getsockname()[1]

        async def connect():
            return await asyncio.open_connection("127.0.0.1", port)

        with pytest.raises(ConnectError, match="cannot be connected to") as caught:
            asyncio.run(daemon.aconnect(connect))
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
        wrong.close()
    finally:
        daemon.stop()


# -- cancelling a start ------------------------------------------------------------------------


def test_cancelling_astart_aborts_the_start_at_once(echo, lock_probe):
    daemon = echo("--wait-before-listen", "30")

    async def main():
        task = asyncio.create_task(daemon.astart())
        await until(lambda: _pidfile.read_pid(echo.pid_file) is not None)  # up, not answering
        # (Not daemon.read_pid(): it would wait for the start, blocking the loop.)
        pid = _pidfile.read_pid(echo.pid_file)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began, pid

    took, pid = asyncio.run(main())
    assert took < PROMPT
    assert pid is not None
    assert gone(pid)  # already gone when the cancellation propagated
    assert not daemon.is_running()
    assert lock_probe.held(*lock_files(daemon)) == []


def test_a_timeout_around_async_with_running_fires_promptly(echo, lock_probe):
    daemon = echo("--wait-before-listen", "30")
    entered = []

    async def main():
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), daemon.running():
                entered.append(True)
        return time.monotonic() - began

    took = asyncio.run(main())
    assert took < 0.5 + PROMPT
    assert entered == []
    assert not daemon.is_running()
    assert not echo.marked()
    assert lock_probe.held(*lock_files(daemon)) == []


def test_wait_for_around_astart_fires_promptly(echo):
    daemon = echo("--wait-before-listen", "30")

    async def main():
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(daemon.astart(), 0.5)
        return time.monotonic() - began

    assert asyncio.run(main()) < 0.5 + PROMPT
    assert not daemon.is_running()
    assert not echo.marked()


def test_a_timeout_around_an_async_requires_function_fires_promptly(echo):
    daemon = echo("--wait-before-listen", "30")
    called = []

    @requires(daemon)
    async def work():
        called.append(True)

    async def main():
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(work(), 0.5)
        return time.monotonic() - began

    assert asyncio.run(main()) < 0.5 + PROMPT
    assert called == []
    assert not daemon.is_running()
    assert not echo.marked()


def test_cancellation_is_prompt_without_a_pidfd_too(echo, monkeypatch):
    # As on macOS and Windows: no exit handles, so pauses wait on the token alone.
    monkeypatch.setattr(_platform, "exit_handle", lambda _pid: None)
    daemon = echo("--wait-before-listen", "30")

    async def main():
        task = asyncio.create_task(daemon.astart())
        await until(lambda: daemonized_count(echo.log_file) == 1)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    assert asyncio.run(main()) < PROMPT
    assert not daemon.is_running()
    assert not echo.marked()


# -- starter and waiters ---------------------------------------------------------------------


def test_a_cancelled_waiter_stops_waiting_and_the_start_goes_on(echo):
    daemon = echo("--wait-before-listen", "1.5")

    async def main():
        starter_inside = asyncio.Event()
        release = asyncio.Event()

        async def starter():
            async with daemon.running():
                starter_inside.set()
                await release.wait()
                return await daemon.aread_pid()

        async def waiter():
            async with daemon.running():
                pytest.fail("the cancelled waiter entered")

        first = asyncio.create_task(starter())
        await until(lambda: daemonized_count(echo.log_file) == 1)  # the starter's start runs
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0.2)  # the waiter waits for the lock
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        # The waiter is gone while the starter's start still runs...
        cancelled_before_ready = not starter_inside.is_set()
        # ...and that start was not disturbed.
        await starter_inside.wait()
        release.set()
        return cancelled_before_ready, await first

    cancelled_before_ready, pid = asyncio.run(main())
    assert cancelled_before_ready
    assert pid is not None
    assert daemonized_count(echo.log_file) == 1
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()


def test_those_waiting_for_a_cancelled_start_are_told(echo):
    daemon = echo("--wait-before-listen", "30")
    outcome: list[BaseException | None] = []

    def wait_in_a_thread():
        try:
            with daemon.running():
                outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    async def starter():
        async with daemon.running():
            pytest.fail("the cancelled starter entered")

    async def main():
        task = asyncio.create_task(starter())
        await until(lambda: daemonized_count(echo.log_file) == 1)
        thread = threading.Thread(target=wait_in_a_thread)
        thread.start()
        await asyncio.sleep(0.3)  # the thread waits for the lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(thread.join, 30)

    asyncio.run(main())
    (error,) = outcome
    assert isinstance(error, StartError)
    assert error.reason == "cancelled"
    assert "the start was cancelled" in str(error)
    assert daemonized_count(echo.log_file) == 1  # the waiter did not spawn it again
    assert not daemon.is_running()


_HOLD = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_cancelled_while_waiting_for_the_lock(echo, lock_probe):
    daemon = echo()
    lock, users = lock_files(daemon)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"

        async def main():
            took = []
            for action in (daemon.astart, daemon.ais_running, daemon.astop):
                began = time.monotonic()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(action(), 0.3)
                took.append(time.monotonic() - began)
            return took

        took = asyncio.run(main())
        assert max(took) < 0.3 + PROMPT
        assert lock_probe.held(users) == []  # the lease waits for nobody
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    # The helper threads that were still waiting let go of the lock as soon as
    # they got it; nothing was started.
    assert wait_until(lambda: lock_probe.held(lock) == [])
    assert not daemon.is_running()
    assert daemonized_count(echo.log_file) == 0


def test_a_waiter_giving_up_after_the_owner_left_stops_the_owners_daemon(echo):
    # Block A started the daemon; block B is counted in while it waits for the
    # lock (held by another process), so A leaving does not stop the daemon.
    # When B gives up instead of entering, it settles in A's place.
    daemon = echo()
    lock, _ = lock_files(daemon)
    owner_inside, owner_leave = threading.Event(), threading.Event()

    def owner():
        with daemon.running():
            owner_inside.set()
            owner_leave.wait(30)

    first = threading.Thread(target=owner)
    first.start()
    assert owner_inside.wait(30)
    pid = daemon.read_pid()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"

        async def main():
            waiter = asyncio.create_task(daemon.running().__aenter__())
            await asyncio.sleep(0.3)  # counted in, waiting for the lock
            owner_leave.set()
            await asyncio.to_thread(first.join, 30)
            assert not gone(pid)  # the waiter is inside as far as A can tell
            waiter.cancel()
            await asyncio.sleep(0.3)
            holder.stdin.close()  # the settling stop needs the lock too
            with pytest.raises(asyncio.CancelledError):
                await waiter

        asyncio.run(main())
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    assert gone(pid)
    assert not daemon.is_running()


# -- what finishes anyway ----------------------------------------------------------------------


def test_a_cancelled_astop_finishes_the_stop(echo):
    daemon = echo("--stop-delay", "1")
    daemon.start()
    pid = daemon.read_pid()

    async def main():
        task = asyncio.create_task(daemon.astop())
        await asyncio.sleep(0.2)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    took = asyncio.run(main())
    assert gone(pid)  # already when the cancellation propagated
    assert took >= 0.5  # it waited for the stop (1 s of delay, 0.2 s of it passed)
    assert not daemon.is_running()


def test_a_task_cancelled_while_leaving_async_with_still_leaves(echo, lock_probe):
    daemon = echo("--stop-delay", "0.5")
    pids = []

    async def block(leave: asyncio.Event):
        async with daemon.running():
            pids.append(await daemon.aread_pid())
            await leave.wait()
        pytest.fail("the cancellation while leaving was lost")

    async def main():
        leave = asyncio.Event()
        task = asyncio.create_task(block(leave))
        await until(lambda: bool(pids))
        leave.set()
        await asyncio.sleep(0.1)  # leaving: the stop waits out the daemon's delay
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Stopped before the cancellation propagated: checked right here.
        return [gone(pid) for pid in pids]

    assert asyncio.run(main()) == [True]
    assert not echo.pid_file.exists()
    assert lock_probe.held(*lock_files(daemon)) == []


# -- at random moments ---------------------------------------------------------------------------


VARIANTS = ["astart", "async with running()", "async with all_running()", "wait_for(astart())"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cancellation_at_random_moments_leaves_nothing_behind(
    tmp_path, test_id, lock_probe, variant
):
    # 50 iterations per variant, 200 in all: a random delay before cancelling
    # hits every phase, from waiting for the lock to just after readiness.
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    a, b = quick(tmp_path, test_id, "a"), quick(tmp_path, test_id, "b")
    daemons = [a, b] if "all_running" in variant else [a]
    files = [path for daemon in daemons for path in lock_files(daemon)]
    seen: Counter[str] = Counter()

    async def body(delay: float) -> None:
        if variant == "astart":
            await a.astart()
        elif variant == "wait_for(astart())":
            await asyncio.wait_for(a.astart(), delay)
        elif variant == "async with running()":
            async with a.running():
                seen["entered"] += 1
                await asyncio.sleep(60)
        else:
            async with all_running(a, b):
                seen["entered"] += 1
                await asyncio.sleep(60)

    async def once(delay: float) -> float:
        task = asyncio.create_task(body(delay))
        await asyncio.sleep(delay)
        began = time.monotonic()
        if variant != "wait_for(astart())":
            task.cancel()
        try:
            await task
        except (asyncio.CancelledError, TimeoutError):
            seen["cancelled"] += 1
        else:
            seen["finished"] += 1
            await a.astop()  # it was ready before the cancellation came
        return time.monotonic() - began

    async def main():
        for _ in range(50):
            took = await once(rng.uniform(0.0, 0.08))
            assert took < PROMPT, f"seed {seed}"
            for daemon in daemons:
                assert not await daemon.ais_running(), f"seed {seed}"
            assert lock_probe.held(*files) == [], f"seed {seed}"

    asyncio.run(main())
    print(variant, dict(seen), f"seed {seed}")
    assert seen["cancelled"] > 0
