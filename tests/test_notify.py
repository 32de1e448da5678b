"""Readiness the daemon announces: ``notify()``, systemd's sd_notify protocol.

Each start gets a private socket named in ``NOTIFY_SOCKET``; ``READY=1`` ends
the wait (with a ping too: both must hold), ``MAINPID=`` or the sender names
the daemon (so it needs no PID file), ``STATUS=`` is kept, ``ERRNO=`` and
``STOPPING=1`` fail the start at once, ``EXTEND_TIMEOUT_USEC=`` extends it, and
messages from processes that are not of the start are ignored.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest
from echo_server import echo_command
from helpers import MARKER, event_time, free_port, gone, roundtrip, wait_until

from daemon_controller import Daemon, StartError, StartTimeout

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="unix datagram sockets")


def notifying_echo(tmp_path: Path, test_id: str, *args: str, port: int | None = None) -> Daemon:
    """The echo server with ``notify()``: no ping, no PID or log option of ours."""
    port = port or free_port()
    command = echo_command(
        "--port", str(port), "--record", str(tmp_path / "record.jsonl"), "--notify-ready", *args
    )  # fmt: skip
    return (
        Daemon(f"notify-{test_id[:8]}")
        .start_with(command)
        .notify()
        .start_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )


def listening_pid(tmp_path: Path) -> int:
    """The PID that recorded "listening": the echo server itself."""
    event_time(tmp_path / "record.jsonl", "listening")
    records = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    return next(r["pid"] for r in records if r["event"] == "listening")


def test_ready_when_it_says_so(tmp_path, test_id):
    log = tmp_path / "echo.log"
    pid_file = tmp_path / "echo.pid"
    daemon = notifying_echo(
        tmp_path, test_id, "--pid-file", str(pid_file), "--log-file", str(log),
        "--wait-before-listen", "0.3", "--notify-status", "warming up",
    ).pid(pid_file).log(log)  # fmt: skip
    assert daemon.config.readiness == ("notify",)
    try:
        daemon.start()
        assert time.monotonic() >= event_time(tmp_path / "record.jsonl", "notify-ready")
        status = daemon.status()
        assert status.readiness == ("notify",)
        assert status.notify_status == "Listening"  # the last STATUS= it sent
        assert status.pid == listening_pid(tmp_path)
    finally:
        daemon.stop()


def test_a_program_in_the_foreground_needs_no_pid_file(tmp_path, test_id):
    # The start command is the daemon: the library writes the PID file for it.
    port = free_port()
    daemon = notifying_echo(tmp_path, test_id, "--foreground", port=port)
    try:
        daemon.start()
        pid = daemon.read_pid()
        assert pid == listening_pid(tmp_path)
        assert daemon.resolved().config.pid_file.parent.name.startswith("daemon-controller")
        assert roundtrip(port) == b"hello daemon\n"
        assert "listening on" in daemon.resolved().config.log_file.read_text()  # its output
    finally:
        daemon.stop()
    assert gone(pid)


@pytest.mark.parametrize("mainpid", [True, False], ids=["MAINPID", "sender"])
def test_a_daemon_going_into_the_background_is_found_by_what_it_sent(tmp_path, test_id, mainpid):
    # No PID file: MAINPID= names the daemon, or else the process that sent READY=1 is it.
    daemon = notifying_echo(tmp_path, test_id, *(["--notify-mainpid"] if mainpid else []))
    try:
        daemon.start()
        assert daemon.read_pid() == listening_pid(tmp_path)
        assert daemon.is_running()
    finally:
        daemon.stop()


def test_errno_fails_the_start_at_once_with_it(tmp_path, test_id):
    daemon = notifying_echo(tmp_path, test_id, "--notify-errno", "5").start_timeout(60)
    began = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    assert time.monotonic() - began < 10  # the message, not the timeout (the daemon lives on)
    assert not isinstance(info.value, StartTimeout)
    assert "reported error 5 (Input/output error)" in str(info.value)
    assert "its last STATUS: failing" in str(info.value)


def test_stopping_before_ready_fails_the_start(tmp_path, test_id):
    daemon = notifying_echo(tmp_path, test_id, "--notify-stopping").start_timeout(60)
    with pytest.raises(StartError, match="STOPPING=1"):
        daemon.start()


def test_the_daemons_death_before_ready_ends_the_wait(tmp_path, test_id):
    daemon = notifying_echo(tmp_path, test_id, "--foreground", "--exit-after-pid", "4")
    with pytest.raises(StartError) as info:
        daemon.start()
    assert "no READY=1 received" in str(info.value)
    assert "exited with status 4" in str(info.value)


@pytest.mark.slow
def test_extend_timeout_gives_it_more_time(tmp_path, test_id):
    daemon = notifying_echo(
        tmp_path, test_id, "--notify-extend", "5", "--wait-before-listen", "1.5"
    ).start_timeout(1)  # fmt: skip
    began = time.monotonic()
    try:
        daemon.start()
        assert time.monotonic() - began >= 1.5
    finally:
        daemon.stop()


def test_no_ready_times_out_saying_what_is_missing(tmp_path, test_id):
    daemon = notifying_echo(tmp_path, test_id, "--notify-status", "still loading")
    command = [arg for arg in daemon.config.start_command if arg != "--notify-ready"]
    daemon = daemon.start_with(command).start_timeout(1)
    with pytest.raises(
        StartTimeout, match=r"no READY=1 received \(its last STATUS: still loading\)"
    ):
        daemon.start()


def test_messages_from_other_processes_are_ignored(tmp_path, test_id, caplog):
    # Somebody else (here: this test process) sends READY=1 to the start's socket.
    address_file = tmp_path / "notify-address"
    daemon = notifying_echo(
        tmp_path, test_id, "--write-file", f"{address_file}={{env:NOTIFY_SOCKET}}",
        "--wait-before-listen", "1",
    )  # fmt: skip
    sent = threading.Event()

    def impostor() -> None:
        if not wait_until(lambda: address_file.exists() and address_file.read_text(), 15):
            return
        address = address_file.read_text()
        assert address.startswith("@")  # abstract: no file, reachable by another user
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1\nMAINPID=1", "\0" + address[1:])
        sent.set()

    thread = threading.Thread(target=impostor)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="daemon_controller"):
            daemon.start()
        assert sent.is_set()
        assert time.monotonic() >= event_time(tmp_path / "record.jsonl", "notify-ready")
        assert "ignored a notify message" in caplog.text
        assert daemon.read_pid() == listening_pid(tmp_path)
    finally:
        thread.join(20)
        daemon.stop()


def test_combined_with_a_ping_both_must_hold(tmp_path, test_id):
    # READY=1 comes first; the ping answers only a moment later.
    other = free_port()
    server: list[socket.socket] = []
    daemon = notifying_echo(tmp_path, test_id).ping_tcp("127.0.0.1", other)
    assert daemon.config.readiness == ("notify", "ping")

    def open_later() -> None:
        event_time(tmp_path / "record.jsonl", "notify-ready", timeout=20)
        time.sleep(0.5)
        server.append(socket.create_server(("127.0.0.1", other)))

    thread = threading.Thread(target=open_later)
    thread.start()
    try:
        daemon.start()
        assert server  # it waited for the ping after READY=1
    finally:
        thread.join(30)
        daemon.stop()
        for sock in server:
            sock.close()


def test_running_block_with_a_notify_daemon(tmp_path, test_id):
    port = free_port()
    daemon = notifying_echo(tmp_path, test_id, "--foreground", port=port)
    with daemon.running():
        assert roundtrip(port) == b"hello daemon\n"
        pid = daemon.read_pid()
    assert pid is not None
    assert wait_until(lambda: gone(pid))
