"""Serialisation of starts and connects across threads and processes (issue 2, section 3).

``start()`` holds the lock file exclusively for its whole run and ``connect()``
/ ``is_running()`` take it shared, so concurrent callers, be they threads of
this process or other processes, see a daemon either before a start or after
it. These tests line callers up with barriers and check the real effects: the
number of starts (``before_start`` appends a line to a file per start, the echo
server logs "daemonized" once per start), the processes alive afterwards, and
the enter/exit times recorded under the lock.

Other processes are ``multiprocessing`` children with the "spawn" context; they
import this module and build the same ``Daemon`` from plain arguments.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from echo_server import echo_command, free_port

from daemon_controller import AlreadyStarted, Daemon, StartError

NAME = "Concurrency echo"
DEADLINE = 60.0  # generous: barriers and joins on a loaded 2-core machine

# -- helpers shared by the parent and the spawned children -------------------------------------


def _record(path: str, **fields: Any) -> None:
    """Append one JSON line with one write() (O_APPEND: lines from many processes never mix)."""
    line = json.dumps({"pid": os.getpid(), "thread": threading.get_ident(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _BeforeStart:
    """A picklable before_start: records entry and exit, optionally sleeping in between."""

    def __init__(self, record: str, sleep: float = 0.0) -> None:
        self.record = record
        self.sleep = sleep

    def __call__(self) -> None:
        _record(self.record, event="enter", t=time.monotonic())
        if self.sleep:
            time.sleep(self.sleep)
        _record(self.record, event="exit", t=time.monotonic())


def _make_daemon(
    tmp: str,
    port: int,
    test_id: str,
    *,
    sleep: float = 0.0,
    fail: bool = False,
) -> Daemon:
    directory = Path(tmp)
    args = [
        "--port",
        str(port),
        "--pid-file",
        str(directory / "echo.pid"),
        "--log-file",
        str(directory / "echo.log"),
    ]
    if fail:
        args += ["--exit-before-daemonize", "5"]
    return (
        Daemon(NAME)
        .start_with(echo_command(*args))
        .ping_tcp("127.0.0.1", port)
        .pid(directory / "echo.pid")
        .log(directory / "echo.log")
        .before_start(_BeforeStart(str(directory / "starts.jsonl"), sleep))
        .start_timeout(30)
        .stop_timeout(10)
        .start_abort_timeout(3)
        .env({"DC_TEST_ID": test_id})
    )


def _connect_and_echo(d: Daemon, port: int, payload: bytes) -> bytes:
    sock = d.connect(lambda: socket.create_connection(("127.0.0.1", port), timeout=10))
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _child_connect(*, tmp: str, port: int, test_id: str, barrier, queue, ready=None) -> None:
    d = _make_daemon(tmp, port, test_id)
    payload = f"hello from {os.getpid()}".encode()
    try:
        barrier.wait(timeout=DEADLINE)
        if ready is not None:
            ready.set()
        echoed = _connect_and_echo(d, port, payload)
        queue.put(("ok", os.getpid(), echoed == payload, d.read_pid()))
    except BaseException as err:
        queue.put(("error", os.getpid(), repr(err), None))
        raise


def _child_start(*, tmp: str, port: int, test_id: str, barrier, queue, sleep=0.0, fail=False):
    d = _make_daemon(tmp, port, test_id, sleep=sleep, fail=fail)
    try:
        barrier.wait(timeout=DEADLINE)
        d.start()
    except AlreadyStarted as err:
        queue.put(("already", os.getpid(), err.pid))
    except StartError as err:
        queue.put(("start_error", os.getpid(), err.exit_status))
    except BaseException as err:
        queue.put(("error", os.getpid(), repr(err)))
        raise
    else:
        queue.put(("started", os.getpid(), d.read_pid()))


def _child_hold_lock(*, tmp: str, port: int, test_id: str) -> None:
    # before_start runs under the exclusive lock: signal that, then hang there.
    inside = Path(tmp) / "inside"

    def hang() -> None:
        inside.touch()
        time.sleep(3600)

    _make_daemon(tmp, port, test_id).before_start(hang).start()


# -- parent-side helpers -----------------------------------------------------------------------


class _Children:
    """Spawned processes that are always joined (or killed) at the end."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[multiprocessing.process.BaseProcess] = []

    def start(self, target, **kwargs) -> multiprocessing.process.BaseProcess:
        proc = self.ctx.Process(target=target, kwargs=kwargs)
        proc.start()
        self.procs.append(proc)
        return proc

    def join(self) -> None:
        for proc in self.procs:
            proc.join(timeout=DEADLINE)
        self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=DEADLINE)


def _drain(queue, count: int) -> list[tuple]:
    return [queue.get(timeout=DEADLINE) for _ in range(count)]


def _starts(tmp_path: Path) -> int:
    return sum(1 for r in _records(tmp_path / "starts.jsonl") if r["event"] == "enter")


