"""nginx, for real: daemonized (``daemon on``), its own PID file and error log.

Covers the README's Tutorial 1 cycle (write a config, start, request, stop, on
the same port again at once), restart with a new config, ``stop()`` returning
only once the master has exited (nginx deletes its PID file a moment before),
workers gone with it, a crashed nginx's stale PID file, start errors showing
nginx's own error line (config syntax; port taken), a stop that times out not
leaving orphaned workers behind, start/stop times, and readiness from the error
log (``ping_log()``: nginx logs ``start worker processes`` at ``notice`` once it
has bound its sockets and gone into the background).
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import re
import signal
import socket
import subprocess
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import MARKER, free_port, time_start_stop

from daemon_controller import Daemon, StartError, StopTimeout

if TYPE_CHECKING:
    from pathlib import Path


def supports_e_option(nginx: str) -> bool:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return found is not None and tuple(map(int, found.groups())) >= (1, 19, 5)


def write_config(work: Path, port: int, server: str, *, main: str = "", workers: int = 1) -> None:
    user = ""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    (work / "nginx.conf").write_text(f"""
{user}
daemon on;
master_process on;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/error.log info;
{main}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body_temp;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        {server}
    }}
}}
""")


def returning(value: str) -> str:
    return f'location / {{ return 200 "{value}"; }}'


def nginx_daemon(
    nginx: str, work: Path, port: int, test_id: str, *, ready_line: str | None = None
) -> Daemon:
    """nginx pinged over TCP, or, given ``ready_line``, ready when its error log says so."""
    error_log = ["-e", str(work / "error.log")] if supports_e_option(nginx) else []
    daemon = Daemon("nginx").start_with(
        [nginx, "-p", str(work), "-c", str(work / "nginx.conf"), *error_log]
    )
    daemon = (
        daemon.ping_tcp("127.0.0.1", port) if ready_line is None else daemon.ping_log(ready_line)
    )
    return (
        daemon.pid(work / "nginx.pid")
        .log(work / "error.log")
        .start_timeout(20)
        .stop_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def workers_of(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def serving(workers: list[int], client_port: int) -> bool:
    """Whether one of the workers has accepted the connection from ``client_port``."""
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(worker).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr[1] == client_port:
                    return True
    return False


def kill_nginx(pid: int | None) -> None:
    """Kill an nginx master and its workers."""
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        master = psutil.Process(pid)
        for proc in [master, *master.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def work(owned_dir):
    return owned_dir()


def test_start_serves_config_and_stop_returns_after_master_exit(nginx_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port, returning("value-1"), workers=2)
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    pid = None
    try:
        nginx.start()
        pid = procs.track(nginx.read_pid())
        assert pid is not None
        assert nginx.is_running()
        assert int((work / "nginx.pid").read_text().split()[0]) == pid
        # nginx writes its PID file (from the parent, naming the child) before
        # the master has set its title and forked its workers.
        master = psutil.Process(pid)
        assert procs.wait_until(
            lambda: "nginx: master process" in " ".join(master.cmdline()), timeout=10
        )
        assert procs.wait_until(lambda: len(workers_of(pid)) == 2, timeout=10)
        workers = workers_of(pid)
        for worker in workers:
            procs.track(worker)
        assert get(port) == (200, "value-1")

        nginx.stop()
        # Returned only once the master exited; nginx waits for its workers first.
        assert procs.gone(pid)
        assert all(procs.gone(worker) for worker in workers)
        assert not (work / "nginx.pid").exists()
        assert not nginx.is_running()
        assert nginx.read_pid() is None
    finally:
        nginx.stop()
        kill_nginx(pid)


def test_tutorial_cycle_on_the_same_port(nginx_bin, work, procs, test_id):
    """Write a config, start, request, stop; again at once on the same port, three times."""
    port = free_port()
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    pids = []
    try:
        for value in ("first", "second", "third"):
            write_config(work, port, returning(value))
            nginx.start()
            pids.append(procs.track(nginx.read_pid()))
            assert get(port) == (200, value)
            nginx.stop()
            assert procs.gone(pids[-1])
        assert len(set(pids)) == 3
    finally:
        nginx.stop()
        for pid in pids:
            kill_nginx(pid)


def test_ping_log_ready_when_nginx_logs_its_workers_start(nginx_bin, work, procs, test_id):
    """The tutorial cycle again, ready by the error log's line: no port is polled."""
    port = free_port()
    nginx = nginx_daemon(
        nginx_bin, work, port, test_id, ready_line=r"\[notice\] .*start worker processes"
    )
    assert nginx.config.ping is None
    pids = []
    try:
        for value in ("first", "second"):  # the first cycle's line does not count for the second
            write_config(work, port, returning(value))
            nginx.start()
            pids.append(procs.track(nginx.read_pid()))
            assert get(port) == (200, value)  # at once: the sockets were bound before the line
            nginx.stop()
            assert procs.gone(pids[-1])
    finally:
        nginx.stop()
        for pid in pids:
            kill_nginx(pid)


