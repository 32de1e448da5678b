"""Deadlines and polling, with time injected so tests can run in virtual time.

Every wait in the library goes through :func:`poll_until`, which drives a
tenacity ``Retrying`` loop: a first check at once, then checks at intervals
growing from ``first_interval`` to ``max_interval`` (so a fast daemon is noticed
within a millisecond or two, and a slow one costs little CPU), never sleeping past
the deadline, and always checking once more when the deadline arrives.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._errors import hide_frames

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    import tenacity

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

T = TypeVar("T")

#: ``time.sleep`` overflows on very long pauses: a longer one is made of several.
_LONGEST_SLEEP = 86400.0


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
        """Sleep for real (``inf``: for good)."""
        while seconds > _LONGEST_SLEEP:
            time.sleep(_LONGEST_SLEEP)
            seconds -= _LONGEST_SLEEP
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

    def extend(self, seconds: float) -> None:
        """Make sure at least ``seconds`` are left from now (never shortens the wait)."""
        if self.timeout is not None:
            self.timeout = max(self.timeout, self.elapsed() + seconds)


#: Checking may take at most this share of the time: the pause after a round
#: of checking is at least 25 times as long as the round took (about 4% of a
#: core for the rounds; waking up from each pause costs a little more, and
#: the whole wait is to stay under 5%).
_COST_RATIO = 25.0
#: A round's cost is the least of the last few: one round that the scheduler
#: held up (another process ran meanwhile) must not stretch the next pause
#: 25-fold, while a check that is always slow (a command run as a ping)
#: still counts in full. A check that is slow only now and then is costed by
#: its usual, cheap rounds.
_COST_WINDOW = 4
#: The shortest pause grows by this many seconds per second waited, so a long
#: wait gradually settles at ``max_interval`` (after 1 s: about 9 ms).
_PATIENCE = 0.008


def _tenacity() -> ModuleType:
    """``import tenacity``, at first use: 20 ms of import time that is_running() does not need.

    An import interrupted half-way (Ctrl-C while it runs) can leave modules
    in ``sys.modules`` that are only partly initialised, and every later
    import would get them ("partially initialized module 'tenacity'"). So
    what a failed import added is removed again, and the next use imports
    afresh; a half-initialised tenacity found here is replaced the same way.
    """
    module = sys.modules.get("tenacity")
    if module is not None and hasattr(module, "Retrying"):
        return module
    try:
        return _import_tenacity()
    except AttributeError:  # a half-initialised one was found, and dropped: afresh
        return _import_tenacity()


def _import_tenacity() -> ModuleType:
    before = set(sys.modules)
    try:
        module = importlib.import_module("tenacity")
        module.Retrying  # noqa: B018 - missing from a half-initialised module
    except BaseException:
        for name in set(sys.modules) - before:
            sys.modules.pop(name, None)
        for name in [name for name in sys.modules if name.partition(".")[0] == "tenacity"]:
            sys.modules.pop(name, None)
        raise
    return module


def poll_until(
    check: Callable[[], T | None],
    *,
    deadline: Deadline,
    max_interval: float,
    first_interval: float = 0.001,
    sleep: Callable[[float], None] | None = None,
    overhead: Callable[[], float] | None = None,
    adjust: Callable[[float], float] | None = None,
) -> T | None:
    """Call ``check`` until it returns something other than ``None``.

    The pause between checks adapts: it starts at ``first_interval``, is never
    shorter than 25 times what a check costs (so an expensive check, like a
    command run as a ping, does not eat a core), grows slowly with the time
    waited, and never exceeds ``max_interval`` or the time left. A check's
    cost is all the work between two pauses (the loop's own included), and
    the least of the last four counts, so one check that the scheduler held
    up does not stretch the next pause 25-fold.

    Args:
        check: Returns ``None`` for "not yet"; any other value ends the wait and
            is returned. Exceptions it raises end the wait and propagate.
        deadline: When to give up.
        max_interval: The longest pause between two checks, in seconds.
        first_interval: The shortest pause, in seconds.
        sleep: How to pause; defaults to the deadline's clock. A caller can wait
            on an event instead (a process exit) and return early.
        overhead: Called after each check: seconds of that check not to count
            as its cost (work the caller already rate-limits by itself).
        adjust: Given the pause chosen, returns the pause to take (a caller
            whose ``sleep`` wakes on the event it waits for can pause longer).

    Returns:
        The first non-``None`` result, or ``None`` if the deadline passed first.
    """
    retrying_module = _tenacity()
    clock = deadline.clock
    pause_with = sleep or clock.sleep
    costs: deque[float] = deque(maxlen=_COST_WINDOW)
    ceiling = max(first_interval, max_interval)
    awake_since = clock.now()  # the end of the last pause
    excluded = 0.0

    def counted_check() -> T | None:
        nonlocal excluded
        result = check()
        excluded = overhead() if overhead is not None else 0.0
        return result

    def pause(_state: tenacity.RetryCallState) -> float:
        # A check costs all the work between two pauses: the check itself and
        # this loop's own bookkeeping (tenacity's included).
        costs.append(max(0.0, clock.now() - awake_since - excluded))
        floor = first_interval + deadline.elapsed() * _PATIENCE
        chosen = min(max(floor, min(costs) * _COST_RATIO), ceiling)
        if adjust is not None:
            chosen = adjust(chosen)
        return min(chosen, deadline.remaining())

    def take_pause(seconds: float) -> None:
        nonlocal awake_since
        pause_with(seconds)
        awake_since = clock.now()

    retrying = retrying_module.Retrying(
        retry=retrying_module.retry_if_result(lambda result: result is None),
        wait=pause,
        stop=lambda _state: deadline.expired(),
        sleep=take_pause,
        retry_error_callback=lambda _state: None,
        reraise=True,
    )
    result: T | None = retrying(counted_check)
    return result
