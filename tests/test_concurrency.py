"""Serialisation of starts and connects across threads and processes.

``start()`` holds the lock file exclusively for its whole run and ``connect()``
/ ``is_running()`` take it shared, so concurrent callers, be they threads of
this process or other processes, see a daemon either before a start or after
it. These tests line callers up and check the real effects: the number of
starts (a ``helpers.BeforeStart`` records each one, the echo server logs
"daemonized" once per start), the processes alive afterwards, and the
enter/exit times recorded under the lock.

Other processes are ``helpers.Child`` processes that rebuild the same daemon
and are released together once all of them are ready.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest
from helpers import (
    BeforeStart,
    count_starts,
    daemonized_count,
    echo_through,
    release_together,
    roundtrip,
    start_records,
)

from daemon_controller import AlreadyStarted, Daemon, StartError

if TYPE_CHECKING:
    from pathlib import Path


DEADLINE = 60.0  # generous: barriers and joins on a loaded 2-core machine

# -- helpers -----------------------------------------------------------------------------------


def recorded(echo, tmp_path: Path, *args: str, pause: float = 0.0) -> Daemon:
    """An echo daemon whose starts are recorded in ``starts.jsonl``."""
    return echo(*args).before_start(BeforeStart(tmp_path / "starts.jsonl", pause)).start_timeout(30)


def failing(echo, tmp_path: Path) -> Daemon:
    """A daemon whose every start holds the lock for a second, then fails."""
    return recorded(echo, tmp_path, "--exit-before-daemonize", "5", pause=1.0)


def assert_no_overlap(records: list[dict]) -> list[tuple[float, float]]:
    """The starts' enter/exit intervals, which must not overlap; returns them."""
    enters: dict[tuple[int, int], float] = {}
    intervals = []
    for record in records:
        key = (record["pid"], record["thread"])
        if record["event"] == "enter":
            enters[key] = record["t"]
        else:
            intervals.append((enters.pop(key), record["t"]))
    assert not enters, "an enter without an exit"
    intervals.sort()
    for (_, first_exit), (second_enter, _) in itertools.pairwise(intervals):
        assert first_exit <= second_enter, intervals
    return intervals


def together(children: list) -> list:
    """Release the children at once; return what each said once it has exited cleanly."""
    release_together(children)
    outcomes = [proc.message() for proc in children]
    for proc in children:
        proc.finish()
    return outcomes


def run_threads(count: int, target) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    return threads


# Child scripts: the daemon is the test's, rebuilt; args[0] is the start record file.
_CONNECT = """
from helpers import BeforeStart, echo_through
daemon = daemon.before_start(BeforeStart(args[0]))
port = int(args[1])
tell_parent("ready")
if args[2] == "wait":
    wait_for_parent()
payload = f"hello from {os.getpid()}".encode()
with daemon.connect(lambda: socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
    echoed = echo_through(sock, payload) == payload
tell_parent({"echoed": echoed, "pid": daemon.read_pid()})
"""

_START = """
from helpers import BeforeStart
from daemon_controller import AlreadyStarted, StartError
daemon = daemon.before_start(BeforeStart(args[0], float(args[1])))
tell_parent("ready")
wait_for_parent()
try:
    daemon.start()
except AlreadyStarted as err:
    tell_parent({"outcome": "already", "pid": err.pid})
except StartError as err:
    tell_parent({"outcome": "start_error", "exit_status": err.exit_status})
else:
    tell_parent({"outcome": "started", "pid": daemon.read_pid()})
"""

# -- connect ---------------------------------------------------------------------------------


def test_threads_connecting_at_once_start_the_daemon_exactly_once(echo, tmp_path):
    d = recorded(echo, tmp_path)
    count = 8
    barrier = threading.Barrier(count, timeout=DEADLINE)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        try:
            barrier.wait()
            payload = f"thread {i}".encode()
            with d.connect(lambda: socket.create_connection(("127.0.0.1", echo.port), 10)) as sock:
                results[i] = echo_through(sock, payload) == payload
        except BaseException as err:
            results[i] = err

    try:
        run_threads(count, worker)
        assert results == dict.fromkeys(range(count), True)
        assert count_starts(tmp_path / "starts.jsonl") == 1
        assert daemonized_count(echo.log_file) == 1
        assert [p.pid for p in echo.marked()] == [d.read_pid()]
    finally:
        d.stop()


