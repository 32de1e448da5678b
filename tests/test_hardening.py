"""Issue 4 hardening: the ways the Ruby gem can be fooled, each tried for real.

Every test here names, in a one-line comment, the gem behaviour it would catch.
Covered:

* PID reuse: a PID file naming a live process created after the file was last
  written is stale; ``is_running()``, ``read_pid()``, ``stop()`` and ``connect()``
  remove it and never signal that process (``connect()`` starts our daemon);
* hostile PID files: a symlink to a file the user cares about (never modified,
  also when the library writes the PID file itself), a symlink to ``/dev/zero``
  or a FIFO (no hang), numbers too large for a PID, and a hypothesis property
  over arbitrary bytes (no exception, nothing signalled);
* a lock file that is a symlink, and ``running()``'s sidecar files
  (``.owner``, ``.users``, ``.failure``) planted as symlinks;
* unwritable directories and another user's process, run as ``nobody``;
* nothing orphaned after a start timeout, a KeyboardInterrupt during a start, or
  a shell start command with a background child;
* fast failure detection for a daemon that dies after daemonizing;
* ``foreground()`` with default paths in the runtime directory (``python -m
  http.server``), the atomic, symlink-safe PID file it writes, and
  ``daemonize_for_me()`` writing the PID file only once the program is up;
* a stranger already answering the ping, and a daemon that dies while a
  stranger answers;
* the Windows module refusing to run on POSIX.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from echo_server import echo_command, free_port
from helpers import gone, marked, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_controller import (
    Daemon,
    DaemonError,
    StartError,
    StartTimeout,
    _platform,
)
from daemon_controller._platform import _windows

MARKER = "DC_TEST_ID"
REPO = Path(__file__).resolve().parent.parent
PRECIOUS = "precious settings: do not touch\n"
#: An mtime long before any process on this machine was created.
LONG_AGO = 1_000_000_000.0

needs_root = pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0, reason="needs root to act as 'nobody'"
)


# -- helpers ------------------------------------------------------------------------------


def kill_marked(test_id: str) -> None:
    pids = marked(test_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: all(gone(pid) for pid in pids))


def pid_in_file(path: Path) -> int:
    return int(path.read_text().split("\n", 1)[0])


def roundtrip(port: int, payload: bytes = b"hello daemon\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def sleeper(test_id: str, seconds: int = 60) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", str(seconds)], env={**os.environ, MARKER: test_id})


def assert_not_signalled(proc: subprocess.Popen[bytes]) -> None:
    """``proc`` (a ``sleep``, which dies of any catchable signal) is still running."""
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)  # a signal, had one been sent, has been delivered by now


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def shared_dir() -> Path:
    """A fresh directory under the system temp dir that ``nobody`` may use."""
    path = Path(tempfile.mkdtemp(prefix="dc-hard-"))
    path.chmod(0o777)
    return path


def run_as_nobody(script: str, *args: str) -> dict:
    """Run ``script`` in a child that imports the library, then becomes ``nobody``.

    The interpreter lives under /root, which ``nobody`` may not read, so the child
    drops its privileges only after importing everything it needs. It prints one
    JSON object on its last line.
    """
    prelude = (
        "import json, os, sys, traceback\n"
        "from daemon_controller import Daemon, DaemonError, StartError, StopError\n"
        "# What the library imports lazily, while the interpreter's files are readable:\n"
        "import asyncio, concurrent.futures, hashlib, http.client, psutil, tenacity\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- PID reuse -------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["is_running", "read_pid", "stop", "connect"])
def test_reused_pid_is_stale_removed_and_never_signalled(echo, test_id, action):
    # gem: trusts the number: running? is true, stop SIGTERMs the stranger, connect raises
    # AlreadyStarted instead of starting the daemon.
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
        if action != "connect":
            assert not echo.pid_file.exists()  # the stale file is removed
            assert_not_signalled(stranger)
            return
        sock = daemon.connect(lambda: socket.create_connection(("127.0.0.1", echo.port), timeout=5))
        try:
            with sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
            pid = pid_in_file(echo.pid_file)
            assert pid != stranger.pid
            assert "echo_server" in " ".join(psutil.Process(pid).cmdline())
        finally:
            daemon.stop()
        assert_not_signalled(stranger)
    finally:
        stop_process(stranger)


# -- hostile PID files -------------------------------------------------------------------


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


# -- the lock file and running()'s sidecar files ----------------------------------------------


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


# -- other users, unwritable directories (run as nobody) -------------------------------------

_UNWRITABLE = """
which, writable, locked, test_id = sys.argv[1:5]
def path(kind, ext):
    return os.path.join(locked if kind == which else writable, kind + ext)
