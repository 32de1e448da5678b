"""PID files: what ``is_running()`` / ``read_pid()`` / ``stop()`` make of them, for real.

Covers the parsing rules (first line, plain decimal, safe range, never PID 0/1,
our own PID or our parent's), every kind of broken PID file (missing, empty,
garbage, huge, numbers too large for a PID, a directory, a FIFO) reading as
"not running" without an exception or a hang, arbitrary contents never
signalling anybody, multi-line PostgreSQL-style files, stale files being
removed (and corrupt ones kept), PIDs reused by a newer process, zombies, a
missing directory, a hypothesis property test of ``_pidfile.parse_pid`` and
the atomic, symlink-safe ``_pidfile.write``. Planted symlinks are in
``test_hostile_files.py``; a PID file only another user may read in
``test_other_users.py``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import (
    assert_live_echo_server,
    assert_not_signalled,
    dead_pid,
    pid_in_file,
    sleeper,
    stop_process,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_controller import Daemon, _pidfile

if TYPE_CHECKING:
    from pathlib import Path

_SPECIAL = {os.getpid(), os.getppid()}
#: An mtime long before any process on this machine was created.
LONG_AGO = 1_000_000_000.0


def _daemon(pid_file: Path) -> Daemon:
    return Daemon("pidfile test").pid(pid_file)


# -- broken PID files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"  \n\t \n", id="whitespace"),
        pytest.param(b"abc\n", id="letters"),
        pytest.param(b"12abc\n", id="number-then-letters"),
        pytest.param(b"-5\n", id="negative"),
        pytest.param(b"0\n", id="zero"),
        pytest.param(b"1\n", id="init"),
        pytest.param(b"+5\n", id="plus-sign"),
        pytest.param(b"0x10\n", id="hex"),
        pytest.param(b"1e3\n", id="float-notation"),
        pytest.param(b"99999999999999999999\n", id="too-large"),
        pytest.param(b"2147483648\n", id="above-int32"),
        pytest.param(bytes(range(256)), id="binary"),
        pytest.param(b"\xef\xbb\xbf4242\n", id="utf8-bom"),
        pytest.param(b"\n12345\n", id="pid-on-second-line"),
    ],
)
def test_corrupt_pid_file_is_not_running_and_kept(tmp_path: Path, content: bytes) -> None:
    pid_file = tmp_path / "d.pid"
    pid_file.write_bytes(content)
    daemon = _daemon(pid_file)
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    # Only a stale *valid* PID file is deleted; a corrupt one is left for a human.
    assert pid_file.read_bytes() == content


def test_missing_pid_file_is_not_running(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path / "absent.pid")
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    assert not (tmp_path / "absent.pid").exists()


def test_own_and_parent_pid_are_never_the_daemon(tmp_path: Path) -> None:
    pid_file = tmp_path / "d.pid"
    daemon = _daemon(pid_file)
    for pid in (os.getpid(), os.getppid()):
        pid_file.write_text(f"{pid}\n")
        assert daemon.is_running() is False
        assert daemon.read_pid() is None


def test_huge_pid_file_is_not_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "d.pid"
    pid_file.write_bytes(b"7" * (10 * 1024 * 1024))
    daemon = _daemon(pid_file)
    started = time.monotonic()
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    assert time.monotonic() - started < 10
    assert pid_file.stat().st_size == 10 * 1024 * 1024


@pytest.mark.parametrize(
    "content",
    ["2147483648", "4294967296", "18446744073709551616", "9" * 40, "1" + "0" * 4000],
    ids=["2^31", "2^32", "2^64", "40-digits", "4001-digits"],
)
def test_number_too_large_for_a_pid_is_invalid_not_a_crash(echo, content):
    # gem: Process.kill raises RangeError from every call until the file is deleted.
    echo.pid_file.write_text(content + "\n")
    daemon = echo()
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    daemon.stop()
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        assert daemon.read_pid() == pid
    finally:
        daemon.stop()


def _pid_file_contents(sentinel: int) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, plus near-misses around PIDs that must never be signalled."""
    special = [
        0,
        1,
        -1,
        os.getpid(),
        os.getppid(),
        sentinel,
        2**31 + sentinel,
        2**32 + sentinel,  # wraps around to the sentinel's PID in a 32-bit int
        2**64 + sentinel,
    ]
    decorations = st.sampled_from(
        [b"%d", b"%d\n", b" %d \r\n", b"%d\x00", b"%dabc", b"+%d", b"%d.0", b"\n%d", b"%d\nrest"]
    )
    numbers = st.sampled_from(special) | st.integers(min_value=-(2**70), max_value=2**70)
    formatted = st.builds(lambda fmt, n: fmt % n, decorations, numbers)
    return st.binary(max_size=300) | formatted


