"""Redis, for real: ``daemonize yes`` with its own ``pidfile``, ``logfile`` and ``dir``.

Covers start/stop/restart/is_running/read_pid, Redis's PID-file handling (it
writes the file after binding, removes it on shutdown — also on a SHUTDOWN
command we did not send through the library — and leaves it behind when
killed), a restart on the same port right after ``stop()`` (Redis holds its port
until it exits), start errors with Redis's own lines (a bad directive, before
it daemonizes; a port already taken, after it daemonized, from its log file),
``connect()`` from several processes at once starting Redis exactly once,
``running()``, readiness while Redis loads its dataset (a TCP ping says "ready"
while every command still gets ``-LOADING``; a PING that must answer ``+PONG``
waits, and so does ``notify()``: Redis sends ``READY=1`` once it has loaded),
Redis with ``--supervised systemd`` and ``notify()`` needing no PID or log file
of its own (in the foreground, or going into the background and found by its
message), and start/stop times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers import MARKER, count_starts, free_port, release_together, time_start_stop

from daemon_controller import Daemon, StartError

# -- a minimal RESP client ---------------------------------------------------------------


class RedisError(Exception):
    pass


def encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(stream):
    line = stream.readline()
    if not line:
        raise ConnectionResetError("connection closed")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [read_reply(stream) for _ in range(int(rest))]
    raise RedisError(f"bad reply {line!r}")


def call(port: int, *args: str):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode(*args))
        with sock.makefile("rb") as stream:
            return read_reply(stream)


def pong(port: int) -> bool:
    """Readiness that means ready: PING answers +PONG (not -LOADING)."""
    try:
        return call(port, "PING") == "PONG"
    except RedisError:
        return False


def redis_pid(port: int) -> int:
    info = call(port, "INFO", "server")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(fields["process_id"])


# -- set-up --------------------------------------------------------------------------------


def write_config(work: Path, port: int, extra: str = "") -> Path:
    config = work / "redis.conf"
    config.write_text(
        "daemonize yes\n"
        f"pidfile {work}/redis.pid\n"
        f"logfile {work}/redis.log\n"
        "bind 127.0.0.1\n"
        f"port {port}\n"
        f"dir {work}\n"
        'save ""\n' + extra
    )
    return config


def redis_daemon(redis: str, work: Path, port: int, test_id: str) -> Daemon:
    return (
        Daemon("redis")
        .start_with([redis, str(work / "redis.conf")])
        .ping(lambda: pong(port))
        .pid(work / "redis.pid")
        .log(work / "redis.log")
        .start_timeout(20)
        .stop_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def work(owned_dir):
    return owned_dir()


# -- tests -----------------------------------------------------------------------------------


def test_start_stop_and_pid_file(redis_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    pid = None
    try:
        assert not redis.is_running()
        redis.start()
        pid = procs.track(redis.read_pid())
        assert pid is not None
        assert redis.is_running()
        assert int((work / "redis.pid").read_text().strip()) == pid
        assert redis_pid(port) == pid
        assert call(port, "SET", "k", "v") == "OK"
        assert call(port, "GET", "k") == "v"
        redis.stop()
        assert procs.gone(pid)
        assert not (work / "redis.pid").exists()  # Redis removes it on shutdown
        assert not redis.is_running()
        with pytest.raises(ConnectionRefusedError):
            call(port, "PING")
    finally:
        redis.stop()
        kill(pid)


def test_restart_on_the_same_port_right_after_stop(redis_bin, work, procs, test_id):
    """Redis holds its listening socket until it exits: stop() must wait for the exit."""
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    pids = []
    try:
        for _ in range(3):
            redis.start()
            pids.append(procs.track(redis.read_pid()))
            assert redis_pid(port) == pids[-1]
            redis.stop()
            assert procs.gone(pids[-1])
        redis.start()
        pids.append(procs.track(redis.read_pid()))
        redis.restart()
        pids.append(procs.track(redis.read_pid()))
        assert procs.gone(pids[-2])
        assert redis_pid(port) == pids[-1]
        assert len(set(pids)) == 5
    finally:
        redis.stop()
        for pid in pids:
            kill(pid)


def test_killed_redis_leaves_a_stale_pid_file_that_is_handled(redis_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    first = second = None
    try:
        redis.start()
        first = procs.track(redis.read_pid())
        kill(first)
        assert procs.wait_until(lambda: procs.gone(first), timeout=10)
        assert (work / "redis.pid").exists()  # no chance to remove it
        # Redis has threads: it has exited once all of them have, which can be
        # a few milliseconds after its main thread shows up as a zombie.
        assert procs.wait_until(lambda: not redis.is_running(), timeout=10)
        assert not (work / "redis.pid").exists()
        redis.start()
        second = procs.track(redis.read_pid())
        assert second not in (None, first)
        assert pong(port)
    finally:
        redis.stop()
        kill(first)
        kill(second)


def test_shutdown_command_outside_the_library(redis_bin, work, procs, test_id):
    """Redis shut down by a client: it removes its PID file; stop() has nothing to do."""
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    pid = None
    try:
        redis.start()
        pid = procs.track(redis.read_pid())
        with pytest.raises(ConnectionResetError):
            call(port, "SHUTDOWN", "NOSAVE")  # no reply: Redis closes the connection
        assert procs.wait_until(lambda: procs.gone(pid), timeout=10)
        assert not redis.is_running()
        redis.stop()  # silent
        assert not (work / "redis.pid").exists()
    finally:
        redis.stop()
        kill(pid)


def test_bad_directive_shows_redis_error_line(redis_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port, "no-such-directive yes\n")
    redis = redis_daemon(redis_bin, work, port, test_id)
    with pytest.raises(StartError) as caught:
        redis.start()
    err = caught.value
    assert "Bad directive or wrong number of arguments" in str(err)
    assert "no-such-directive yes" in str(err)
    assert err.exit_status == 1
    assert "Bad directive" in (err.output or "")  # printed before daemonizing
    assert not redis.is_running()


def test_port_taken_after_daemonizing_shows_redis_log_line(redis_bin, work, procs, test_id):
    """Redis binds after going into the background: its error is only in its log file."""
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))  # taken, but not listening: pings still fail
        with pytest.raises(StartError) as caught:
            redis.start()
    text = str(caught.value)
    assert "Address already in use" in text
    assert f"Failed listening on port {port}" in text
    assert "Address already in use" in (caught.value.log or "")
    assert not redis.is_running()


# args: this directory, then what redis_daemon() takes.
_WORKER = """
from pathlib import Path
sys.path.insert(0, args[0])
from helpers import BeforeStart
from test_redis import redis_daemon, redis_pid
redis_bin, work, port, test_id = args[1], Path(args[2]), int(args[3]), args[4]
redis = redis_daemon(redis_bin, work, port, test_id)
redis = redis.before_start(BeforeStart(work / "starts.jsonl"))
tell_parent("ready")
wait_for_parent()
sock = redis.connect(lambda: socket.create_connection(("127.0.0.1", port), timeout=10))
sock.close()
tell_parent({"pid": redis_pid(port)})
"""


def test_connect_from_several_processes_starts_redis_once(redis_bin, work, procs, test_id, child):
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    here = str(Path(__file__).parent)
    args = (here, redis_bin, str(work), str(port), test_id)
    workers = [child(_WORKER, *args) for _ in range(6)]
    pid = None
    try:
        release_together(workers)  # all six connect at the same moment
        seen = {worker.message()["pid"] for worker in workers}
        for worker in workers:
            worker.finish()
        pid = procs.track(redis.read_pid())
        assert seen == {pid}
        assert count_starts(work / "starts.jsonl") == 1
    finally:
        redis.stop()
        kill(pid)


def test_running_block_starts_and_stops_redis(redis_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    pid = None
    try:
        with redis.running():
            pid = procs.track(redis.read_pid())
            assert pong(port)
        assert procs.gone(pid)
        assert not redis.is_running()
    finally:
        redis.stop()
        kill(pid)


@pytest.mark.slow
def test_tcp_ping_is_ready_too_early_while_redis_loads_its_dataset(redis_bin, work, procs, test_id):
    """Redis accepts connections while loading; only PING -> +PONG means it can serve."""
    port = free_port()
    keys = 1500
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    pids = []
    try:
        redis.start()
        pids.append(procs.track(redis.read_pid()))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"".join(encode("SET", f"key:{i}", "x" * 50) for i in range(keys)))
            with sock.makefile("rb") as stream:
                assert all(read_reply(stream) == "OK" for _ in range(keys))
        assert call(port, "SAVE") == "OK"
        redis.stop()

        # Loading now takes about keys * 1 ms (key-load-delay is in microseconds).
        write_config(
            work,
            port,
            "key-load-delay 1000\nloading-process-events-interval-bytes 1024\n",
        )
        tcp_only = redis.ping_tcp("127.0.0.1", port)
        tcp_only.start()
        pids.append(procs.track(tcp_only.read_pid()))
        with pytest.raises(RedisError, match="LOADING"):
            call(port, "GET", "key:1")
        tcp_only.stop()
        assert procs.gone(pids[-1])  # Redis 7 handles SIGTERM while loading

        began = time.monotonic()
        redis.start()  # the PING/PONG ping
        waited = time.monotonic() - began
        pids.append(procs.track(redis.read_pid()))
        assert call(port, "GET", "key:1") == "x" * 50
        assert call(port, "DBSIZE") == keys
        assert waited > 0.5  # it really waited for the loading
    finally:
        redis.stop()
        for pid in pids:
            kill(pid)


def notifying_redis(redis: str, work: Path, port: int, test_id: str, *extra: str) -> Daemon:
    """Redis under the sd_notify protocol: no pid(), no log(), no ping."""
    return (
        Daemon(f"redis-notify-{test_id[:8]}")
        .start_with(
            [
                *(redis, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--dir", str(work), "--supervised", "systemd", *extra),
            ]
        )
        .notify()
        .start_timeout(20)
        .stop_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def test_notify_in_the_foreground_needs_no_pid_or_log_file(redis_bin, work, procs, test_id):
    port = free_port()
    redis = notifying_redis(redis_bin, work, port, test_id, "--daemonize", "no")
    pid = None
    try:
        redis.start()
        pid = procs.track(redis.read_pid())
        assert pid == redis_pid(port)  # READY=1 came from Redis itself
        assert pong(port)  # ready means ready, at once
        status = redis.status()
        assert status.readiness == ("notify",)
        assert status.notify_status == "Ready to accept connections"  # its last STATUS=
        log = redis.resolved().config.log_file
        assert "Ready to accept connections" in log.read_text()  # its output is its log
        redis.stop()
        assert procs.gone(pid)
        assert not redis.is_running()
    finally:
        redis.stop()
        kill(pid)


def test_notify_going_into_the_background_is_found_by_its_message(redis_bin, work, procs, test_id):
    # Daemonized, with a PID file of its own that we are not told about: the
    # process that sends READY=1 is the daemon.
    port = free_port()
    redis = notifying_redis(
        redis_bin, work, port, test_id,
        "--daemonize", "yes", "--pidfile", str(work / "own.pid"),
        "--logfile", str(work / "redis.log"),
    )  # fmt: skip
    pid = None
    try:
        redis.start()
        pid = procs.track(redis.read_pid())
        assert pid == redis_pid(port) == int((work / "own.pid").read_text())
        assert pong(port)
        redis.stop()
        assert procs.gone(pid)
    finally:
        redis.stop()
        kill(pid)


@pytest.mark.slow
def test_notify_waits_while_redis_loads_its_dataset(redis_bin, work, procs, test_id):
    port = free_port()
    keys = 1500
    redis = notifying_redis(redis_bin, work, port, test_id, "--daemonize", "no")
    pids = []
    try:
        redis.start()
        pids.append(procs.track(redis.read_pid()))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"".join(encode("SET", f"key:{i}", "x" * 50) for i in range(keys)))
            with sock.makefile("rb") as stream:
                assert all(read_reply(stream) == "OK" for _ in range(keys))
        assert call(port, "SAVE") == "OK"
        redis.stop()

        # Loading now takes about keys * 1 ms (key-load-delay is in microseconds).
        slow = notifying_redis(
            redis_bin, work, port, test_id, "--daemonize", "no",
            "--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024",
        )  # fmt: skip
        began = time.monotonic()
        slow.start()
        waited = time.monotonic() - began
        pids.append(procs.track(slow.read_pid()))
        assert call(port, "GET", "key:1") == "x" * 50  # no -LOADING
        assert call(port, "DBSIZE") == keys
        assert waited > 0.5  # it really waited for the loading
        slow.stop()
    finally:
        redis.stop()
        for pid in pids:
            kill(pid)


def test_start_and_stop_times(redis_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port)
    redis = redis_daemon(redis_bin, work, port, test_id)
    starts, stops = time_start_stop("redis", redis, procs.track, kill)
    assert max(starts) < 15
    assert max(stops) < 15