ready = os.path.join(writable, "ready")
daemon = (
    Daemon("unwritable")
    .start_with(["sh", "-c", 'touch "$0"; exec sleep 60', ready])
    .foreground()
    .ping_command(["test", "-e", ready])
    .pid(path("pid", ".pid")).log(path("log", ".log")).lock(path("lock", ".lock"))
    .start_timeout(20)
    .env({"DC_TEST_ID": test_id})
)
out = {}
for action in ("start", "stop"):
    try:
        getattr(daemon, action)()
        out[action] = ["ok", "", None]
    except BaseException as err:
        out[action] = [type(err).__name__, str(err), isinstance(err, DaemonError)]
print(json.dumps(out))
"""


@needs_root
@pytest.mark.parametrize("which", ["lock", "pid", "log"])
def test_unwritable_directory_is_a_daemon_error_naming_the_path(test_id, which):
    # gem: a raw Errno::EACCES from File.open.
    base = shared_dir()
    try:
        writable = base / "writable"
        writable.mkdir()
        writable.chmod(0o777)
        locked = base / "locked"  # root's, mode 0755: nobody may not create files in it
        locked.mkdir(mode=0o755)
        out = run_as_nobody(_UNWRITABLE, which, str(writable), str(locked), test_id)
        _kind, message, is_daemon_error = out["start"]
        assert is_daemon_error, out  # not a raw PermissionError
        assert str(locked) in message
        if which == "lock":
            _kind, message, is_daemon_error = out["stop"]
            assert is_daemon_error, out
            assert str(locked) in message
        else:
            assert out["stop"] == ["ok", "", None], out
        # Whatever the aborted start spawned is gone (foreground programs run as our child).
        assert marked(test_id) == []
    finally:
        kill_marked(test_id)
        shutil.rmtree(base)


_OTHER_USER = """
pid_file = sys.argv[1]
daemon = Daemon("other user").pid(pid_file).lock(pid_file + ".lock").stop_timeout(5)
out = {"running": daemon.is_running(), "pid": daemon.read_pid()}
try:
    daemon.stop()
    out["stop"] = ["ok", ""]
except BaseException as err:
    out["stop"] = [type(err).__name__, str(err)]
out["running after"] = daemon.is_running()
print(json.dumps(out))
"""


@needs_root
def test_live_process_of_another_user_is_running_and_stop_says_why(test_id):
    # gem: stop lets a raw Errno::EPERM escape.
    base = shared_dir()
    root_sleep = sleeper(test_id)
    try:
        pid_file = base / "d.pid"
        pid_file.write_text(f"{root_sleep.pid}\n")
        pid_file.chmod(0o644)
        out = run_as_nobody(_OTHER_USER, str(pid_file))
        assert out["running"] is True
        assert out["pid"] == root_sleep.pid
        kind, message = out["stop"]
        assert kind == "StopError", out
        assert "permission" in message.lower()
        assert "another user" in message
        assert str(root_sleep.pid) in message
        assert out["running after"] is True
        assert pid_file.exists()
        assert_not_signalled(root_sleep)
    finally:
        stop_process(root_sleep)
        shutil.rmtree(base)


# -- nothing orphaned ------------------------------------------------------------------------


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


_INTERRUPTED = """
import json, sys
from daemon_controller import Daemon
cfg = json.loads(sys.argv[1])
daemon = (
    Daemon("interrupted")
    .start_with(cfg["command"])
    .ping_tcp("127.0.0.1", cfg["port"])
    .pid(cfg["pid"])
    .log(cfg["log"])
    .start_timeout(60)
    .log_activity_timeout(60)
    .start_abort_timeout(3)
    .env({"DC_TEST_ID": cfg["id"]})
)
try:
    daemon.start()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(42)
