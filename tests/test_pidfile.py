"""PID files: ``is_running()`` / ``read_pid()`` against real files and processes.

Covers the parsing rules (first line, plain decimal, safe range, never PID 0/1,
our own PID or our parent's), every kind of broken PID file (missing, empty,
garbage, huge, a directory, a FIFO, unreadable) reading as "not running" without
an exception or a hang, multi-line PostgreSQL-style files, stale files being
removed (and corrupt ones kept), zombies counting as not running, a missing
directory, a hypothesis property test of ``_pidfile.parse_pid`` and the atomic,
symlink-safe ``_pidfile.write``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_controller import Daemon, _pidfile

_SPECIAL = {os.getpid(), os.getppid()}
_REPO = Path(__file__).resolve().parent.parent


def _daemon(pid_file: Path) -> Daemon:
    return Daemon("pidfile test").pid(pid_file)


def _sleeper(test_id: str, seconds: int = 30) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", str(seconds)], env={**os.environ, "DC_TEST_ID": test_id})


def _stop_sleeper(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


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


_UNREADABLE_CHECK = """
import os, sys
from daemon_controller import Daemon
daemon = Daemon("unreadable").pid(sys.argv[1])
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # root would read mode 000 files
try:
    open(sys.argv[1]).close()
except PermissionError:
    pass
else:
    sys.exit("the PID file is readable after dropping privileges")
print(daemon.is_running(), daemon.read_pid())
"""


def test_unreadable_pid_file_is_not_running(test_id: str) -> None:
    proc = _sleeper(test_id)
    # A directory others can enter: as root the check runs as "nobody".
    directory = Path(tempfile.mkdtemp(prefix="dc-unreadable-"))
    try:
        directory.chmod(0o777)
        pid_file = directory / "d.pid"
        pid_file.write_text(f"{proc.pid}\n")
        pid_file.chmod(0)
        if os.geteuid() == 0:
            result = subprocess.run(
                [sys.executable, "-c", _UNREADABLE_CHECK, str(pid_file)],
                cwd=_REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == ["False", "None"]
        else:
            daemon = _daemon(pid_file)
            assert daemon.is_running() is False
            assert daemon.read_pid() is None
        assert pid_file.exists()
        assert proc.poll() is None
    finally:
        _stop_sleeper(proc)
        shutil.rmtree(directory)


# -- valid PID files ---------------------------------------------------------------------


def test_live_pid_with_surrounding_whitespace_is_running(tmp_path: Path, test_id: str) -> None:
    # As in the gem (which strips the content), whitespace around the number is fine.
    proc = _sleeper(test_id)
    try:
        pid_file = tmp_path / "d.pid"
        pid_file.write_text(f"  {proc.pid} \r\n")
        daemon = _daemon(pid_file)
        assert daemon.is_running() is True
        assert daemon.read_pid() == proc.pid
    finally:
        _stop_sleeper(proc)


def test_postgresql_style_multi_line_pid_file(tmp_path: Path, test_id: str) -> None:
    proc = _sleeper(test_id)
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
        _stop_sleeper(proc)


@pytest.mark.parametrize("query", ["is_running", "read_pid"])
def test_stale_pid_file_is_removed(tmp_path: Path, query: str) -> None:
    pid_file = tmp_path / "d.pid"
    pid_file.write_text(f"{_dead_pid()}\n")
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


def test_pid_reused_by_a_newer_process_is_not_running(tmp_path: Path, test_id: str) -> None:
    proc = _sleeper(test_id)
    try:
        pid_file = tmp_path / "d.pid"
        pid_file.write_text(f"{proc.pid}\n")
        an_hour_ago = time.time() - 3600
        os.utime(pid_file, (an_hour_ago, an_hour_ago))
        # The file was written before the process existed: it cannot name it.
        daemon = _daemon(pid_file)
        assert daemon.is_running() is False
        assert daemon.read_pid() is None
        assert proc.poll() is None
    finally:
        _stop_sleeper(proc)


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
