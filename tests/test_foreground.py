"""Programs that stay in the foreground: ``foreground()``.

The library detaches the program itself and writes its PID file: shell
strings run the program itself (or are stopped as a process group when they
cannot be exec'd), the detached program gets a session of its own and its
output goes to the log, default paths in the runtime directory, a PID file
written atomically, never through a symlink, and only once the program is up.
"""

from __future__ import annotations

import os
import shlex
import socket
import stat
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import psutil
import pytest
from echo_server import ECHO_SERVER, echo_command
from helpers import (
    MARKER,
    assert_live_echo_server,
    dead_pid,
    free_port,
    gone,
    kill_quietly,
    pid_in_file,
    roundtrip,
    wait_until,
)

from daemon_controller import Daemon, StartError, _platform

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shells and sessions")

PRECIOUS = "precious settings: do not touch\n"


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
        .env({MARKER: test_id})
    )


# -- shell strings ------------------------------------------------------------------------------


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
        assert_live_echo_server(pid)
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


# -- daemonize_for_me ---------------------------------------------------------------------------


def test_foreground_detaches_a_foreground_program(echo, tmp_path):
    port = free_port()
    daemon = (
        echo(port=port)
        .start_with(
            echo_command(
                "--port",
                str(port),
                "--foreground",
                "--stdout-message",
                "greeting on stdout",
                "--before-daemonize-message",
                "greeting on stderr",
                "--wait-before-listen",
                "0.3",
            )
        )
        .foreground()
    )
    daemon.start()
    try:
        assert roundtrip(port) == b"hello daemon\n"
        pid = pid_in_file(echo.pid_file)
        assert_live_echo_server(pid)
        assert daemon.is_running()
        assert daemon.read_pid() == pid
        assert os.getsid(pid) == pid  # a session of its own
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        log = echo.log_file.read_text()
        assert "greeting on stdout" in log
        assert "greeting on stderr" in log
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))
    assert not echo.pid_file.exists()
    assert not daemon.is_running()


def test_foreground_program_failing_early(echo):
    port = free_port()
    daemon = (
        echo(port=port)
        .start_with(
            echo_command("--port", str(port), "--foreground", "--exit-before-daemonize", "5")
        )
        .foreground()
    )
    started = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert time.monotonic() - started < 10
    assert err.exit_status == 5
    assert "failing before daemonizing" in err.log
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_foreground_keeps_the_programs_own_pid_file(echo):
    # A shell wrapper that is not replaced by the program: the library's child
    # is the shell, the program writes its own PID. Overwriting the file would
    # put the shell's PID in it.
    port = free_port()
    argv = echo_command("--port", str(port), "--foreground", "--pid-file", str(echo.pid_file))
    daemon = (
        echo(port=port)
        .start_with(["sh", "-c", f"{shlex.join(argv)}; echo program exited"])
        .foreground()
    )
    daemon.start()
    pid = pid_in_file(echo.pid_file)
    shell_pid = psutil.Process(pid).ppid()
    try:
        assert_live_echo_server(pid)
        assert "sh" in psutil.Process(shell_pid).name()
        assert daemon.read_pid() == pid
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()
        assert wait_until(lambda: gone(pid))
        assert wait_until(lambda: gone(shell_pid))


def test_foreground_writes_the_pid_file_only_once_the_program_is_up(echo, tmp_path):
    # gem: daemonize_for_me writes no PID file at all: a program that writes none times out.
    # A library writing it at spawn time would make this program refuse to start (exit 9).
    echo.pid_file.write_text(f"{dead_pid()}\n")  # a stale leftover: removed before the start
    port = free_port()
    argv = echo_command("--port", str(port), "--foreground")
    script = f'sleep 0.5; test ! -e "$0" || exit 9; exec {shlex.join(argv)}'
    daemon = echo(port=port).start_with(["sh", "-c", script, str(echo.pid_file)]).foreground()
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        assert_live_echo_server(pid)
        assert daemon.read_pid() == pid
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))
    assert not echo.pid_file.exists()


# -- foreground() with default paths -------------------------------------------------------------


def _web(test_id: str, port: int, tmp_path: Path) -> Daemon:
    return (
        Daemon(f"web-{test_id}")
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .foreground()
        .ping_tcp("127.0.0.1", port)
        .cwd(tmp_path)
        .start_timeout(20)
        .env({MARKER: test_id})
    )


def _runtime_leftovers(pid_file: Path) -> list[str]:
    stem = pid_file.name.removesuffix(".pid")
    return sorted(p.name for p in pid_file.parent.iterdir() if stem in p.name)


def _remove_runtime_files(pid_file: Path) -> None:
    stem = pid_file.name.removesuffix(".pid")
    for path in pid_file.parent.iterdir():
        if stem in path.name and not path.is_dir():
            path.unlink()


