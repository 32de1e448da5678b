"""Foreground programs given as shell strings, process groups, and ``.user()``."""

from __future__ import annotations

import contextlib
import http.server
import os
import pwd
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from echo_server import ECHO_SERVER, free_port
from helpers import gone

from daemon_controller import Daemon, StartError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shells and users")


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def kill_quietly(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).kill()


def foreground(tmp_path: Path, test_id: str, command: str, port: int) -> Daemon:
    return (
        Daemon("fg")
        .start_with(command)
        .foreground()
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "fg.pid")
        .log(tmp_path / "fg.log")
        .start_timeout(15)
        .stop_timeout(10)
        .env({"DC_TEST_ID": test_id})
    )


def test_simple_shell_string_runs_the_program_itself(tmp_path, test_id):
    # dash forks for `sh -c "prog"`: without `exec`, the PID file would name the
    # shell and stop() would leave the program running.
    port = free_port()
    command = f"{sys.executable} {ECHO_SERVER} --foreground --port {port}"
    daemon = foreground(tmp_path, test_id, command, port)
    daemon.start()
    pid = daemon.read_pid()
    try:
        assert pid is not None
        assert "echo_server" in " ".join(psutil.Process(pid).cmdline())
        daemon.stop()
        assert gone(pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        kill_quietly(pid)


def test_compound_shell_command_is_stopped_as_a_group(tmp_path, test_id):
    # A pipeline cannot be exec'd; the whole process group is signalled and
    # stop() returns only when every member has exited.
    port = free_port()
    command = (
        f"echo starting >&2; {sys.executable} {ECHO_SERVER} --foreground --port {port} "
        "--stop-delay 0.5 | cat"
    )
    daemon = foreground(tmp_path, test_id, command, port)
    daemon.start()
    leader = daemon.read_pid()
    assert leader is not None
    members = [p.pid for p in psutil.Process(leader).children(recursive=True)]
    try:
        assert any("echo_server" in " ".join(psutil.Process(p).cmdline()) for p in members)
        daemon.stop()
        assert gone(leader)
        assert all(gone(p) for p in members)
    finally:
        for pid in [leader, *members]:
            kill_quietly(pid)
    assert "starting" in (tmp_path / "fg.log").read_text()


def test_stranger_on_an_http_port_is_named(tmp_path, test_id):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        daemon = (
            Daemon("web")
            .start_with(["true"])
            .foreground()
            .ping_http(f"http://127.0.0.1:{port}/")
            .pid(tmp_path / "web.pid")
            .log(tmp_path / "web.log")
        )
        with pytest.raises(StartError, match=f"PID {os.getpid()}") as info:
            daemon.start()
        assert "already answered" in str(info.value)
        assert not (tmp_path / "web.pid").exists()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_user_runs_the_program_as_that_user(tmp_path, test_id):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user named nobody")
    # Our venv's interpreter may live under /root, out of nobody's reach.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for user nobody")
    # pytest's tmp_path sits under a root-only directory: nobody writes elsewhere.
    shared = Path(tempfile.mkdtemp(prefix="dc-nobody-"))
    shared.chmod(0o777)
    port = free_port()
    marker = shared / "whoami"
    daemon = (
        Daemon("as-nobody")
        .start_with(
            [
                python,
                str(ECHO_SERVER),
                "--foreground",
                "--port",
                str(port),
                "--write-file",
                f"{marker}={{env:HOME}}|{{env:USER}}",
            ]
        )
        .foreground()
        .user("nobody")
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "n.pid")
        .log(tmp_path / "n.log")
        .env({"DC_TEST_ID": test_id})
    )
    daemon.start()
    pid = daemon.read_pid()
    try:
        assert pid is not None
        process = psutil.Process(pid)
        assert process.uids().real == nobody.pw_uid
        assert "echo_server" in " ".join(process.cmdline())  # no wrapper in between
        assert marker.read_text() == f"{nobody.pw_dir}|nobody"
        daemon.stop()
        assert wait_gone(pid)
    finally:
        kill_quietly(pid)
        shutil.rmtree(shared, ignore_errors=True)


def test_unknown_user_is_a_start_error_before_anything_runs(tmp_path):
    daemon = (
        Daemon("ghost")
        .start_with(["true"])
        .foreground()
        .user("no-such-user-here")
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "g.pid")
        .log(tmp_path / "g.log")
    )
    with pytest.raises(StartError, match="no-such-user-here"):
        daemon.start()
