"""``stop()`` and ``restart()`` with real processes.

Covers: stop returning only once the process has exited (not when its PID file
disappears, which real daemons delete just before exiting), stopping when not
running, the stop signal (names and numbers), the stop timeout and its SIGKILL,
stop commands (success, failure, ``dont_stop_if_pid_file_invalid``), restart with
and without a restart command, never signalling PIDs 0/1/negative/our own/our
parent's, and stop racing ``is_running()`` in another thread. A process that
reused the daemon's PID is in ``test_pidfile.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import threading
import time
from typing import TYPE_CHECKING

import psutil
import pytest
from echo_server import echo_command
from helpers import dead_pid, gone, roundtrip

from daemon_controller import Daemon, StartError, StopError, StopTimeout

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import EchoFactory


# -- helpers -----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    return not gone(pid)


def log_text(echo: EchoFactory) -> str:
    return echo.log_file.read_text(errors="replace") if echo.log_file.exists() else ""


def started(daemon: Daemon) -> int:
    daemon.start()
    pid = daemon.read_pid()
    assert pid is not None
    assert alive(pid)
    return pid


def force_cleanup(daemon: Daemon, *pids: int | None) -> None:
    """Best effort: stop the daemon, then SIGKILL whatever is left of ``pids``."""
    with contextlib.suppress(Exception):
        daemon.stop()
    for pid in pids:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- stop() ------------------------------------------------------------------------------


def test_stop_returns_after_the_process_exited(echo: EchoFactory) -> None:
    daemon = echo()
    pid = started(daemon)
    daemon.stop()
    assert gone(pid)
    assert not echo.pid_file.exists()
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    assert "received SIGTERM" in log_text(echo)


def test_stop_when_not_running_is_silent(echo: EchoFactory) -> None:
    daemon = echo()
    daemon.stop()
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_stop_removes_a_stale_pid_file(echo: EchoFactory) -> None:
    daemon = echo()
    echo.pid_file.write_text(f"{dead_pid()}\n")
    daemon.stop()
    assert not echo.pid_file.exists()


@pytest.mark.slow
def test_stop_waits_for_exit_not_for_the_pid_file(echo: EchoFactory, tmp_path: Path) -> None:
    # The server deletes its PID file after its 1 s stop delay, right before it
    # exits (like nginx, Redis, PostgreSQL). stop() must wait for the exit itself.
    record = tmp_path / "record.jsonl"
    # A 1 ms poll interval: a stop() that watched the PID file instead of the
    # process would notice its deletion within the few ms before the exit.
    daemon = echo("--stop-delay", "1.0", "--record", str(record)).ping_interval(0.001)
    port = echo.port
    pid = started(daemon)
    try:
        daemon.stop()
        returned = time.monotonic()
        assert gone(pid)
        events = [json.loads(line) for line in record.read_text().splitlines()]
        exits = [e for e in events if e["event"] == "exit" and e["pid"] == pid]
        assert len(exits) == 1, events  # recorded as the very last thing before _exit
        assert exits[0]["monotonic"] <= returned
        # The port is free again: a new server on it starts right away.
        restarted = echo("--stop-delay", "1.0", port=port)
        new_pid = started(restarted)
        assert new_pid != pid
        assert roundtrip(port) == b"hello daemon\n"
        # restart() of a daemon that takes 1 s to stop also waits for the exit.
        restarted.restart()
        newest = restarted.read_pid()
        assert newest is not None
        assert newest != new_pid
        assert gone(new_pid)
        assert roundtrip(port, b"again") == b"again"
        restarted.stop()
        assert gone(newest)
    finally:
        force_cleanup(daemon, pid)


@pytest.mark.parametrize(
    "sig",
    ["INT", "SIGINT", "int", signal.SIGINT, int(signal.SIGINT)],
    ids=["INT", "SIGINT", "lowercase", "Signals.SIGINT", "2"],
)
def test_stop_signal_is_sent(echo: EchoFactory, sig: str | int) -> None:
    # SIGTERM is ignored: only the configured signal can stop it in time.
    daemon = echo("--ignore-term").stop_signal(sig).stop_timeout(10)
    pid = started(daemon)
    try:
        daemon.stop()  # a StopTimeout here would mean it had to be killed
        assert gone(pid)
        assert "received SIGINT" in log_text(echo)
        assert not echo.pid_file.exists()
    finally:
        force_cleanup(daemon.stop_signal("KILL"), pid)


@pytest.mark.slow
def test_stop_timeout_kills_the_daemon(echo: EchoFactory) -> None:
    daemon = echo("--ignore-term").stop_timeout(1)
    pid = started(daemon)
    try:
        begun = time.monotonic()
        with pytest.raises(StopTimeout) as info:
            daemon.stop()
        assert time.monotonic() - begun < 10
        error = info.value
        assert isinstance(error, StopError)
        assert isinstance(error, TimeoutError)
        assert error.timeout == 1
        assert error.pid == pid
        assert error.identifier == "echo"
        assert gone(pid)
        assert not echo.pid_file.exists()
        assert "exiting" not in log_text(echo)  # killed, not a clean exit
        assert daemon.is_running() is False
    finally:
        force_cleanup(daemon.stop_signal("KILL"), pid)


# -- stop commands -----------------------------------------------------------------------


def test_stop_command_is_run_and_waited_for(echo: EchoFactory, tmp_path: Path) -> None:
    marker = tmp_path / "stop-ran"
    base = echo("--stop-delay", "0.5")
    pid_file = shlex.quote(str(echo.pid_file))
    daemon = base.stop_with(f"kill -TERM $(cat {pid_file}) && touch {shlex.quote(str(marker))}")
    pid = started(daemon)
    try:
        daemon.stop()
        assert marker.exists()
        assert gone(pid)  # the command returns at once; stop() waited for the exit
        assert not echo.pid_file.exists()
        assert "received SIGTERM" in log_text(echo)
    finally:
        force_cleanup(base, pid)


def test_failing_stop_command_raises_stop_error(echo: EchoFactory) -> None:
    base = echo()
    daemon = base.stop_with("echo boom; exit 3")
    pid = started(base)
    try:
        with pytest.raises(StopError) as info:
            daemon.stop()
        error = info.value
        assert not isinstance(error, StopTimeout)
        assert "boom" in error.output
        assert error.exit_status == 3
        assert "boom" in str(error)
        assert alive(pid)  # nothing else stopped it
    finally:
        force_cleanup(base, pid)
    assert gone(pid)


@pytest.mark.parametrize("pid_file_state", ["missing", "corrupt", "stale"])
@pytest.mark.parametrize("dont_stop", [False, True], ids=["default", "dont_stop_if_invalid"])
def test_stop_command_when_not_running(
    echo: EchoFactory, tmp_path: Path, pid_file_state: str, dont_stop: bool
) -> None:
    marker = tmp_path / "stop-ran"
    daemon = echo().stop_with(f"touch {shlex.quote(str(marker))}")
    if dont_stop:
        daemon = daemon.dont_stop_if_pid_file_invalid()
    if pid_file_state == "corrupt":
        echo.pid_file.write_text("not a pid\n")
    elif pid_file_state == "stale":
        echo.pid_file.write_text(f"{dead_pid()}\n")
    daemon.stop()
    assert marker.exists() is not dont_stop
    if pid_file_state == "stale":
        assert not echo.pid_file.exists()


# -- restart() ---------------------------------------------------------------------------


def test_restart_stops_then_starts(echo: EchoFactory) -> None:
    daemon = echo()
    old = started(daemon)
    new = None
    try:
        daemon.restart()
        new = daemon.read_pid()
        assert new is not None
        assert new != old
        assert gone(old)
        assert roundtrip(echo.port) == b"hello daemon\n"
        daemon.stop()
        assert gone(new)
    finally:
        force_cleanup(daemon, old, new)


def test_restart_when_not_running_starts(echo: EchoFactory) -> None:
    daemon = echo()
    echo.pid_file.write_text(f"{dead_pid()}\n")
    daemon.restart()
    pid = daemon.read_pid()
    try:
        assert pid is not None
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        force_cleanup(daemon, pid)


def test_restart_command_returns_once_the_new_daemon_answers(
    echo: EchoFactory, tmp_path: Path
) -> None:
    daemon = echo()
    port = echo.port
    pid_file = shlex.quote(str(echo.pid_file))
    marker = tmp_path / "restart-ran"
    new_server = shlex.join(
        echo_command(
            "--port",
            str(port),
            "--pid-file",
            str(echo.pid_file),
            "--log-file",
            str(echo.log_file),
            "--wait-before-listen",
            "1",
        )
    )
    script = (
        f"kill -TERM $(cat {pid_file}) && "
        f"while [ -e {pid_file} ]; do sleep 0.05; done && "
        f"touch {shlex.quote(str(marker))} && {new_server}"
    )
    daemon = daemon.restart_with(script)
    old = started(daemon)
    new = None
    try:
        daemon.restart()  # the new server listens 1 s after it wrote its PID file
        assert marker.exists()
        assert roundtrip(port) == b"hello daemon\n"  # answered as soon as restart() returned
        new = daemon.read_pid()
        assert new is not None
        assert new != old
        assert gone(old)
        daemon.stop()
        assert gone(new)
    finally:
        force_cleanup(daemon, old, new)


def test_failing_restart_command_raises_start_error(echo: EchoFactory) -> None:
    daemon = echo().restart_with("echo oops >&2; exit 4")
    with pytest.raises(StartError) as info:
        daemon.restart()
    assert "oops" in info.value.output
    assert info.value.exit_status == 4
    assert "oops" in str(info.value)


# -- never signal the wrong process ------------------------------------------------------

# Runs in a child process of its own session, so that a library bug signalling
# the process group, itself or its parent hits only throwaway processes. The
# child checks read_pid() first and refuses to call stop() if the library takes
# the forbidden PID for the daemon (PID 1 here is the sandbox's init).
_FORBIDDEN_CHILD = """
import psutil
what, pid_file = args[0], daemon.config.pid_file
content = {"self": str(os.getpid()), "parent": str(os.getppid())}.get(what, what)
pid_file.write_text(content + "\\n")
if daemon.read_pid() is not None or daemon.is_running():
    sys.exit("the library took PID %s for the daemon" % content)