@pytest.mark.slow
def test_processes_connecting_at_once_start_the_daemon_exactly_once(echo, tmp_path, child):
    d = recorded(echo, tmp_path)
    record = str(tmp_path / "starts.jsonl")
    count = 6
    children = [child(_CONNECT, record, str(echo.port), "wait", daemon=d) for _ in range(count)]
    try:
        outcomes = together(children)
        assert all(outcome["echoed"] for outcome in outcomes), outcomes
        pids_seen = {outcome["pid"] for outcome in outcomes}
        assert len(pids_seen) == 1, outcomes
        assert count_starts(tmp_path / "starts.jsonl") == 1
        assert daemonized_count(echo.log_file) == 1
        assert [p.pid for p in echo.marked()] == [d.read_pid()] == list(pids_seen)
    finally:
        d.stop()


def test_connect_from_another_process_waits_for_a_start_in_progress(echo, tmp_path, child):
    # A start in this process holds the lock; a child connecting meanwhile must
    # not start a second daemon: it waits, then uses the one we started.
    entered = threading.Event()
    release = threading.Event()

    def before_start() -> None:
        entered.set()
        release.wait(timeout=DEADLINE)

    d = recorded(echo, tmp_path).before_start(before_start)
    start_thread = threading.Thread(target=d.start)
    start_thread.start()
    try:
        assert entered.wait(timeout=DEADLINE)
        connector = child(_CONNECT, str(tmp_path / "starts.jsonl"), str(echo.port), "", daemon=d)
        assert connector.message() == "ready"
        # Give the child a moment to block on the lock (the test stays valid,
        # only weaker, if it gets there after the release).
        time.sleep(0.3)
        assert not connector.has_message()
        release.set()
        start_thread.join(timeout=DEADLINE)
        outcome = connector.message()
        connector.finish()
        assert outcome["echoed"] is True
        assert outcome["pid"] == d.read_pid()
        # Our before_start was replaced, so the file records only the child's
        # starts: none.
        assert count_starts(tmp_path / "starts.jsonl") == 0
        assert daemonized_count(echo.log_file) == 1
    finally:
        release.set()
        start_thread.join(timeout=DEADLINE)
        d.stop()


def test_is_running_from_another_thread_waits_for_a_start(echo, tmp_path):
    entered = threading.Event()
    release = threading.Event()

    def before_start() -> None:
        entered.set()
        release.wait(timeout=DEADLINE)

    d = recorded(echo, tmp_path).before_start(before_start)
    starter_errors: list[BaseException] = []

    def starter() -> None:
        try:
            d.start()
        except BaseException as err:
            starter_errors.append(err)

    answers: list[bool] = []
    start_thread = threading.Thread(target=starter)
    ask_thread = threading.Thread(target=lambda: answers.append(d.is_running()))
    start_thread.start()
    try:
        assert entered.wait(timeout=DEADLINE)
        ask_thread.start()
        # is_running() takes the shared lock: it cannot answer during the start.
        ask_thread.join(timeout=0.5)
        assert ask_thread.is_alive()
        assert answers == []
        release.set()
        start_thread.join(timeout=DEADLINE)
        ask_thread.join(timeout=DEADLINE)
        assert not start_thread.is_alive()
        assert not ask_thread.is_alive()
        assert starter_errors == []
        assert answers == [True]
    finally:
        release.set()
        start_thread.join(timeout=DEADLINE)
        if ask_thread.ident is not None:
            ask_thread.join(timeout=DEADLINE)
        d.stop()


