"""Readiness from the daemon's log: ``ping_log(pattern)``.

A start is ready once a line matching the pattern appears in what the daemon
writes after the start began: lines read as they come, with no line limit, a
line written in pieces counting once complete, and a log that is huge, binary,
rotated or truncated meanwhile followed. The daemon's death ends the wait at
once, with its last lines. With a ping, both must hold.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING

import pytest
from echo_server import echo_command
from helpers import MARKER, event_time, free_port, roundtrip

from daemon_controller import Daemon, StartError, StartTimeout
from daemon_controller._logs import MAX_LINE, LogLines, LogWatch

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the echo server daemonizes")

READY = "Ready to accept connections"


class Files:
    def __init__(self, tmp_path: Path) -> None:
        self.pid = tmp_path / "echo.pid"
        self.log = tmp_path / "echo.log"
        self.record = tmp_path / "record.jsonl"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def logging_echo(files: Files, test_id: str, *args: str, port: int | None = None) -> Daemon:
    """The echo server going into the background, ready when it logs READY."""
    port = port or free_port()
    command = echo_command(
        "--port", str(port), "--pid-file", str(files.pid), "--log-file", str(files.log),
        "--record", str(files.record), "--ready-log-line", READY, *args,
    )  # fmt: skip
    return (
        Daemon("logging echo")
        .start_with(command)
        .ping_log(READY)
        .pid(files.pid)
        .log(files.log)
        .start_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def test_ready_when_the_line_is_logged(files, test_id):
    daemon = logging_echo(files, test_id, "--wait-before-listen", "0.3")
    assert daemon.config.readiness == ("log",)
    try:
        daemon.start()
        returned = time.monotonic()
        assert returned >= event_time(files.record, "ready-line")
        assert daemon.is_running()
    finally:
        daemon.stop()


def test_a_line_written_in_pieces_counts_once_complete(files, test_id):
    # xprocess and mirakuru matched (or missed) banners split across reads.
    daemon = logging_echo(files, test_id, "--split-ready-line", "0.5").ping_log(
        f"{READY}$"  # the first piece ends in the middle of it: it must not match
    )
    try:
        daemon.start()
        returned = time.monotonic()
        assert returned - event_time(files.record, "ready-line") >= 0.5
    finally:
        daemon.stop()


def test_lines_from_before_the_start_do_not_count(files, test_id):
    files.log.write_text(f"[old] {READY}\n" * 3)
    daemon = logging_echo(files, test_id, "--wait-before-listen", "0.5")
    try:
        daemon.start()
        assert time.monotonic() >= event_time(files.record, "ready-line")
    finally:
        daemon.stop()


@pytest.mark.slow
def test_a_huge_binary_log_is_read_to_the_line(files, test_id):
    # xprocess reads 50 lines and gives up; mirakuru hung on large output.
    daemon = logging_echo(files, test_id, "--log-junk", str(40 * 1024 * 1024))
    try:
        daemon.start()
        assert files.log.stat().st_size > 40 * 1024 * 1024
    finally:
        daemon.stop()


@pytest.mark.parametrize("change", ["--rotate-log", "--truncate-log"])
def test_a_log_rotated_or_truncated_meanwhile_is_followed(files, test_id, change):
    files.log.write_text("an older run's line\n" * 5000)  # the start begins far into the file
    daemon = logging_echo(files, test_id, "--log-junk", "200000", change)
    try:
        daemon.start()
        assert READY in files.log.read_text(errors="replace")
        if change == "--rotate-log":
            assert files.log.with_name("echo.log.1").exists()
    finally:
        daemon.stop()


def test_combined_with_a_ping_both_must_hold(files, test_id):
    # The line comes before the socket: with ping_tcp too, start() waits for both.
    port = free_port()
    early = "configuration loaded"
    daemon = (
        logging_echo(
            files, test_id, "--log-message", early, "--wait-before-listen", "0.5", port=port
        )
        .ping_log(early)
        .ping_tcp("127.0.0.1", port)
    )
    assert daemon.config.readiness == ("log", "ping")
    try:
        daemon.start()
        assert time.monotonic() >= event_time(files.record, "listening")
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()


def test_the_line_alone_is_ready_before_the_socket(files, test_id):
    # The counterpart of the test above: the line alone does not wait for the socket.
    early = "configuration loaded"
    daemon = logging_echo(files, test_id, "--log-message", early, "--wait-before-listen", "2")
    daemon = daemon.ping_log(early)
    try:
        daemon.start()
        assert not files.record.exists()  # the server records "listening" first of all
    finally:
        daemon.stop()


def test_the_daemons_death_ends_the_wait_at_once_with_its_last_lines(tmp_path, test_id):
    # testcontainers waited for a log line after the container had died.
    daemon = (
        Daemon("dying")
        .start_with(
            echo_command("--foreground", "--log-message", "bad setting x", "--exit-after-pid", "1")
        )
        .foreground()
        .ping_log("Ready to accept")
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .start_timeout(60)
        .env({MARKER: test_id})
    )
    began = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    assert time.monotonic() - began < 10  # not the start timeout
    assert not isinstance(info.value, StartTimeout)
    text = str(info.value)
    assert "pattern 'Ready to accept' not seen" in text
    assert "exited with status 1; its last lines:" in text
    assert "bad setting x" in text
    assert info.value.exit_status == 1


def test_a_daemonized_death_ends_the_wait_too(files, test_id):
    daemon = logging_echo(files, test_id, "--exit-after-pid", "3").log_activity_timeout(60)
    began = time.monotonic()
    with pytest.raises(StartError, match=re.escape(f"pattern '{READY}' not seen")):
        daemon.start()
    assert time.monotonic() - began < 10


def test_a_line_that_never_comes_times_out_saying_so(files, test_id):
    daemon = logging_echo(files, test_id).ping_log("no such line").start_timeout(1)
    with pytest.raises(StartTimeout, match="pattern 'no such line' not seen"):
        daemon.start()


def test_a_log_that_is_our_terminal_cannot_be_read():
    daemon = Daemon("x").start_with("true").ping_log("x").pid("x.pid").log("/dev/stderr")
    with pytest.raises(ValueError, match="ping_log"):
        daemon.start()


# -- following the file itself --------------------------------------------------------------


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_lines_are_joined_and_followed_through_rotation_and_truncation(tmp_path):
    log = tmp_path / "d.log"
    log.write_bytes(b"written before the start\n")
    lines = LogLines(LogWatch(log))
    append(log, b"half a li")
    assert lines.read() == []  # not complete yet
    append(log, b"ne\nnext\r\n")
    assert lines.read() == ["half a line", "next"]
    log.rename(tmp_path / "d.log.1")  # rotated: the old file gets a last line...
    append(tmp_path / "d.log.1", b"late in the old file\n")
    log.write_bytes(b"first in the new file\n")  # ...and a new one begins
    assert lines.read() == ["late in the old file", "first in the new file"]
    log.write_bytes(b"")  # truncated in place (copytruncate)
    append(log, b"after the truncation\n")
    assert lines.read() == ["after the truncation"]
    lines.close()


def test_binary_data_and_endless_lines_take_bounded_memory(tmp_path):
    log = tmp_path / "d.log"
    lines = LogLines(LogWatch(log))  # created during the start: all of it is new
    append(log, b"\xff\xfe\x00bin\n" + b"x" * (3 * MAX_LINE + 10) + b"\nend\n")
    read = lines.read()
    assert read[0] == "\ufffd\ufffd\x00bin"
    assert [len(line) for line in read[1:-1]] == [MAX_LINE, MAX_LINE, MAX_LINE, 10]
    assert read[-1] == "end"
    lines.close()