def test_restart_applies_a_new_config(nginx_bin, work, procs, test_id):
    port = free_port()
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    old = new = None
    try:
        write_config(work, port, returning("before"))
        nginx.start()
        old = procs.track(nginx.read_pid())
        assert get(port) == (200, "before")
        write_config(work, port, returning("after"))
        nginx.restart()
        new = procs.track(nginx.read_pid())
        assert new is not None
        assert new != old
        assert old is not None
        assert procs.gone(old)
        assert get(port) == (200, "after")
    finally:
        nginx.stop()
        kill_nginx(old)
        kill_nginx(new)


def test_crashed_nginx_leaves_a_stale_pid_file_that_is_handled(nginx_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port, returning("again"))
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    first = second = None
    try:
        nginx.start()
        first = procs.track(nginx.read_pid())
        assert first is not None
        # nginx writes its PID file before its master has finished starting up.
        assert procs.wait_until(lambda: len(workers_of(first)) == 1, timeout=10)
        kill_nginx(first)  # a crash: master and workers die, the PID file stays
        assert procs.wait_until(lambda: procs.gone(first), timeout=10)
        assert procs.wait_until(lambda: not procs.survivors(), timeout=10), procs.survivors()
        assert (work / "nginx.pid").exists()
        assert procs.wait_until(lambda: not nginx.is_running(), timeout=10)
        assert not (work / "nginx.pid").exists()  # the stale file was removed
        nginx.start()
        second = procs.track(nginx.read_pid())
        assert second not in (None, first)
        assert get(port) == (200, "again")
    finally:
        nginx.stop()
        kill_nginx(first)
        kill_nginx(second)


def test_config_syntax_error_shows_nginx_error_line(nginx_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port, "bogus on;\n" + returning("never"))
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    with pytest.raises(StartError) as caught:
        nginx.start()
    err = caught.value
    assert 'unknown directive "bogus"' in str(err)
    assert "nginx.conf:" in str(err)
    assert err.exit_status == 1
    assert not nginx.is_running()
    assert not (work / "nginx.pid").exists()


@pytest.mark.slow
def test_port_taken_shows_nginx_bind_error(nginx_bin, work, procs, test_id):
    """nginx binds before going into the background: its error is in the command's output."""
    port = free_port()
    write_config(work, port, returning("never"))
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))  # taken, but not listening: pings still fail
        with pytest.raises(StartError) as caught:
            nginx.start()  # nginx retries bind() for about 2.5 s, then gives up
    text = str(caught.value)
    assert f"bind() to 127.0.0.1:{port} failed" in text
    assert "Address already in use" in text
    assert not nginx.is_running()


@pytest.mark.slow
def test_stop_timeout_leaves_no_orphaned_workers(nginx_bin, work, procs, test_id):
    """A graceful stop (QUIT) that times out kills nginx: its workers must die too.

    A worker finishing an in-flight request keeps running after its master is
    SIGKILLed (it is re-parented, not signalled), and keeps the request — and
    possibly the port — for as long as the request lasts.
    """
    port = free_port()
    write_config(work, port, returning("slow"), workers=2)
    nginx = nginx_daemon(nginx_bin, work, port, test_id).stop_signal("QUIT").stop_timeout(1)
    pid = None
    workers: list[int] = []
    try:
        nginx.start()
        pid = procs.track(nginx.read_pid())
        assert pid is not None
        assert procs.wait_until(lambda: len(workers_of(pid)) == 2, timeout=10)
        workers = [procs.track(w) for w in workers_of(pid)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\n")  # headers never finished: in flight
            mine = client.getsockname()[1]
            assert procs.wait_until(lambda: serving(workers, mine), timeout=10)
            with pytest.raises(StopTimeout):
                nginx.stop()
            assert procs.gone(pid)
            left = [w for w in workers if not procs.gone(w)]
            assert procs.wait_until(lambda: all(procs.gone(w) for w in workers), timeout=3), (
                f"nginx workers {left} outlived their master, which stop() killed"
            )
    finally:
        kill_nginx(pid)
        for worker in workers:
            if worker is not None and not procs.gone(worker):
                os.kill(worker, signal.SIGKILL)


def test_start_and_stop_times(nginx_bin, work, procs, test_id):
    port = free_port()
    write_config(work, port, returning("timed"))
    nginx = nginx_daemon(nginx_bin, work, port, test_id)
    starts, stops = time_start_stop("nginx", nginx, procs.track, kill_nginx)
    assert max(starts) < 15
    assert max(stops) < 15
