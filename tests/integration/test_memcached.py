"""memcached, for real: ``memcached -d -v -P <pidfile> ... >>log 2>&1``, pinged over TCP.

Covers start/stop/restart on the same port, memcached's PID file (written
after it binds and after switching to ``-u nobody``; removed when it exits),
the run-as user, its errors after going into the background reaching the
``StartError`` only with ``-v`` and its output redirected to the log, a PID
file it cannot write (the start fails with memcached's own line and nothing is
left running), ``-d`` changing directory to ``/`` (a relative ``-P`` is
relative to ``/``), start/stop times, and readiness from its output: with
``-vv`` memcached prints ``server listening`` once it has bound its port, so
run in the foreground (its output is its log) it needs ``ping_log()`` only.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
from pathlib import Path

import psutil
import pytest
from helpers import MARKER, free_port, time_start_stop

from daemon_controller import Daemon, StartError


def memcached_daemon(
    memcached: str,
    work: Path,
    port: int,
    test_id: str,
    *,
    verbose: bool = True,
    pid_arg: str | None = None,
) -> Daemon:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    pid_file = work / "memcached.pid"
    argv = [memcached, "-d", *(["-v"] if verbose else []), "-P", pid_arg or str(pid_file)]
    argv += ["-p", str(port), "-l", "127.0.0.1", "-U", "0", *user]
    log = work / "memcached.log"
    return (
        Daemon("memcached")
        .start_with(f"{shlex.join(argv)} >>{shlex.quote(str(log))} 2>&1")
        .ping_tcp("127.0.0.1", port)
        .pid(pid_file)
        .log(log)
        .start_timeout(20)
        .stop_timeout(20)
        .start_abort_timeout(3)
        .log_activity_timeout(1)
        .env({MARKER: test_id})
    )


def version(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"version\r\n")
        return sock.recv(100).decode().strip()


def kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def work(owned_dir):
    # As root, memcached runs as nobody and writes its PID file as nobody.
    return owned_dir("nobody")


def test_start_stop_pid_file_and_user(memcached_bin, work, procs, test_id):
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id)
    pid = None
    try:
        cache.start()
        pid = procs.track(cache.read_pid())
        assert pid is not None
        assert cache.is_running()
        proc = psutil.Process(pid)
        assert proc.name() == "memcached"
        if os.geteuid() == 0:
            assert proc.username() == "nobody"
        assert version(port).startswith("VERSION ")
        cache.stop()
        assert procs.gone(pid)
        assert not (work / "memcached.pid").exists()  # removed by memcached on SIGTERM
        assert not cache.is_running()
    finally:
        cache.stop()
        kill(pid)


def test_restart_on_the_same_port_right_after_stop(memcached_bin, work, procs, test_id):
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id)
    pids = []
    try:
        for _ in range(3):
            cache.start()
            pids.append(procs.track(cache.read_pid()))
            assert version(port).startswith("VERSION ")
            cache.stop()
            assert procs.gone(pids[-1])
        cache.start()
        pids.append(procs.track(cache.read_pid()))
        cache.restart()
        pids.append(procs.track(cache.read_pid()))
        assert procs.gone(pids[-2])
        assert len(set(pids)) == 5
    finally:
        cache.stop()
        for pid in pids:
            kill(pid)


def test_port_taken_error_is_shown_with_v(memcached_bin, work, procs, test_id):
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))  # taken, but not listening: pings still fail
        with pytest.raises(StartError) as caught:
            cache.start()
    assert "failed to listen on one of interface(s) 127.0.0.1: Address already in use" in str(
        caught.value
    )
    assert not cache.is_running()


def test_port_taken_error_is_lost_without_v(memcached_bin, work, procs, test_id):
    """Why the examples use -v: without it, memcached -d sends its errors to /dev/null."""
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id, verbose=False)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        with pytest.raises(StartError) as caught:
            cache.start()
    assert "failed to listen" not in str(caught.value)
    assert "(logs empty" in str(caught.value)


def start_with_unwritable_pid_file(memcached_bin, work, test_id) -> StartError:
    """Start memcached with a PID file in a missing directory; return the StartError."""
    missing = work / "no-such-dir" / "memcached.pid"
    cache = (
        memcached_daemon(memcached_bin, work, free_port(), test_id, pid_arg=str(missing))
        .pid(missing)
        .lock(work / "memcached.lock")
    )
    with pytest.raises(StartError) as caught:
        cache.start()
    return caught.value


def test_unwritable_pid_file_fails_with_memcached_line(memcached_bin, work, procs, test_id):
    """memcached keeps running when it cannot write its PID file; the start must fail."""
    error = start_with_unwritable_pid_file(memcached_bin, work, test_id)
    assert f"Could not open the pid file {work / 'no-such-dir' / 'memcached.pid'}" in str(error)
    assert procs.wait_until(lambda: not procs.survivors(), timeout=10)


def test_unwritable_pid_file_error_does_not_claim_memcached_exited(
    memcached_bin, work, procs, test_id
):
    """The daemon was alive (the library stopped it afterwards): the message must say so."""
    error = start_with_unwritable_pid_file(memcached_bin, work, test_id)
    assert "exited" not in error.message, error.message


def test_relative_pid_file_is_relative_to_root_after_d(memcached_bin, work, procs, test_id):
    """memcached -d does chdir("/"): a relative -P names a file in /, not in cwd().

    The work directory is writable by memcached's user; / is not.
    """
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id, pid_arg="memcached.pid").cwd(work)
    with pytest.raises(StartError) as caught:
        cache.start()
    assert "Could not open the pid file memcached.pid.tmp for writing: Permission denied" in str(
        caught.value
    )
    assert not (work / "memcached.pid").exists()
    assert not Path("/memcached.pid").exists()
    assert procs.wait_until(lambda: not procs.survivors(), timeout=10)


def logging_memcached(memcached: str, port: int, test_id: str) -> Daemon:
    """memcached in the foreground: no -d, no -P; ready when it prints that it listens."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return (
        Daemon(f"memcached-{test_id[:8]}")
        .start_with([memcached, "-vv", "-p", str(port), "-l", "127.0.0.1", "-U", "0", *user])
        .foreground()
        .ping_log("server listening")
        .start_timeout(20)
        .stop_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def test_ping_log_in_the_foreground(memcached_bin, procs, test_id):
    port = free_port()
    cache = logging_memcached(memcached_bin, port, test_id)
    pid = None
    try:
        cache.start()
        pid = procs.track(cache.read_pid())
        assert psutil.Process(pid).name() == "memcached"
        assert version(port).startswith("VERSION ")  # at once
        assert cache.status().readiness == ("log",)
        cache.stop()
        assert procs.gone(pid)
    finally:
        cache.stop()
        kill(pid)


def test_ping_log_port_taken_fails_at_once_with_memcached_line(memcached_bin, procs, test_id):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cache = logging_memcached(memcached_bin, port, test_id).start_timeout(60)
        with pytest.raises(StartError) as caught:
            cache.start()
    text = str(caught.value)
    assert "pattern 'server listening' not seen; the daemon (PID" in text
    assert "its last lines:" in text
    assert "Address already in use" in text
    assert caught.value.exit_status is not None
    assert not cache.is_running()


def test_start_and_stop_times(memcached_bin, work, procs, test_id):
    port = free_port()
    cache = memcached_daemon(memcached_bin, work, port, test_id)
    starts, stops = time_start_stop("memcached", cache, procs.track, kill)
    assert max(starts) < 15
    assert max(stops) < 15
