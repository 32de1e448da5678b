"""A successful ``start()`` with real processes, and the options that shape it.

* ``start()`` returns only once the daemon answers its ping, with a PID file
  naming the live process; ``AlreadyStarted``; leftover PID files replaced;
* ``before_start`` and callable start commands (order, lock held, once per
  start); str commands through the shell, lists without one;
* ``env()``, ``cwd()``, ``keep_fds()`` and relative paths.

How a start fails is in ``test_start_failures.py``; foreground programs and
``foreground()`` in ``test_foreground.py``; concurrent starts in
``test_concurrency.py``; the pings in ``test_probes.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import pytest
from echo_server import echo_command
from helpers import (
    assert_live_echo_server,
    dead_pid,
    free_port,
    gone,
    pid_in_file,
    roundtrip,
    wait_until,
)

from daemon_controller import AlreadyStarted

# -- a successful start ------------------------------------------------------------------


def test_start_returns_when_daemon_accepts_connections(echo):
    daemon = echo()
    daemon.start()
    try:
        assert roundtrip(echo.port) == b"hello daemon\n"
        pid = pid_in_file(echo.pid_file)
        assert_live_echo_server(pid)
        assert daemon.read_pid() == pid
        assert daemon.is_running()
        assert pid != os.getpid()
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))
    assert not daemon.is_running()


@pytest.mark.parametrize(
    "delay",
    [["--wait-before-listen", "0.5"], ["--wait-before-pid", "0.5"]],
    ids=["wait-before-listen", "wait-before-pid"],
)
def test_start_does_not_return_before_the_daemon_listens(echo, tmp_path, delay):
    record = tmp_path / "events.jsonl"
    daemon = echo(*delay, "--record", str(record))
    daemon.start()
    returned = time.monotonic()
    try:
        # The daemon stamps the moment it calls listen() and writes the line
        # afterwards: start() may return before the line (or the file) exists.
        deadline = time.monotonic() + 5
        while True:
            text = record.read_text() if record.exists() else ""
            events = [json.loads(line) for line in text.splitlines()]
            listening = [e for e in events if e["event"] == "listening"]
            if listening or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        assert listening, events
        assert listening[0]["monotonic"] <= returned
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()


def test_already_started_leaves_the_running_daemon_alone(echo):
    daemon = echo()
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        with pytest.raises(AlreadyStarted) as info:
            daemon.start()
        assert info.value.pid == pid
        assert info.value.identifier == "echo"
        assert str(pid) in str(info.value)
        assert pid_in_file(echo.pid_file) == pid
        assert_live_echo_server(pid)
        assert roundtrip(echo.port) == b"hello daemon\n"
        assert len(echo.marked()) == 1
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    "content",
    [
        lambda: f"{dead_pid()}\n",
        lambda: "2147483000\n",
        lambda: "not a pid\n",
        lambda: "",
        lambda: f"{os.getpid()}\n",
        lambda: "1\n",
    ],
    ids=["dead-process", "impossible-pid", "garbage", "empty", "our-own-pid", "pid-1"],
)
def test_leftover_pid_file_is_replaced(echo, content):
    stale = content()
    echo.pid_file.write_text(stale)
    daemon = echo()
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        assert f"{pid}\n" != stale
        assert_live_echo_server(pid)
        assert daemon.read_pid() == pid
    finally:
        daemon.stop()


# -- before_start and the kinds of start command ---------------------------------------------


_LOCK_PROBE = """
import portalocker
with open(args[0], "a+b") as f:
    try:
        portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
    except portalocker.exceptions.LockException:
        sys.exit(3)