def test_foreground_http_server_with_default_paths(test_id, port, tmp_path):
    # gem: pid_file and log_file are required, and a program writing no PID file times out.
    (tmp_path / "index.html").write_text("hello from http.server\n")
    daemon = _web(test_id, port, tmp_path)
    assert daemon.config.pid_file is None
    assert daemon.config.log_file is None
    pid_file = daemon.resolved().config.pid_file
    log_file = daemon.resolved().config.log_file
    assert pid_file is not None
    assert log_file is not None
    try:
        runtime = pid_file.parent
        assert runtime == _platform.runtime_dir()
        info = runtime.lstat()
        assert stat.S_ISDIR(info.st_mode)
        assert info.st_uid == os.getuid()
        assert info.st_mode & 0o077 == 0  # private
        daemon.start()
        try:
            pid = pid_in_file(pid_file)
            assert "http.server" in psutil.Process(pid).cmdline()
            assert stat.S_ISREG(pid_file.lstat().st_mode)
            assert daemon.is_running() is True
            assert daemon.read_pid() == pid
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as r:
                assert r.read() == b"hello from http.server\n"
            assert os.getsid(pid) == pid
        finally:
            daemon.stop()
        assert wait_until(lambda: gone(pid))
        assert daemon.is_running() is False
        assert not pid_file.exists()
        assert "GET /index.html" in log_file.read_text()  # its output went to the log
        # No PID file, no temporary files: only the log and the lock remain.
        assert set(_runtime_leftovers(pid_file)) <= {log_file.name, f"{pid_file.name}.lock"}
    finally:
        _remove_runtime_files(pid_file)


@pytest.mark.parametrize("when", ["before the start", "by the program"])
def test_foreground_pid_file_is_never_written_through_a_symlink(test_id, port, tmp_path, when):
    # gem: no foreground mode; a naive open(pid_file, "w") would truncate the target.
    precious = tmp_path / "settings.conf"
    precious.write_text(PRECIOUS)
    daemon = _web(test_id, port, tmp_path)
    if when != "before the start":
        # The program plants the link while starting up: the library must not
        # take it for the program's own PID file, nor write through it. (The
        # paths come through the environment: the command is part of what
        # names the default files.)
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        script = f'ln -s "$PRECIOUS" "$PID_FILE" && exec {shlex.join(argv)}'
        daemon = daemon.start_with(["sh", "-c", script])
    pid_file = daemon.resolved().config.pid_file
    assert pid_file is not None
    daemon = daemon.env(PRECIOUS=str(precious), PID_FILE=str(pid_file))
    try:
        if when == "before the start":
            pid_file.symlink_to(precious)
        daemon.start()
        try:
            assert not pid_file.is_symlink()
            assert stat.S_ISREG(pid_file.lstat().st_mode)
            pid = pid_in_file(pid_file)
            assert "http.server" in psutil.Process(pid).cmdline()
            assert precious.read_text() == PRECIOUS
        finally:
            daemon.stop()
        assert precious.read_text() == PRECIOUS
        assert not pid_file.exists()
        log_file = daemon.resolved().config.log_file
        assert log_file is not None
        # No temporary files: only the log and the lock remain.
        assert set(_runtime_leftovers(pid_file)) <= {log_file.name, f"{pid_file.name}.lock"}
    finally:
        _remove_runtime_files(pid_file)


# -- default files: one project's daemon never meets another's -------------------------------


def _default_web(project: Path, port: int, test_id: str) -> Daemon:
    """A foreground daemon named 'web' with no pid()/log(): default files."""
    return (
        Daemon("web")
        .start_with(echo_command("--port", str(port), "--foreground"))
        .foreground()
        .cwd(project)
        .ping_tcp("127.0.0.1", port)
        .start_timeout(15)
        .env({MARKER: test_id})
    )


def test_default_files_are_keyed_by_project_and_command(tmp_path, test_id):
    project_a, project_b = tmp_path / "a", tmp_path / "b"
    project_a.mkdir()
    project_b.mkdir()
    port_a, port_b = free_port(), free_port()
    web_a = _default_web(project_a, port_a, test_id)
    web_b = _default_web(project_b, port_b, test_id)
    pid_a = web_a.resolved().config.pid_file
    pid_b = web_b.resolved().config.pid_file
    assert pid_a != pid_b
    assert web_a.resolved().config.log_file != web_b.resolved().config.log_file
    # The same description in the same place: the same files, in any process.
    assert _default_web(project_a, port_a, test_id).resolved().config.pid_file == pid_a
    web_a.start()
    try:
        assert not web_b.is_running()  # b does not see a's process as its own
        web_b.start()  # and starts its own
        try:
            assert web_a.read_pid() != web_b.read_pid()
            web_b.stop()
            assert web_a.is_running()  # stopping b left a alone
            assert roundtrip(port_a) == b"hello daemon\n"
        finally:
            web_b.stop()
    finally:
        web_a.stop()


# -- shell commands that begin with exec, assignments, redirections ---------------------------


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("exec {python} {server} --port {port} --foreground", id="exec"),
        pytest.param("  exec {python} {server} --port {port} --foreground", id="spaced-exec"),
        pytest.param("GREETING=hi {python} {server} --port {port} --foreground", id="assignment"),
        pytest.param(
            "exec {python} {server} --port {port} --foreground 2>&1", id="exec-redirection"
        ),
        pytest.param("{python} {server} --port {port} --foreground >/dev/null", id="redirection"),
    ],
)
def test_foreground_shell_command_forms_start_and_stop(tmp_path, test_id, template):
    port = free_port()
    command = template.format(
        python=shlex.quote(sys.executable), server=shlex.quote(str(ECHO_SERVER)), port=port
    )
    daemon = (
        Daemon("shell forms")
        .start_with(command)
        .foreground()
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .start_timeout(15)
        .stop_timeout(10)
        .env({MARKER: test_id})
    )
    daemon.start()
    try:
        pid = daemon.read_pid()
        assert pid is not None
        assert roundtrip(port) == b"hello daemon\n"
        if template.lstrip().startswith("exec"):
            assert_live_echo_server(pid)  # the PID file names the program, not a shell
    finally:
        daemon.stop()
    assert pid is not None
    assert wait_until(lambda: gone(pid))
    assert "exec: not found" not in (tmp_path / "d.log").read_text()
