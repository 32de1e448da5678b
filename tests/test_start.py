"""``start()`` with real processes: readiness, failures, timeouts, options and pings.

Covers issue 2, sections 3 and 4, as far as they concern starting a daemon:

* a successful start returns only once the daemon answers its ping, with a PID
  file naming the live process; ``AlreadyStarted``; leftover PID files;
* ``before_start`` and callable start commands (order, lock held, once per start);
  str commands through the shell, lists without one;
* every start failure (non-zero exit, death by a signal, death after
  daemonizing, silent death before the PID file, overall timeout with SIGTERM
  and SIGKILL escalation, a command that stays in the foreground) and the
  ``StartError`` / ``StartTimeout`` fields and text;
* output capture and the new log lines collected during the start;
* ``daemonize_for_me()``, ``env()``, ``cwd()``, ``keep_fds()``, relative paths;
* ``ValueError`` for missing parts, ``DaemonError`` for a missing lock directory;
* every ping variant used for real in a start, and concurrent starts from
  several threads and several processes.

Every daemon runs ``tests/echo_server.py`` (or a tiny ``python -c`` / ``sh -c``
program) and carries the ``DC_TEST_ID`` marker, so the ``_sweep`` fixture sees
anything a test leaves behind.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from echo_server import echo_command, free_port
from helpers import gone, wait_until

from daemon_controller import (
    AlreadyStarted,
    Daemon,
    DaemonError,
    StartError,
    StartTimeout,
)

MARKER = "DC_TEST_ID"

# -- helpers ------------------------------------------------------------------------------


def echo_roundtrip(port: int, host: str = "127.0.0.1") -> bytes:
    """Connect (must succeed at once), send a line, return what came back."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"hello daemon\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def pid_in_file(path: Path) -> int:
    return int(path.read_text().split("\n", 1)[0])


def assert_live_echo_server(pid: int) -> None:
    proc = psutil.Process(pid)
    assert proc.status() != psutil.STATUS_ZOMBIE
    assert any("echo_server" in part for part in proc.cmdline())