def test_arbitrary_pid_file_contents_never_raise_or_signal(tmp_path, test_id):
    # gem: raises (RangeError, ArgumentError on binary) or signals PID 0/own group/stranger.
    sentinel = sleeper(test_id, 300)
    pid_file = tmp_path / "d.pid"
    daemon = Daemon("hypothesis").pid(pid_file).stop_timeout(2)

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(_pid_file_contents(sentinel.pid))
    def check(data: bytes) -> None:
        # Written "long ago": no live process can have written it, so none may be touched.
        for query in ("is_running", "read_pid", "stop"):
            pid_file.write_bytes(data)
            os.utime(pid_file, (LONG_AGO, LONG_AGO))
            result = getattr(daemon, query)()
            assert result in (False, None)
            assert sentinel.poll() is None

    try:
        check()
        assert_not_signalled(sentinel)
    finally:
        stop_process(sentinel)


def test_directory_at_pid_path_is_not_running(tmp_path: Path) -> None:
    pid_dir = tmp_path / "d.pid"
    pid_dir.mkdir()
    (pid_dir / "keep").write_text("x")
    daemon = _daemon(pid_dir)
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    daemon.stop()  # nothing to stop, and the directory is not touched
    assert (pid_dir / "keep").read_text() == "x"


@pytest.mark.timeout(10)
def test_fifo_at_pid_path_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "d.pid"
    os.mkfifo(fifo)
    daemon = _daemon(fifo)
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    daemon.stop()
    assert fifo.exists()


# -- valid PID files ---------------------------------------------------------------------


def test_live_pid_with_surrounding_whitespace_is_running(tmp_path: Path, test_id: str) -> None:
    # As in the gem (which strips the content), whitespace around the number is fine.
    proc = sleeper(test_id, 30)
    try:
        pid_file = tmp_path / "d.pid"
        pid_file.write_text(f"  {proc.pid} \r\n")
        daemon = _daemon(pid_file)
        assert daemon.is_running() is True
        assert daemon.read_pid() == proc.pid
    finally:
        stop_process(proc)


def test_postgresql_style_multi_line_pid_file(tmp_path: Path, test_id: str) -> None:
    proc = sleeper(test_id, 30)
    try:
        pid_file = tmp_path / "postmaster.pid"
        lines = [
            str(proc.pid),
            str(tmp_path / "data"),
            str(int(time.time())),
            "5432",
            "/var/run/postgresql",
            "localhost",
            "  5432001         0",
            "ready   ",
        ]
        pid_file.write_text("\n".join(lines) + "\n")
        daemon = _daemon(pid_file)
        assert daemon.is_running() is True
        assert daemon.read_pid() == proc.pid
        assert pid_file.exists()
    finally:
        stop_process(proc)


@pytest.mark.parametrize("query", ["is_running", "read_pid"])
def test_stale_pid_file_is_removed(tmp_path: Path, query: str) -> None:
    pid_file = tmp_path / "d.pid"
    pid = dead_pid()
    assert not psutil.pid_exists(pid)
    pid_file.write_text(f"{pid}\n")
    result = getattr(_daemon(pid_file), query)()
    assert result in (False, None)
    assert not pid_file.exists()


