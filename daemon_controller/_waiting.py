"""Deadlines and polling, with time injected so tests can run in virtual time.

Every wait in the library goes through :func:`poll_until`, which drives a
tenacity ``Retrying`` loop: a first check at once, then checks at intervals
growing from ``first_interval`` to ``max_interval`` (so a fast daemon is noticed
within a millisecond or two, and a slow one costs little CPU), never sleeping past
the deadline, and always checking once more when the deadline arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import tenacity

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


class Clock(Protocol):
    """Where time comes from: monotonic seconds, and a way to let it pass."""

    def now(self) -> float:
        """Return a monotonic time in seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` (immune to NTP steps) and ``time.sleep``."""

    def now(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = MonotonicClock()


@dataclass(slots=True)
class Deadline:
    """A point in time after which a wait gives up.

    Attributes:
        timeout: The length of the wait in seconds; ``None`` means no limit.
    """

    timeout: float | None
    clock: Clock = SYSTEM_CLOCK
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock.now()

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit, ``0.0`` once passed)."""
        if self.timeout is None:
            return float("inf")
        return max(0.0, self.started + self.timeout - self.clock.now())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.remaining() <= 0.0

    def elapsed(self) -> float:
        """Seconds since the deadline was set."""
        return self.clock.now() - self.started


def poll_until(
    check: Callable[[], T | None],
    *,
    deadline: Deadline,
    max_interval: float,
    first_interval: float = 0.001,
) -> T | None:
    """Call ``check`` until it returns something other than ``None``.

    Args:
        check: Returns ``None`` for "not yet"; any other value ends the wait and
            is returned. Exceptions it raises end the wait and propagate.
        deadline: When to give up.
        max_interval: The longest pause between two checks, in seconds.
        first_interval: The first pause, in seconds; pauses double up to
            ``max_interval``.

    Returns:
        The first non-``None`` result, or ``None`` if the deadline passed first.
    """
    backoff = tenacity.wait_exponential(
        multiplier=first_interval,
        min=first_interval,
        max=max(first_interval, max_interval),
    )

    def pause(retry_state: tenacity.RetryCallState) -> float:
        return min(backoff(retry_state), deadline.remaining())

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda result: result is None),
        wait=pause,
        stop=lambda _state: deadline.expired(),
        sleep=deadline.clock.sleep,
        retry_error_callback=lambda _state: None,
        reraise=True,
    )
    return retrying(check)