def lock_is_free(lock_file: Path) -> bool:
    """Ask another process whether it can take the lock file exclusively right now."""
    probe = (
        "import sys, portalocker\n"
        "f = open(sys.argv[1], 'a+b')\n"
        "try:\n"
        "    portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)\n"
        "except portalocker.exceptions.LockException:\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(lock_file)], check=False, timeout=30)
    assert result.returncode in {0, 3}, result
    return result.returncode == 0


# -- a successful start ------------------------------------------------------------------


def test_start_returns_when_daemon_accepts_connections(echo):
    daemon = echo()
    daemon.start()
    try:
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
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
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
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
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
        assert len(echo.marked()) == 1
    finally:
        daemon.stop()


def _dead_pid() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{proc.pid}\n"


@pytest.mark.parametrize(
    "content",
    [
        _dead_pid,
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


def test_pid_file_naming_a_reused_pid_is_replaced_and_the_stranger_untouched(echo, test_id):
    # A live process that started long after the PID file was written cannot
    # have written it: its PID was reused. It must be neither "running" nor hurt.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, MARKER: test_id},
    )
    try:
        echo.pid_file.write_text(f"{stranger.pid}\n")
        hour_ago = time.time() - 3600
        os.utime(echo.pid_file, (hour_ago, hour_ago))
        daemon = echo()
        daemon.start()
        try:
            pid = pid_in_file(echo.pid_file)
            assert pid != stranger.pid
            assert_live_echo_server(pid)
        finally:
            daemon.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# -- before_start and the kinds of start command ---------------------------------------------


def test_before_start_runs_under_the_lock_before_a_callable_command(echo):
    calls: list[str] = []
    base = echo()
    command = base.config.start_command
    lock_file = Path(f"{echo.pid_file}.lock")

    def before_start():
        assert not lock_is_free(lock_file)
        assert not echo.pid_file.exists()
        calls.append("before_start")

    def start_command():
        assert not lock_is_free(lock_file)
        calls.append("command")
        return list(command)

    daemon = base.before_start(before_start).start_with(start_command)
    for _ in range(2):
        daemon.start()
        try:
            assert echo_roundtrip(echo.port) == b"hello daemon\n"
        finally:
            daemon.stop()
    assert calls == ["before_start", "command", "before_start", "command"]
    assert lock_is_free(lock_file)


@pytest.mark.slow
def test_before_start_is_not_counted_against_start_timeout(echo):
    daemon = echo().start_timeout(2.5).before_start(lambda: time.sleep(3))
    daemon.start()
    try:
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
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
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
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


# -- failures of the start command ----------------------------------------------------------


def test_start_command_exiting_non_zero_raises_start_error_with_its_output(echo):
    daemon = echo(
        "--stdout-message",
        "hello world",
        "--before-daemonize-message",
        "complaint on stderr",
        "--exit-before-daemonize",
        "3",
    )
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert not isinstance(err, StartTimeout)
    assert err.identifier == "echo"
    assert err.exit_status == 3
    assert err.signal is None
    assert "hello world" in err.output
    assert "complaint on stderr" in err.output
    assert "failing before daemonizing" in err.output
    text = str(err)
    assert "hello world" in text
    assert "complaint on stderr" in text
    assert text.endswith("(exited with status 3)")
    assert not echo.pid_file.exists()
    assert not daemon.is_running()
    assert echo.marked() == []


def test_start_error_text_is_output_then_summary(tmp_path, test_id):
    daemon = (
        Daemon("printer")
        .start_with("echo hello world; exit 1")
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "printer.pid")
        .log(tmp_path / "printer.log")
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert err.output == "hello world\n"
    assert err.exit_status == 1
    assert str(err).endswith("hello world\n(exited with status 1)")


@pytest.mark.parametrize("printed", [True, False], ids=["with-output", "silent"])
def test_start_command_killed_by_a_signal(echo, printed):
    extra = ["--stdout-message", "about to crash"] if printed else []
    daemon = echo(*extra, "--signal-before-daemonize", "XCPU")
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert err.signal == "SIGXCPU"
    assert err.exit_status is None
    text = str(err)
    assert "exited with status" not in text
    if printed:
        assert text.endswith("about to crash\n(terminated with signal SIGXCPU)")
    else:
        # Nothing printed, nothing logged: the summary also says the logs are empty.
        assert text.endswith("terminated with signal SIGXCPU)")
    assert not echo.pid_file.exists()
    assert echo.marked() == []


@pytest.mark.parametrize(
    "log_path", ["/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2"]
)
def test_output_is_not_captured_when_the_log_is_our_terminal(tmp_path, test_id, capfd, log_path):
    daemon = (
        Daemon("passthrough")
        .start_with(["sh", "-c", "echo passed-through-to-our-terminal; exit 4"])
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "passthrough.pid")
        .log(log_path)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert err.output is None
    assert err.log is None
    assert err.exit_status == 4
    assert "(logs not available; exited with status 4)" in str(err)
    captured = capfd.readouterr()
    assert "passed-through-to-our-terminal" in captured.out + captured.err


def test_log_that_is_not_a_regular_file_reads_as_none(tmp_path, test_id):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    daemon = (
        Daemon("fifo logger")
        .start_with(["sh", "-c", "echo captured anyway; exit 2"])
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "fifo.pid")
        .log(fifo)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert err.log is None
    assert err.output == "captured anyway\n"
    assert str(err).endswith("captured anyway\n(exited with status 2)")


def test_empty_output_and_empty_log(tmp_path, test_id):
    log_file = tmp_path / "silent.log"
    daemon = (
        Daemon("silent")
        .start_with(["sh", "-c", "exit 1"])
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "silent.pid")
        .log(log_file)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert err.output == ""
    assert err.log == ""
    assert err.exit_status == 1
    assert str(err).endswith("(logs empty; exited with status 1)")


# -- failures after daemonizing --------------------------------------------------------------


def test_daemon_dying_after_writing_its_pid_file_fails_fast_with_its_log(echo):
    assert not echo.log_file.exists()  # created during the start: all of it is new
    daemon = echo("--log-message", "configuration is broken", "--exit-after-pid", "3")
    started = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert elapsed < 10  # start_timeout is 15 s: death is noticed, not timed out
    assert not isinstance(err, StartTimeout)
    assert err.log.startswith("[echo_server ")
    assert "daemonized" in err.log
    assert "configuration is broken" in err.log
    assert "exiting after writing pid file" in err.log
    assert "configuration is broken" in str(err)
    assert "exiting after writing pid file" in str(err)
    assert not daemon.is_running()
    assert echo.marked() == []


def test_only_log_lines_written_during_the_start_are_collected(echo):
    echo.log_file.write_text("OLD LINE FROM AN EARLIER RUN\n")
    daemon = echo("--log-message", "NEW LINE FROM THIS START", "--exit-after-pid", "3")
    with pytest.raises(StartError) as info:
        daemon.start()
    err = info.value
    assert "NEW LINE FROM THIS START" in err.log
    assert "OLD LINE" not in err.log
    assert "NEW LINE FROM THIS START" in str(err)
    assert "OLD LINE" not in str(err)
    assert echo.log_file.read_text().startswith("OLD LINE FROM AN EARLIER RUN\n")


def test_daemon_dying_before_its_pid_file_fails_fast(echo):
    # The gem only notices after log_file_activity_timeout (10 s by default); we
    # see that every process the start command created has exited (issue 4).
    daemon = echo("--exit-after-daemonize", "1").log_activity_timeout(8)
    started = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert not isinstance(err, StartTimeout)
    assert elapsed < 5
    assert "exiting after daemonizing" in err.log
    assert "without writing its PID file" in str(err)
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_silent_daemon_without_pid_file_times_out_on_log_inactivity(echo):
    daemon = echo("--wait-before-pid", "30").log_activity_timeout(1)
    started = time.monotonic()
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert isinstance(err, StartError)
    assert isinstance(err, TimeoutError)
    assert err.timeout == 1
    assert 1 <= elapsed < 10
    assert "no new log output" in str(err)
    assert "timed out" in str(err)
    assert not echo.pid_file.exists()
    # The silent daemon was found through its environment marker and stopped.
    assert echo.marked() == []


def test_overall_start_timeout_terminates_the_daemon(echo):
    daemon = echo("--wait-before-listen", "30").start_timeout(1.5)
    started = time.monotonic()
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert isinstance(err, TimeoutError)
    assert 1.5 <= elapsed < 10
    assert err.pid is not None
    assert gone(err.pid)
    assert "received SIGTERM" in echo.log_file.read_text()
    assert not echo.pid_file.exists()
    assert echo.marked() == []


@pytest.mark.slow
def test_start_timeout_kills_a_daemon_that_ignores_sigterm(echo):
    daemon = (
        echo("--wait-before-listen", "30", "--ignore-term")
        .start_timeout(1.5)
        .start_abort_timeout(1)
    )
    started = time.monotonic()
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    elapsed = time.monotonic() - started
    err = info.value
    assert 2.5 <= elapsed < 15  # start timeout + abort timeout, then SIGKILL
    assert err.pid is not None
    assert gone(err.pid)
    assert "received SIGTERM" not in echo.log_file.read_text()
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_command_staying_in_the_foreground_times_out_with_a_hint(echo):
    daemon = echo("--foreground").start_timeout(1.5)
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    text = str(info.value)
    assert "foreground" in text
    assert ".foreground()" in text
    assert echo.marked() == []
    assert not echo.pid_file.exists()


def test_timeout_with_nothing_printed_or_logged(tmp_path, test_id):
    log_file = tmp_path / "sleeper.log"
    daemon = (
        Daemon("sleeper")
        .start_with([sys.executable, "-c", "import time; time.sleep(60)"])
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "sleeper.pid")
        .log(log_file)
        .start_timeout(1)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    assert info.value.output == ""
    assert info.value.log == ""
    assert str(info.value).endswith("(logs empty; timed out)")


# -- daemonize_for_me ------------------------------------------------------------------------


def test_daemonize_for_me_detaches_a_foreground_program(echo, tmp_path):
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
        assert echo_roundtrip(port) == b"hello daemon\n"
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


def test_daemonize_for_me_program_failing_early(echo):
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


def test_daemonize_for_me_keeps_the_programs_own_pid_file(echo):
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
        assert echo_roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()
        assert wait_until(lambda: gone(pid))
        assert wait_until(lambda: gone(shell_pid))


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
    home = tmp_path / "home"
    elsewhere = tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    port = free_port()
    monkeypatch.chdir(home)
    daemon = (
        echo(port=port)
        .start_with(
            echo_command(
                "--port",
                str(port),
                "--pid-file",
                str(home / "rel.pid"),
                "--log-file",
                str(home / "rel.log"),
            )
        )
        .pid("rel.pid")
        .log("rel.log")
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


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "pattern"),
    [("start", "start"), ("ping", "ping"), ("pid", "pid"), ("log", "log")],
)
def test_missing_part_raises_value_error_before_spawning(tmp_path, test_id, missing, pattern):
    marker = tmp_path / "spawned"
    called: list[str] = []
    parts = {
        "start": lambda d: d.start_with(["touch", str(marker)]),
        "ping": lambda d: d.ping_tcp("127.0.0.1", free_port()),
        "pid": lambda d: d.pid(tmp_path / "needy.pid"),
        "log": lambda d: d.log(tmp_path / "needy.log"),
    }
    daemon = Daemon("needy daemon").env({MARKER: test_id}).before_start(lambda: called.append("x"))
    for name, add in parts.items():
        if name != missing:
            daemon = add(daemon)
    with pytest.raises(ValueError, match=r"(?s)needy daemon.*" + pattern):
        daemon.start()
    assert not marker.exists()
    assert called == []
    assert not (tmp_path / "needy.pid").exists()


def test_missing_lock_directory_is_a_daemon_error_and_is_not_created(tmp_path, test_id):
    marker = tmp_path / "spawned"
    lock_file = tmp_path / "nope" / "x.lock"
    daemon = (
        Daemon("lockless")
        .start_with(["touch", str(marker)])
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "lockless.pid")
        .log(tmp_path / "lockless.log")
        .lock(lock_file)
        .env({MARKER: test_id})
    )
    with pytest.raises(DaemonError) as info:
        daemon.start()
    assert not isinstance(info.value, OSError)
    assert str(lock_file) in str(info.value)
    assert ".lock(" in str(info.value)
    assert not (tmp_path / "nope").exists()
    assert not marker.exists()