def test_zombie_is_not_running(tmp_path: Path) -> None:
    # posix_spawn gives a child that nothing reaps behind our back (unlike
    # subprocess.Popen), so it stays a zombie until we waitpid() it.
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)
        pid_file = tmp_path / "d.pid"
        pid_file.write_text(f"{pid}\n")
        daemon = _daemon(pid_file)
        assert daemon.is_running() is False
        assert daemon.read_pid() is None
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # not ours to reap
    finally:
        os.waitpid(pid, 0)


@pytest.mark.parametrize("action", ["is_running", "read_pid", "stop", "connect", "start"])
def test_reused_pid_is_stale_removed_and_never_signalled(echo, test_id, action):
    # gem: trusts the number: running? is true, stop SIGTERMs the stranger, connect raises
    # AlreadyStarted instead of starting the daemon. A live process created after the
    # PID file was last written cannot have written it: the daemon died, its PID was reused.
    stranger = sleeper(test_id)
    try:
        echo.pid_file.write_text(f"{stranger.pid}\n")
        os.utime(echo.pid_file, (time.time() - 3600, time.time() - 3600))
        daemon = echo()
        if action == "is_running":
            assert daemon.is_running() is False
        elif action == "read_pid":
            assert daemon.read_pid() is None
        elif action == "stop":
            daemon.stop()
        if action not in ("connect", "start"):
            assert not echo.pid_file.exists()  # the stale file is removed
            assert_not_signalled(stranger)
            return
        if action == "connect":
            sock = daemon.connect(
                lambda: socket.create_connection(("127.0.0.1", echo.port), timeout=5)
            )
        else:
            daemon.start()
            sock = socket.create_connection(("127.0.0.1", echo.port), timeout=5)
        try:
            with sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
            pid = pid_in_file(echo.pid_file)
            assert pid != stranger.pid
            assert_live_echo_server(pid)
        finally:
            daemon.stop()
        assert_not_signalled(stranger)
    finally:
        stop_process(stranger)


def test_missing_directory_is_not_running_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    daemon = _daemon(missing / "d.pid")
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    assert not (tmp_path / "no").exists()


# -- parse_pid ---------------------------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64) | st.from_regex(rb"\A\s*[-+]?[0-9]{0,12}\s*(\n.*)?\Z"))
def test_parse_pid_never_returns_an_unsafe_pid(data: bytes) -> None:
    pid = _pidfile.parse_pid(data)
    assert pid is None or (type(pid) is int and 1 < pid < 2**31 and pid not in _SPECIAL)


@settings(max_examples=500)
@given(st.integers(min_value=2, max_value=2**31 - 1), st.binary(max_size=32))
def test_parse_pid_reads_first_line(pid: int, rest: bytes) -> None:
    if pid in _SPECIAL:
        assert _pidfile.parse_pid(f"{pid}\n".encode()) is None
        return
    assert _pidfile.parse_pid(f"{pid}\n".encode()) == pid
    assert _pidfile.parse_pid(f"{pid}".encode()) == pid
    assert _pidfile.parse_pid(f"{pid}\n".encode() + rest) == pid


# -- write -------------------------------------------------------------------------------


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "d.pid"
    pid_file.write_text("old content\n")
    inode_before = pid_file.stat().st_ino
    _pidfile.write(pid_file, 4242)
    assert pid_file.read_text() == "4242\n"
    assert pid_file.stat().st_ino != inode_before  # replaced by rename, not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pid"]


def test_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    pid_file = tmp_path / "d.pid"
    pid_file.symlink_to(target)
    _pidfile.write(pid_file, 4242)
    assert not pid_file.is_symlink()
    assert pid_file.read_text() == "4242\n"
    assert target.read_text() == "do not touch\n"