@pytest.mark.parametrize("action", ["is_running", "start"])
def test_a_lock_file_removed_and_recreated_is_the_one_locked(echo, action):
    # A thread keeps its lock files open between calls. Once the file at the
    # path is another one (removed, then created anew by someone who holds
    # it), that thread must lock the new file: a start at once, a query within
    # a few milliseconds (it looks again at most every 10 ms).
    fcntl = pytest.importorskip("fcntl")
    d = echo()
    d.start()
    d.stop()  # the lock file exists now
    lock = d._target().files.lock
    cached, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def worker() -> None:
        d.is_running()  # the lock file is now open in this thread
        cached.set()
        go.wait(timeout=DEADLINE)
        if action == "is_running":
            time.sleep(0.05)
            outcome.append(d.is_running())
        else:
            d.start()
            outcome.append(d.read_pid())

    thread = threading.Thread(target=worker)
    thread.start()
    fd = -1
    try:
        assert cached.wait(timeout=DEADLINE)
        lock.unlink()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        go.set()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the new lock file is held: the worker must wait for it"
        assert outcome == []
        os.close(fd)
        fd = -1
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive()
        assert outcome == ([False] if action == "is_running" else [d.read_pid()])
    finally:
        go.set()
        if fd >= 0:
            os.close(fd)
        thread.join(timeout=DEADLINE)
        d.stop()


# -- start -------------------------------------------------------------------------------------


def test_concurrent_starts_from_threads_start_once(echo, tmp_path):
    d = recorded(echo, tmp_path, "--wait-before-listen", "0.5")
    count = 4
    barrier = threading.Barrier(count, timeout=DEADLINE)
    outcomes: list[object] = []

    def worker(_: int) -> None:
        barrier.wait()
        try:
            d.start()
        except BaseException as err:
            outcomes.append(err)
        else:
            outcomes.append("started")

    try:
        run_threads(count, worker)
        assert outcomes.count("started") == 1, outcomes
        errors = [o for o in outcomes if o != "started"]
        assert all(isinstance(err, AlreadyStarted) for err in errors), errors
        assert [err.pid for err in errors] == [d.read_pid()] * (count - 1)
        assert count_starts(tmp_path / "starts.jsonl") == 1
        assert [p.pid for p in echo.marked()] == [d.read_pid()]
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        d.stop()


def test_concurrent_starts_from_processes_start_once(echo, tmp_path, child):
    d = recorded(echo, tmp_path, "--wait-before-listen", "0.5")
    record = str(tmp_path / "starts.jsonl")
    children = [child(_START, record, "0", daemon=d) for _ in range(3)]
    try:
        outcomes = together(children)
        kinds = sorted(outcome["outcome"] for outcome in outcomes)
        assert kinds == ["already", "already", "started"], outcomes
        assert {outcome["pid"] for outcome in outcomes} == {d.read_pid()}
        assert count_starts(tmp_path / "starts.jsonl") == 1
        assert [p.pid for p in echo.marked()] == [d.read_pid()]
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        d.stop()


@pytest.mark.slow
def test_exclusive_lock_serialises_starts_across_processes(echo, tmp_path, child):
    # The start command fails, so each start runs its before_start (1 s, under
    # the lock) and fails: two full intervals that must not overlap.
    d = failing(echo, tmp_path)
    record = str(tmp_path / "starts.jsonl")
    children = [child(_START, record, "1.0", daemon=d) for _ in range(2)]
    outcomes = together(children)
    assert [o["outcome"] for o in outcomes] == ["start_error", "start_error"], outcomes
    assert [o["exit_status"] for o in outcomes] == [5, 5]
    records = start_records(tmp_path / "starts.jsonl")
    assert len({r["pid"] for r in records}) == 2
    intervals = assert_no_overlap(records)
    assert len(intervals) == 2
    for enter, leave in intervals:
        assert leave - enter >= 0.9


@pytest.mark.slow
def test_exclusive_lock_serialises_starts_across_threads(echo, tmp_path):
    d = failing(echo, tmp_path)
    barrier = threading.Barrier(2, timeout=DEADLINE)
    outcomes: list[object] = []

    def worker(_: int) -> None:
        barrier.wait()
        try:
            d.start()
        except BaseException as err:
            outcomes.append(err)

    run_threads(2, worker)
    assert len(outcomes) == 2
    assert all(type(o) is StartError and o.exit_status == 5 for o in outcomes), outcomes
    records = start_records(tmp_path / "starts.jsonl")
    assert len({r["thread"] for r in records}) == 2
    assert len(assert_no_overlap(records)) == 2