def _daemonized(tmp_path: Path) -> int:
    log = tmp_path / "echo.log"
    return log.read_text().count("daemonized") if log.exists() else 0


def _live_echo_servers(test_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("DC_TEST_ID") != test_id:
                continue
            if any("echo_server" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _wait_for(predicate, timeout: float = DEADLINE) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _assert_no_overlap(intervals: list[tuple[float, float]]) -> None:
    intervals = sorted(intervals)
    for (_, first_exit), (second_enter, _) in itertools.pairwise(intervals):
        assert first_exit <= second_enter, intervals


def _intervals(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    enters: dict[tuple[int, int], float] = {}
    result = []
    for r in records:
        key = (r["pid"], r["thread"])
        if r["event"] == "enter":
            enters[key] = r["t"]
        else:
            result.append((enters.pop(key), r["t"]))
    assert not enters, "an enter without an exit"
    return result


# -- connect ---------------------------------------------------------------------------------


def test_threads_connecting_at_once_start_the_daemon_exactly_once(tmp_path, test_id):
    port = free_port()
    d = _make_daemon(str(tmp_path), port, test_id)
    count = 8
    barrier = threading.Barrier(count, timeout=DEADLINE)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        try:
            barrier.wait()
            payload = f"thread {i}".encode()
            results[i] = _connect_and_echo(d, port, payload) == payload
        except BaseException as err:
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(timeout=DEADLINE)
        assert not any(t.is_alive() for t in threads)
        assert results == dict.fromkeys(range(count), True)
        assert _starts(tmp_path) == 1
        assert _daemonized(tmp_path) == 1
        servers = _live_echo_servers(test_id)
        assert [p.pid for p in servers] == [d.read_pid()]
    finally:
        d.stop()


@pytest.mark.slow
def test_processes_connecting_at_once_start_the_daemon_exactly_once(tmp_path, test_id):
    port = free_port()
    count = 6
    children = _Children()
    barrier = children.ctx.Barrier(count)
    queue = children.ctx.Queue()
    d = _make_daemon(str(tmp_path), port, test_id)
    try:
        for _ in range(count):
            children.start(
                _child_connect,
                tmp=str(tmp_path),
                port=port,
                test_id=test_id,
                barrier=barrier,
                queue=queue,
            )
        outcomes = _drain(queue, count)
        children.join()
        assert [o[0] for o in outcomes] == ["ok"] * count, outcomes
        assert all(o[2] is True for o in outcomes), outcomes
        pids_seen = {o[3] for o in outcomes}
        assert len(pids_seen) == 1, outcomes
        assert [p.exitcode for p in children.procs] == [0] * count
        assert _starts(tmp_path) == 1
        assert _daemonized(tmp_path) == 1
        servers = _live_echo_servers(test_id)
        assert [p.pid for p in servers] == [d.read_pid()] == list(pids_seen)
    finally:
        children.kill()
        queue.close()
        queue.join_thread()
        d.stop()


# -- start -------------------------------------------------------------------------------------


def test_concurrent_start_from_two_threads_one_gets_already_started(tmp_path, test_id):
    d = _make_daemon(str(tmp_path), free_port(), test_id)
    barrier = threading.Barrier(2, timeout=DEADLINE)
    outcomes: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            d.start()
        except BaseException as err:
            outcomes.append(err)
        else:
            outcomes.append("started")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(timeout=DEADLINE)
        assert not any(t.is_alive() for t in threads)
        assert outcomes.count("started") == 1, outcomes
        errors = [o for o in outcomes if o != "started"]
        assert len(errors) == 1
        assert isinstance(errors[0], AlreadyStarted), errors
        assert errors[0].pid == d.read_pid()
        assert _starts(tmp_path) == 1
        assert len(_live_echo_servers(test_id)) == 1
    finally:
        d.stop()


@pytest.mark.slow
def test_concurrent_start_from_two_processes_one_gets_already_started(tmp_path, test_id):
    port = free_port()
    children = _Children()
    barrier = children.ctx.Barrier(2)
    queue = children.ctx.Queue()
    d = _make_daemon(str(tmp_path), port, test_id)
    try:
        for _ in range(2):
            children.start(
                _child_start,
                tmp=str(tmp_path),
                port=port,
                test_id=test_id,
                barrier=barrier,
                queue=queue,
            )
        outcomes = _drain(queue, 2)
        children.join()
        kinds = sorted(o[0] for o in outcomes)
        assert kinds == ["already", "started"], outcomes
        started = next(o for o in outcomes if o[0] == "started")
        already = next(o for o in outcomes if o[0] == "already")
        assert already[2] == started[2] == d.read_pid()
        assert _starts(tmp_path) == 1
        assert [p.pid for p in _live_echo_servers(test_id)] == [started[2]]
    finally:
        children.kill()
        queue.close()
        queue.join_thread()
        d.stop()


@pytest.mark.slow
def test_exclusive_lock_serialises_starts_across_processes(tmp_path, test_id):
    # The start command fails, so each start runs its before_start (1 s, under
    # the lock) and fails: two full intervals that must not overlap.
    port = free_port()
    children = _Children()
    barrier = children.ctx.Barrier(2)
    queue = children.ctx.Queue()
    try:
        for _ in range(2):
            children.start(
                _child_start,
                tmp=str(tmp_path),
                port=port,
                test_id=test_id,
                barrier=barrier,
                queue=queue,
                sleep=1.0,
                fail=True,
            )
        outcomes = _drain(queue, 2)
        children.join()
        assert [o[0] for o in outcomes] == ["start_error", "start_error"], outcomes
        assert [o[2] for o in outcomes] == [5, 5]
        records = _records(tmp_path / "starts.jsonl")
        assert len({r["pid"] for r in records}) == 2
        intervals = _intervals(records)
        assert len(intervals) == 2
        for enter, leave in intervals:
            assert leave - enter >= 0.9
        _assert_no_overlap(intervals)
    finally:
        children.kill()
        queue.close()
        queue.join_thread()


@pytest.mark.slow
def test_exclusive_lock_serialises_starts_across_threads(tmp_path, test_id):
    d = _make_daemon(str(tmp_path), free_port(), test_id, sleep=1.0, fail=True)
    barrier = threading.Barrier(2, timeout=DEADLINE)
    outcomes: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            d.start()
        except BaseException as err:
            outcomes.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 2
    assert all(type(o) is StartError and o.exit_status == 5 for o in outcomes), outcomes
    records = _records(tmp_path / "starts.jsonl")
    assert len({r["thread"] for r in records}) == 2
    intervals = _intervals(records)
    assert len(intervals) == 2
    _assert_no_overlap(intervals)


def test_lock_of_a_sigkilled_holder_is_released(tmp_path, test_id):
    port = free_port()
    children = _Children()
    d = _make_daemon(str(tmp_path), port, test_id)
    try:
        holder = children.start(_child_hold_lock, tmp=str(tmp_path), port=port, test_id=test_id)
        assert _wait_for((tmp_path / "inside").exists), "child never took the lock"

        # While the child holds the exclusive lock, a start here must wait.
        outcome: list[object] = []
        waiter = threading.Thread(target=lambda: outcome.append(d.start() or "started"))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive()
        assert outcome == []

        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=DEADLINE)
        assert holder.exitcode == -signal.SIGKILL

        waiter.join(timeout=DEADLINE)
        assert not waiter.is_alive()
        assert outcome == ["started"]
        assert d.is_running()
        # The killed child ran its before_start; ours is the one that started.
        assert _starts(tmp_path) == 1
        assert _daemonized(tmp_path) == 1
    finally:
        children.kill()
        d.stop()


def test_is_running_from_another_thread_waits_for_a_start(tmp_path, test_id):
    entered = threading.Event()
    release = threading.Event()

    def before_start() -> None:
        entered.set()
        release.wait(timeout=DEADLINE)

    d = _make_daemon(str(tmp_path), free_port(), test_id).before_start(before_start)
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


def test_connect_from_another_process_waits_for_a_start_in_progress(tmp_path, test_id):
    # A start in this process holds the lock; a child connecting meanwhile must
    # not start a second daemon: it waits, then uses the one we started.
    port = free_port()
    entered = threading.Event()
    release = threading.Event()

    def before_start() -> None:
        entered.set()
        release.wait(timeout=DEADLINE)

    d = _make_daemon(str(tmp_path), port, test_id).before_start(before_start)
    children = _Children()
    barrier = children.ctx.Barrier(1)
    ready = children.ctx.Event()
    queue = children.ctx.Queue()
    start_thread = threading.Thread(target=d.start)
    start_thread.start()
    try:
        assert entered.wait(timeout=DEADLINE)
        children.start(
            _child_connect,
            tmp=str(tmp_path),
            port=port,
            test_id=test_id,
            barrier=barrier,
            queue=queue,
            ready=ready,
        )
        assert ready.wait(timeout=DEADLINE)
        # Give the child a moment to block on the lock (the test stays valid,
        # only weaker, if it gets there after the release).
        time.sleep(0.3)
        assert queue.empty()
        release.set()
        start_thread.join(timeout=DEADLINE)
        outcome = _drain(queue, 1)[0]
        children.join()
        assert outcome[0] == "ok", outcome
        assert outcome[2] is True
        assert outcome[3] == d.read_pid()
        # Our before_start was replaced, so the file records only the child's
        # starts: none.
        assert _starts(tmp_path) == 0
        assert _daemonized(tmp_path) == 1
    finally:
        release.set()
        start_thread.join(timeout=DEADLINE)
        children.kill()
        queue.close()
        queue.join_thread()
        d.stop()
