"""How ``start()`` fails: the error it raises, how fast, and that nothing survives it.

* the start command fails (non-zero exit, death by a signal) and the
  ``StartError`` carries its output, the new log lines and a summary; output
  that went to our terminal, a log that is not a regular file, empty logs;
* the daemon dies after daemonizing (before or after its PID file): noticed at
  once, not after a timeout;
* timeouts: log inactivity, the overall start timeout with SIGTERM and SIGKILL
  escalation, a command that stays in the foreground;
* nothing is orphaned: not after a timeout, a KeyboardInterrupt in another
  process, a shell command with a background child, nor a daemon forked while
  the start is being aborted;
* a stranger already answering the ping is named and nothing is spawned; a
  daemon that dies while a stranger answers is not a success;
* a missing lock directory.

Each test that the Ruby gem would fail says how in a comment starting "gem:".
Every daemon carries the ``DC_TEST_ID`` marker, so the ``_sweep`` fixture sees
anything a test leaves behind.
"""

from __future__ import annotations

import http.server
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from echo_server import echo_command
from helpers import INTERRUPTIBLE_START, MARKER, free_port, gone, kill_marked, marked, wait_until

from daemon_controller import Daemon, DaemonError, StartError, StartTimeout

# -- the start command fails -----------------------------------------------------------------


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


# -- the daemon dies after daemonizing --------------------------------------------------------


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
    # gem: waits for log_file_activity_timeout (10 s by default; 30 s here) before failing.
    # The library sees that every process the start command created has exited.
    daemon = echo("--exit-after-daemonize", "1").log_activity_timeout(30).start_timeout(60)
    started = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    failed_at = time.time()
    elapsed = time.monotonic() - started
    err = info.value
    assert not isinstance(err, StartTimeout)
    assert elapsed < 5
    assert "exiting after daemonizing" in err.log
    assert "without writing its PID file" in str(err)
    assert not echo.pid_file.exists()
    # The daemon's last act was its log line; the library noticed this long after:
    since_exit = failed_at - echo.log_file.stat().st_mtime
    print(
        f"\nfast failure: start() raised after {elapsed:.3f} s, "
        f"{since_exit * 1000:.0f} ms after the daemon's last log line"
    )
    assert echo.marked() == []


# -- timeouts ----------------------------------------------------------------------------------


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


# -- nothing is orphaned ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--ignore-term"]], ids=["term", "ignores-term"])
def test_start_timeout_leaves_no_double_forked_daemon(echo, test_id, extra):
    # gem: no PID file means nothing to kill: the daemon keeps running after the timeout.
    daemon = echo("--wait-before-pid", "60", *extra).start_timeout(2).start_abort_timeout(1)
    with pytest.raises(StartTimeout):
        daemon.start()
    assert "daemonized" in echo.log_file.read_text()  # there was a daemon to clean up
    assert marked(test_id) == []
    assert not echo.pid_file.exists()


def test_keyboard_interrupt_during_start_leaves_nothing_behind(echo, test_id, child):
    # gem: the interrupt propagates and the double-forked daemon keeps running.
    daemon = echo("--wait-before-pid", "60").start_timeout(60).log_activity_timeout(60)
    starter = child(INTERRUPTIBLE_START, daemon=daemon)
    assert starter.message() == "starting"
    try:
        assert wait_until(
            lambda: echo.log_file.exists() and "daemonized" in echo.log_file.read_text(), 30
        )
        daemons = marked(test_id)
        assert daemons  # the daemon is up, in a session of its own, waiting to write its PID
        starter.signal(signal.SIGINT)
        assert starter.message() == "interrupted"
        assert starter.wait() == 42, starter.stderr
        assert marked(test_id) == []
        assert all(gone(pid) for pid in daemons)
        assert not echo.pid_file.exists()
    finally:
        kill_marked(test_id)


@pytest.mark.slow
def test_shell_start_command_with_a_background_child_leaves_nothing_behind(echo, test_id):
    # gem: kills at most the shell; the backgrounded daemon and the sleep live on.
    base = echo("--wait-before-pid", "60")
    shell = f"{shlex.join(base.config.start_command)} & sleep 60"
    daemon = base.start_with(["sh", "-c", shell]).start_timeout(2).start_abort_timeout(1)
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    assert "still running" in str(info.value)
    assert "daemonized" in echo.log_file.read_text()
    assert marked(test_id) == []


_SLOW_DOUBLE_FORK = """
import os, signal, sys, time
def log(line):
    with open(sys.argv[1], "a") as f:
        f.write(line + "\\n")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # no signals while daemonizing
if os.fork() > 0:
    os._exit(0)
os.setsid()
log(f"intermediate {os.getpid()}")
time.sleep(1.0)
if os.fork() > 0:
    os._exit(0)  # hands over to the daemon, then exits
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
log(f"daemon {os.getpid()}")
time.sleep(60)
"""


