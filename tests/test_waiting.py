"""Deadlines and polling in virtual time."""

from __future__ import annotations

import pytest

from daemon_controller._waiting import Deadline, poll_until


class FakeClock:
    """Virtual time: sleeping moves the clock forward at once."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_poll_returns_first_result_without_sleeping():
    clock = FakeClock()
    assert poll_until(lambda: 42, deadline=Deadline(5, clock), max_interval=0.1) == 42
    assert clock.sleeps == []


def test_poll_starts_at_a_millisecond_and_settles_at_the_interval():
    clock = FakeClock()
    calls = []

    def check():
        calls.append(clock.now())
        return "ready" if clock.now() >= 1020 else None

    assert poll_until(check, deadline=Deadline(60, clock), max_interval=0.1) == "ready"
    assert clock.sleeps[0] == pytest.approx(0.001)
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:], strict=False))
    # The pause grows with the time waited (8 ms per second) up to max_interval.
    assert clock.sleeps[-1] == pytest.approx(0.1)


def test_poll_pause_is_at_least_twenty_five_times_what_a_check_costs():
    clock = FakeClock()
    calls = []

    def expensive_check():
        calls.append(clock.now())
        clock.t += 0.004  # the check itself takes 4 ms of (virtual) time
        return "ready" if len(calls) == 5 else None

    assert poll_until(expensive_check, deadline=Deadline(60, clock), max_interval=1.0) == "ready"
    assert all(pause == pytest.approx(0.1) for pause in clock.sleeps)


def test_poll_one_slow_check_does_not_stretch_the_next_pause():
    # A check that the scheduler held up (another process ran meanwhile) is
    # not what checks cost: the pause after it stays short.
    clock = FakeClock()
    calls = []

    def check():
        calls.append(clock.now())
        clock.t += 0.050 if len(calls) == 3 else 0.0001
        return "ready" if len(calls) == 6 else None

    assert poll_until(check, deadline=Deadline(60, clock), max_interval=1.0) == "ready"
    assert max(clock.sleeps) < 0.01  # not 25 x 50 ms = 1.25 s
    assert clock.sleeps[2] == pytest.approx(clock.sleeps[1], abs=0.002)


def test_poll_never_sleeps_past_the_deadline_and_checks_once_more_at_it():
    clock = FakeClock()
    calls = []

    def check():
        calls.append(clock.now())

    assert poll_until(check, deadline=Deadline(1.05, clock), max_interval=0.5) is None
    assert calls[-1] == pytest.approx(1001.05)
    assert sum(clock.sleeps) == pytest.approx(1.05)


def test_poll_propagates_exceptions():
    clock = FakeClock()

    def check():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        poll_until(check, deadline=Deadline(1, clock), max_interval=0.1)


def test_deadline_without_limit():
    d = Deadline(None, FakeClock())
    assert d.remaining() == float("inf")
    assert not d.expired()