# -- pings ------------------------------------------------------------------------------------


def test_ping_unix(echo, tmp_path):
    sock_path = tmp_path / "echo.sock"
    daemon = (
        echo()
        .start_with(
            echo_command(
                "--unix",
                str(sock_path),
                "--pid-file",
                str(echo.pid_file),
                "--log-file",
                str(echo.log_file),
                "--wait-before-listen",
                "0.3",
            )
        )
        .ping_unix(sock_path)
    )
    daemon.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(sock_path))
            sock.sendall(b"over unix")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"over unix"
    finally:
        daemon.stop()


def test_ping_http_with_a_foreground_http_server(echo, tmp_path):
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served by http.server")
    daemon = (
        echo(port=port)
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .ping_http(f"http://127.0.0.1:{port}/")
        .foreground()
        .cwd(www)
    )
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        assert "http.server" in psutil.Process(pid).cmdline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as resp:
            assert resp.read() == b"served by http.server"
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))


def test_ping_command(echo):
    port = free_port()
    check = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
    daemon = echo("--wait-before-listen", "0.3", port=port).ping_command(
        [sys.executable, "-c", check]
    )
    daemon.start()
    try:
        assert echo_roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()


def test_ping_function_result_is_closed(echo):
    port = free_port()
    returned: list[socket.socket] = []

    def ping():
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        returned.append(sock)
        return sock

    daemon = echo("--wait-before-listen", "0.3", port=port).ping(ping)
    daemon.start()
    try:
        assert returned
        assert all(sock.fileno() == -1 for sock in returned)
        assert echo_roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "::1"])