"""


def lock_is_free(child, lock_file: Path) -> bool:
    """Ask another process whether it can take the lock file exclusively right now."""
    status = child(_LOCK_PROBE, str(lock_file)).wait()
    assert status in {0, 3}, status
    return status == 0


def test_before_start_runs_under_the_lock_before_a_callable_command(echo, child):
    calls: list[str] = []
    base = echo()
    command = base.config.start_command
    lock_file = Path(f"{echo.pid_file}.lock")

    def before_start():
        assert not lock_is_free(child, lock_file)
        assert not echo.pid_file.exists()
        calls.append("before_start")

    def start_command():
        assert not lock_is_free(child, lock_file)
        calls.append("command")
        return list(command)

    daemon = base.before_start(before_start).start_with(start_command)
    for _ in range(2):
        daemon.start()
        try:
            assert roundtrip(echo.port) == b"hello daemon\n"
        finally:
            daemon.stop()
    assert calls == ["before_start", "command", "before_start", "command"]
    assert lock_is_free(child, lock_file)


@pytest.mark.slow
def test_before_start_is_not_counted_against_start_timeout(echo):
    daemon = echo().start_timeout(2.5).before_start(lambda: time.sleep(3))
    daemon.start()
    try:
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("form", ["str", "callable returning str"])
def test_str_command_runs_through_the_shell(echo, tmp_path, form):
    out = tmp_path / "shell-var.txt"
    argv = echo("--write-file", f"{out}={{env:DC_SHELL_VAR}}").config.start_command
    shell_command = f"true && DC_SHELL_VAR=set-by-the-shell {shlex.join(argv)}"
    base = echo(port=echo.port)
    daemon = (
        base.start_with(shell_command) if form == "str" else base.start_with(lambda: shell_command)
    )
    daemon.start()
    try:
        assert out.read_text() == "set-by-the-shell"
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("form", ["list", "callable returning list"])
def test_list_command_runs_without_a_shell(echo, tmp_path, form):
    out = tmp_path / "literal.txt"
    literal = "$HOME && echo `id` ; *"
    base = echo("--write-file", f"{out}={literal}")
    argv = list(base.config.start_command)
    daemon = base.start_with(argv) if form == "list" else base.start_with(lambda: argv)
    daemon.start()
    try:
        assert out.read_text() == literal
    finally:
        daemon.stop()


# -- environment, working directory, descriptors, paths --------------------------------------


def test_env_reaches_the_daemon(echo, tmp_path):
    out = tmp_path / "env.txt"
    daemon = echo("--write-file", f"{out}={{env:DC_PROBE_VAR}}").env(
        {"DC_PROBE_VAR": "value with spaces & symbols"}
    )
    daemon.start()
    try:
        assert out.read_text() == "value with spaces & symbols"
        assert "DC_PROBE_VAR" not in os.environ
    finally:
        daemon.stop()


def test_cwd_is_the_daemons_working_directory(echo, tmp_path):
    out = tmp_path / "cwd.txt"
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    daemon = echo("--write-file", f"{out}={{cwd}}").cwd(workdir)
    daemon.start()
    try:
        assert out.read_text() == os.path.realpath(workdir)
    finally:
        daemon.stop()


def test_keep_fds_passes_only_the_kept_descriptors(echo, tmp_path):
    out = tmp_path / "fds.txt"
    kept = os.open(tmp_path / "kept-int", os.O_WRONLY | os.O_CREAT)
    stray = os.open(tmp_path / "stray", os.O_WRONLY | os.O_CREAT)
    try:
        os.set_inheritable(stray, True)
        with (tmp_path / "kept-object").open("w") as kept_object:
            daemon = echo("--write-file", f"{out}={{fds}}").keep_fds(kept, kept_object)
            daemon.start()
            try:
                fds = {int(fd) for fd in out.read_text().split(",")}
                assert fds == {0, 1, 2, kept, kept_object.fileno()}
                assert stray not in fds
            finally:
                daemon.stop()
    finally:
        os.close(kept)
        os.close(stray)


def test_relative_paths_are_fixed_when_set(echo, tmp_path, monkeypatch):
    # Relative paths name the same files after a chdir: the PID file, the log,
    # the default lock file next to the PID file, and the working directory.
    home = tmp_path / "home"
    elsewhere = tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    port = free_port()
    monkeypatch.chdir(home)
    daemon = (
        echo(port=port)
        .start_with(
            # relative: these work only if the command runs in home
            echo_command("--port", str(port), "--pid-file", "rel.pid", "--log-file", "rel.log")
        )
        .pid("rel.pid")
        .log("rel.log")
        .cwd(".")
    )
    monkeypatch.chdir(elsewhere)
    daemon.start()
    try:
        pid = pid_in_file(home / "rel.pid")
        assert daemon.read_pid() == pid
        assert (home / "rel.pid.lock").exists()
        assert sorted(os.listdir(elsewhere)) == []
        with pytest.raises(AlreadyStarted):
            daemon.start()
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))
    assert not (home / "rel.pid").exists()


# -- pings that are not addresses: the gem's order (spawn, PID file, then ping) ---------------


def test_an_always_true_ping_waits_for_the_pid_file(echo):
    # The gem's own spec: "start blocks until the daemon has written its PID
    # file", with a ping that is always true. Only an address can be checked
    # for a stranger before the start; a function or command answers for
    # reasons of its own.
    daemon = echo("--wait-before-pid", "0.3").ping(lambda: True)
    began = time.monotonic()
    daemon.start()
    try:
        assert time.monotonic() - began >= 0.3
        assert echo.pid_file.exists()
        assert daemon.read_pid() is not None
    finally:
        daemon.stop()


def test_an_always_true_command_ping_waits_for_the_pid_file(echo):
    daemon = echo("--wait-before-pid", "0.3").ping_command("true")
    daemon.start()
    try:
        assert daemon.read_pid() is not None
    finally:
        daemon.stop()