@pytest.mark.slow
def test_start_abort_also_stops_a_daemon_forked_during_the_abort(echo, test_id):
    # gem: leaves it running. Here the intermediate process of a double fork blocks
    # SIGTERM while daemonizing and forks the daemon after the abort's first sweep.
    argv = [sys.executable, "-c", _SLOW_DOUBLE_FORK, str(echo.log_file)]
    daemon = echo().start_with(argv).start_timeout(0.5).start_abort_timeout(5)
    try:
        with pytest.raises(StartTimeout):
            daemon.start()
        assert "intermediate" in echo.log_file.read_text()
        assert marked(test_id) == []
    finally:
        kill_marked(test_id)


# -- a stranger answering the ping ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stranger_already_answering_is_named_and_nothing_is_spawned(echo, kind):
    # gem: spawns anyway; the stranger answers the ping and start reports success.
    if kind == "tcp":
        port = free_port()
        stranger = socket.create_server(("127.0.0.1", port))
        daemon = echo(port=port)
    else:
        directory = Path(tempfile.mkdtemp(prefix="dc-"))  # short: sun_path has 108 bytes
        path = directory / "s.sock"
        stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stranger.bind(str(path))
        stranger.listen()
        argv = echo_command(
            "--unix", str(path), "--pid-file", str(echo.pid_file), "--log-file", str(echo.log_file)
        )
        daemon = echo().start_with(argv).ping_unix(path)
    try:
        with pytest.raises(StartError) as info:
            daemon.start()
        err = info.value
        assert f"PID {os.getpid()}" in str(err)
        assert "already answered" in str(err)
        assert err.ran is False
        assert not echo.log_file.exists()  # the start command never ran
        assert echo.marked() == []
        assert daemon.is_running() is False
    finally:
        stranger.close()
        if kind == "unix":
            shutil.rmtree(directory)


def test_stranger_on_an_http_port_is_named(tmp_path, test_id):
    server = http.server.HTTPServer(
        ("127.0.0.1", free_port()), http.server.SimpleHTTPRequestHandler
    )
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


# The daemon has died (a zombie: its parent waited for its exit without reaping
# it) by the time its PID file names it, however soon the file is looked at.
_WRITE_PID_AND_DIE = """
import os, sys
if os.fork() == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os._exit(0)
    os.waitid(os.P_PID, daemon, os.WEXITED | os.WNOWAIT)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{daemon}\\n")
    os.replace(tmp, sys.argv[1])
    os._exit(0)
"""


def test_daemon_dying_while_a_stranger_answers_is_not_a_success(echo):
    # gem: kill(pid, 0) succeeds on the dead daemon's zombie and the stranger answers the
    # ping, so start reports success.
    holder: list[socket.socket] = []

    def stranger_arrives() -> None:  # after the "already answered" check, before the spawn
        holder.append(socket.create_server(("127.0.0.1", echo.port)))

    daemon = (
        echo()
        .start_with([sys.executable, "-c", _WRITE_PID_AND_DIE, str(echo.pid_file)])
        .before_start(stranger_arrives)
    )
    try:
        with pytest.raises(StartError) as info:
            daemon.start()
        assert not isinstance(info.value, StartTimeout)
        assert "exited before it answered" in str(info.value)
        assert info.value.pid is not None
        assert daemon.is_running() is False
    finally:
        for sock in holder:
            sock.close()


# -- the lock directory ------------------------------------------------------------------------


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


# -- pings that can never answer, and programs that cannot run ---------------------------------


@pytest.mark.parametrize(
    ("ping", "said"),
    [
        pytest.param("no-such-ping-program --check", "not found", id="shell-127"),
        pytest.param(("/no/such/ping-program",), "No such file", id="argv-enoent"),
    ],
)
def test_a_ping_command_that_cannot_run_fails_the_start_at_once(echo, ping, said):
    daemon = echo().ping_command(ping).start_timeout(20)
    began = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    assert time.monotonic() - began < 5  # not the whole start_timeout
    text = str(info.value)
    assert "ping can never answer" in text
    assert said in text
    assert "no-such-ping-program" in text or "/no/such/ping-program" in text
    if isinstance(ping, str):
        assert info.value.exit_status == 127
    assert not daemon.is_running()  # the daemon it had started is stopped


def test_a_program_that_cannot_run_says_so_without_a_logs_line(echo, tmp_path):
    daemon = echo().start_with([str(tmp_path / "no-such-program")])
    with pytest.raises(StartError) as info:
        daemon.start()
    text = str(info.value)
    assert "cannot run" in text
    assert "logs empty" not in text
    assert info.value.ran is False