pid_file.write_text(content + "\\n")
daemon.stop()
assert psutil.pid_exists(1)
tell_parent("survived")
"""

# The parent of the child above: it notices a SIGTERM sent to it.
_FORBIDDEN_PARENT = """
import signal
from helpers import Child
hit = []
signal.signal(signal.SIGTERM, lambda *_: hit.append(1))
grandchild = Child(args[0], "parent", daemon=daemon)
said = grandchild.message()
status = grandchild.wait()
if hit:
    sys.exit("the parent was signalled")
if status:
    sys.exit(grandchild.stderr)
tell_parent(said)
"""


@pytest.mark.parametrize("content", ["0", "1", "-1", "-42", "self", "parent"])
def test_stop_never_signals_forbidden_pids(
    tmp_path: Path, test_id: str, child, content: str
) -> None:
    daemon = Daemon("forbidden").pid(tmp_path / "d.pid").stop_timeout(5)
    if content == "parent":
        script, args = _FORBIDDEN_PARENT, [_FORBIDDEN_CHILD]
    else:
        script, args = _FORBIDDEN_CHILD, [content]
    checker = child(script, *args, daemon=daemon, marker=test_id, new_session=True)
    assert checker.finish() == "survived", checker.stderr
    assert psutil.pid_exists(1)


# -- threads -----------------------------------------------------------------------------


def test_stop_while_another_thread_polls_is_running(echo: EchoFactory) -> None:
    daemon = echo("--stop-delay", "0.3")
    pid = started(daemon)
    errors: list[BaseException] = []
    answers: list[bool] = []
    done = threading.Event()

    def poll() -> None:
        try:
            while not done.is_set():
                answers.append(daemon.is_running())
                daemon.read_pid()
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=poll) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(answers) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.stop()
        assert gone(pid)
        after = len(answers)
        deadline = time.monotonic() + 10
        while len(answers) < after + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
        force_cleanup(daemon, pid)
    assert errors == []
    assert answers[0] is True
    assert answers[-1] is False
    assert daemon.is_running() is False
