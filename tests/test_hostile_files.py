"""Files someone else planted where the library keeps its own, each tried for real.

A PID file that is a symlink to a file the user cares about (never modified,
also when the library writes the PID file itself) or to ``/dev/zero`` or a
FIFO (no hang); a lock file that is a symlink; ``running()``'s sidecar files
(``.owner``, ``.users``, ``.failure``) planted as symlinks. Each test says in
a comment starting "gem:" how the Ruby gem would be fooled.
"""

from __future__ import annotations

import os
import stat
import time

import pytest
from echo_server import echo_command
from helpers import gone, pid_in_file, roundtrip, wait_until

from daemon_controller import DaemonError, StartError

PRECIOUS = "precious settings: do not touch\n"


@pytest.mark.parametrize("mode", ["daemonizing", "foreground"])
def test_pid_file_symlink_to_a_precious_file_is_never_modified(echo, tmp_path, mode):
    # gem: no harm for a text target; guards every write of ours (foreground mode writes
    # the PID file itself: a naive open(path, "w") would truncate the target).
    precious = tmp_path / "settings.conf"
    precious.write_text(PRECIOUS)
    before = precious.stat()
    echo.pid_file.symlink_to(precious)
    daemon = echo()
    if mode == "foreground":
        argv = echo_command("--port", str(echo.port), "--foreground")
        daemon = daemon.start_with(argv).foreground()
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    daemon.stop()
    assert precious.read_text() == PRECIOUS
    daemon.start()
    try:
        assert not echo.pid_file.is_symlink()
        assert stat.S_ISREG(echo.pid_file.lstat().st_mode)
        assert daemon.read_pid() == pid_in_file(echo.pid_file)
        assert roundtrip(echo.port) == b"hello daemon\n"
    finally:
        daemon.stop()
    after = precious.stat()
    assert precious.read_text() == PRECIOUS
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_pid_file_symlink_to_a_device_or_fifo_does_not_hang(echo, tmp_path, target):
    # gem: File.read on the link never returns (a FIFO blocks, /dev/zero never ends).
    if target == "fifo":
        fifo = tmp_path / "a.fifo"
        os.mkfifo(fifo)
        target = str(fifo)
    echo.pid_file.symlink_to(target)
    daemon = echo()
    started = time.monotonic()
    assert daemon.is_running() is False
    assert daemon.read_pid() is None
    daemon.stop()
    assert time.monotonic() - started < 10
    daemon.start()
    try:
        assert daemon.read_pid() == pid_in_file(echo.pid_file)
    finally:
        daemon.stop()
    info = os.stat(target)
    assert stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)


@pytest.mark.parametrize("action", ["start", "stop", "is_running"])
def test_lock_file_symlink_is_refused_and_its_target_untouched(echo, tmp_path, action):
    # gem: File.open(lock_file, "w") follows the link and truncates the target.
    precious = tmp_path / "settings.conf"
    precious.write_text(PRECIOUS)
    lock = tmp_path / "echo.lock"
    lock.symlink_to(precious)
    daemon = echo().lock(lock)
    with pytest.raises(DaemonError) as info:
        getattr(daemon, action)()
    assert str(lock) in str(info.value)
    assert "symbolic link" in str(info.value)
    assert precious.read_text() == PRECIOUS
    assert lock.is_symlink()
    assert not echo.log_file.exists()  # nothing was spawned
    assert echo.marked() == []


@pytest.mark.parametrize("sidecar", ["owner", "users", "failure"])
def test_running_sidecar_symlinks_are_never_written_through(echo, tmp_path, sidecar):
    # gem: has no sidecar files; guards ours, which a naive open(path, "w") would write through.
    precious = tmp_path / "settings.conf"
    precious.write_text(PRECIOUS)
    daemon = echo()
    lock = daemon._target().files.lock
    link = lock.with_name(f"{lock.name}.{sidecar}")
    link.symlink_to(precious)
    if sidecar == "owner":
        with daemon.running():
            pid = daemon.read_pid()
            assert pid is not None
        assert wait_until(lambda: gone(pid))  # the block started it, so it stopped it
    elif sidecar == "users":
        with pytest.raises(DaemonError, match="symbolic link"), daemon.running():
            pytest.fail("entered the block through a symlinked .users file")
        assert not echo.log_file.exists()
    else:
        failing = echo("--exit-before-daemonize", "3")
        with pytest.raises(StartError), failing.running():
            pytest.fail("a failing daemon entered the block")
    assert precious.read_text() == PRECIOUS
    assert echo.marked() == []