def test_ping_tcp_localhost(echo, listen_host):
    families = {info[0] for info in socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)}
    wanted = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    if wanted not in families:
        pytest.skip(f"'localhost' does not resolve to {listen_host} on this machine")
    port = free_port()
    daemon = echo("--host", listen_host, port=port).ping_tcp("localhost", port)
    daemon.start()
    try:
        assert echo_roundtrip(port, listen_host) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "::1"])
def test_ping_tcp_tries_every_address(echo, monkeypatch, listen_host):
    # A host name that resolves to both loopback addresses, the one the daemon
    # does NOT listen on first (what /etc/hosts with "::1 localhost" gives).
    # Only name resolution is stood in for; the connects are real.
    other = "::1" if listen_host == "127.0.0.1" else "127.0.0.1"
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "dual-stack.test":
            return real_getaddrinfo(other, port, *args, **kwargs) + real_getaddrinfo(
                listen_host, port, *args, **kwargs
            )
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    port = free_port()
    daemon = echo("--host", listen_host, port=port).ping_tcp("dual-stack.test", port)
    daemon.start()
    try:
        assert echo_roundtrip(port, listen_host) == b"hello daemon\n"
    finally:
        daemon.stop()


# -- concurrent starts ------------------------------------------------------------------------


def test_concurrent_starts_from_threads_start_once(echo):
    daemon = echo("--wait-before-listen", "0.5")
    barrier = threading.Barrier(4)
    results: list[str] = []

    def worker():
        barrier.wait()
        try:
            daemon.start()
        except AlreadyStarted:
            results.append("already")
        else:
            results.append("started")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(results) == ["already", "already", "already", "started"]
        assert len(echo.marked()) == 1
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()


_CHILD = """
import json, sys
from daemon_controller import AlreadyStarted, Daemon
cfg = json.loads(sys.argv[1])
daemon = (
    Daemon("echo").start_with(cfg["command"]).ping_tcp("127.0.0.1", cfg["port"])
    .pid(cfg["pid"]).log(cfg["log"]).start_timeout(20).env({"DC_TEST_ID": cfg["id"]})
)
try:
    daemon.start()
except AlreadyStarted:
    print("already")
else:
    print("started")
"""


def test_concurrent_starts_from_processes_start_once(echo, test_id):
    daemon = echo("--wait-before-listen", "0.5")
    cfg = json.dumps(
        {
            "command": list(daemon.config.start_command),
            "port": echo.port,
            "pid": str(echo.pid_file),
            "log": str(echo.log_file),
            "id": test_id,
        }
    )
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, cfg], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        outputs = sorted(child.communicate(timeout=60)[0].strip() for child in children)
        assert [child.returncode for child in children] == [0, 0, 0]
        assert outputs == ["already", "already", "started"]
        assert len(echo.marked()) == 1
        assert echo_roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()
