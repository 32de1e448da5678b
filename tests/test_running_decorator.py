"""``running()`` and ``requires()`` as decorators keep the daemon up while the body runs.

For an ``async def``, the body runs when the coroutine is awaited, not when it
is created: the block must be entered then, around the execution.
"""

from __future__ import annotations

import asyncio
import inspect

from daemon_controller import requires


def test_running_decorates_an_async_function_around_its_execution(echo):
    daemon = echo()
    seen: list[tuple[bool, int | None]] = []

    @daemon.running()
    async def body(value: int) -> int:
        await asyncio.sleep(0)
        seen.append((daemon.is_running(), daemon.read_pid()))
        return value * 2

    assert inspect.iscoroutinefunction(body)
    coroutine = body(21)
    assert not daemon.is_running()  # creating the coroutine starts nothing
    assert asyncio.run(coroutine) == 42
    assert len(seen) == 1
    running, pid = seen[0]
    assert running
    assert pid is not None
    assert not daemon.is_running()  # the block that started it stopped it


def test_running_decorates_a_plain_function_per_call(echo):
    daemon = echo()

    @daemon.running()
    def body() -> int | None:
        return daemon.read_pid()

    first = body()
    assert first is not None
    assert not daemon.is_running()
    assert body() is not None  # a fresh block per call starts it again
    assert not daemon.is_running()


def test_requires_and_running_share_one_wrapper(echo):
    daemon = echo()

    @requires(daemon)
    async def via_requires() -> bool:
        return daemon.is_running()

    @daemon.running()
    async def via_running() -> bool:
        return daemon.is_running()

    assert asyncio.run(via_requires()) is True
    assert asyncio.run(via_running()) is True
    assert not daemon.is_running()
    assert via_running.__name__ == "via_running"
    assert inspect.signature(via_running) == inspect.signature(via_requires)