print("started", flush=True)
"""


def test_keyboard_interrupt_during_start_leaves_nothing_behind(echo, test_id):
    # gem: the interrupt propagates and the double-forked daemon keeps running.
    base = echo("--wait-before-pid", "60")
    cfg = {
        "command": list(base.config.start_command),
        "port": echo.port,
        "pid": str(echo.pid_file),
        "log": str(echo.log_file),
        "id": test_id,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, json.dumps(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(
            lambda: echo.log_file.exists() and "daemonized" in echo.log_file.read_text(), 30
        )
        daemons = marked(test_id)
        assert daemons  # the daemon is up, in a session of its own, waiting to write its PID
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 42, (out, err)
        assert marked(test_id) == []
        assert all(gone(pid) for pid in daemons)
        assert not echo.pid_file.exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
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


# -- fast failure detection ------------------------------------------------------------------


def test_daemon_dying_before_its_pid_file_is_noticed_at_once(echo):
    # gem: waits for log_file_activity_timeout (10 s by default; 30 s here) before failing.
    daemon = echo("--exit-after-daemonize", "1").log_activity_timeout(30).start_timeout(60)
    started = time.monotonic()
    with pytest.raises(StartError) as info:
        daemon.start()
    failed_at = time.time()
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, StartTimeout)
    assert "exiting after daemonizing" in info.value.log
    assert elapsed < 5
    # The daemon's last act was its log line; the library noticed this long after:
    since_exit = failed_at - echo.log_file.stat().st_mtime
    print(
        f"\nfast failure: start() raised after {elapsed:.3f} s, "
        f"{since_exit * 1000:.0f} ms after the daemon's last log line"
    )
    assert echo.marked() == []


# -- foreground programs ---------------------------------------------------------------------


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
    pid_file = daemon.resolved().config.pid_file
    assert pid_file is not None
    try:
        if when == "before the start":
            pid_file.symlink_to(precious)
        else:
            # The program plants the link while starting up: the library must not
            # take it for the program's own PID file, nor write through it.
            argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
            script = f'ln -s "$0" "$1" && exec {shlex.join(argv)}'
            daemon = daemon.start_with(["sh", "-c", script, str(precious), str(pid_file)])
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


def test_daemonize_for_me_writes_the_pid_file_only_once_the_program_is_up(echo, tmp_path):
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
        assert "echo_server" in " ".join(psutil.Process(pid).cmdline())
        assert daemon.read_pid() == pid
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))
    assert not echo.pid_file.exists()


# -- a stranger answering the ping -----------------------------------------------------------


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


_WRITE_PID_AND_DIE = """
import os, sys
if os.fork() == 0:
    os.setsid()
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\\n")
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


# -- Windows -----------------------------------------------------------------------------------

#: Every function the Windows module defines, found when the tests are collected.
_WINDOWS_FUNCTIONS = sorted(
    name
    for name, obj in inspect.getmembers(_windows, inspect.isfunction)
    if obj.__module__ == _windows.__name__ and not name.startswith("_")
)


def _windows_arguments(function, pid: int, fd: int) -> dict:
    """Harmless arguments by parameter name; a real process and file if it ever acted."""
    by_name = {
        "pid": pid,
        "signum": int(signal.SIGTERM),
        "value": "CTRL_BREAK_EVENT",
        "timeout": 0.1,
        "fd": fd,
        "handle": 0,
        "shared": True,
        "blocking": False,
        "group": False,
    }
    by_type = {"int": pid, "str": "nobody", "float": 0.1, "bool": False}
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in by_name:
            arguments[name] = by_name[name]
        elif parameter.default is not inspect.Parameter.empty:
            continue
        elif str(parameter.annotation) in by_type:  # a str: the module's annotations are lazy
            arguments[name] = by_type[str(parameter.annotation)]
        else:
            pytest.fail(f"no test argument for parameter {name!r} of {function.__name__}")
    return arguments


def test_windows_module_defines_every_platform_function():
    exported = {n for n in _platform.__all__ if inspect.isfunction(getattr(_platform, n))}
    assert exported
    assert exported <= set(_WINDOWS_FUNCTIONS)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the Windows module on POSIX")
@pytest.mark.parametrize("name", _WINDOWS_FUNCTIONS)
def test_no_windows_function_is_reachable_on_posix(name):
    # gem: n/a (POSIX only); a Windows code path running here could signal a real
    # process. The implementation is chosen once, in _platform/__init__, and
    # no other module imports _windows (tests/test_architecture.py).
    exported = getattr(_platform, name, None)
    assert exported is None or exported is not getattr(_windows, name)
    if exported is not None:
        assert exported.__module__ == "daemon_controller._platform._posix"
