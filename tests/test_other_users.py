"""Other users: daemons run as another user, and the library run as ``nobody``.

* ``.user()`` runs the program as that user (root only); an unknown user is a
  ``StartError`` before anything runs;
* as ``nobody``: a directory it may not write is a ``DaemonError`` naming the
  path (not a raw ``PermissionError``), a live process of another user is
  running but ``stop()`` says why it cannot stop it, and a PID file it may
  not read is "not running".

Whatever another user must read or write lives in the ``shared_tmp`` and
``world_readable_echo_server`` fixtures' directories: the checkout and
pytest's ``tmp_path`` may be private to us.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys

import psutil
import pytest
from helpers import (
    MARKER,
    assert_not_signalled,
    free_port,
    gone,
    kill_marked,
    kill_quietly,
    marked,
    sleeper,
    stop_process,
    wait_until,
)

from daemon_controller import Daemon, StartError

needs_root = pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0, reason="needs root to act as another user"
)


# -- daemons run as another user --------------------------------------------------------


@needs_root
def test_user_runs_the_program_as_that_user(
    tmp_path, test_id, shared_tmp, world_readable_echo_server
):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user named nobody")
    # Our venv's interpreter may live under /root, out of nobody's reach.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for user nobody")
    port = free_port()
    marker = shared_tmp / "whoami"
    daemon = (
        Daemon("as-nobody")
        .start_with(
            [
                python,
                str(world_readable_echo_server),
                "--foreground",
                "--port",
                str(port),
                "--write-file",
                f"{marker}={{env:HOME}}|{{env:USER}}",
            ]
        )
        .foreground()
        .user("nobody")
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "n.pid")
        .log(tmp_path / "n.log")
        .env({MARKER: test_id})
    )
    daemon.start()
    pid = daemon.read_pid()
    try:
        assert pid is not None
        process = psutil.Process(pid)
        assert process.uids().real == nobody.pw_uid
        assert "echo_server" in " ".join(process.cmdline())  # no wrapper in between
        assert marker.read_text() == f"{nobody.pw_dir}|nobody"
        daemon.stop()
        assert wait_until(lambda: gone(pid))
    finally:
        kill_quietly(pid)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX users")
def test_unknown_user_is_a_start_error_before_anything_runs(tmp_path):
    daemon = (
        Daemon("ghost")
        .start_with(["true"])
        .foreground()
        .user("no-such-user-here")
        .ping_tcp("127.0.0.1", free_port())
        .pid(tmp_path / "g.pid")
        .log(tmp_path / "g.log")
    )
    with pytest.raises(StartError, match="no-such-user-here"):
        daemon.start()


# -- the library run as nobody -------------------------------------------------------------


_UNWRITABLE = """
from daemon_controller import DaemonError
which, writable, locked, test_id = args[:4]
def path(kind, ext):
    return os.path.join(locked if kind == which else writable, kind + ext)
ready = os.path.join(writable, "ready")
daemon = (
    daemon.start_with(["sh", "-c", 'touch "$0"; exec sleep 60', ready])
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
tell_parent(out)
"""


@needs_root
@pytest.mark.parametrize("which", ["lock", "pid", "log"])
def test_unwritable_directory_is_a_daemon_error_naming_the_path(test_id, child, shared_tmp, which):
    # gem: a raw Errno::EACCES from File.open.
    writable = shared_tmp / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    locked = shared_tmp / "locked"  # root's, mode 0755: nobody may not create files in it
    locked.mkdir(mode=0o755)
    try:
        out = child(
            _UNWRITABLE,
            which,
            str(writable),
            str(locked),
            test_id,
            daemon=Daemon("unwritable"),
            as_nobody=True,
            cwd=shared_tmp,
        ).finish(timeout=90)
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


_OTHER_USER = """
daemon = daemon.stop_timeout(5)
out = {"running": daemon.is_running(), "pid": daemon.read_pid()}
try:
    daemon.stop()
    out["stop"] = ["ok", ""]
except BaseException as err:
    out["stop"] = [type(err).__name__, str(err)]
out["running after"] = daemon.is_running()
tell_parent(out)
"""


@needs_root
def test_live_process_of_another_user_is_running_and_stop_says_why(test_id, child, shared_tmp):
    # gem: stop lets a raw Errno::EPERM escape.
    root_sleep = sleeper(test_id)
    try:
        pid_file = shared_tmp / "d.pid"
        pid_file.write_text(f"{root_sleep.pid}\n")
        pid_file.chmod(0o644)
        daemon = Daemon("other user").pid(pid_file).lock(f"{pid_file}.lock")
        out = child(_OTHER_USER, daemon=daemon, as_nobody=True, cwd=shared_tmp).finish(timeout=90)
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


_UNREADABLE = """
try:
    open(args[0]).close()
except PermissionError:
    pass
else:
    sys.exit("the PID file is readable after dropping privileges")
tell_parent([daemon.is_running(), daemon.read_pid()])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_pid_file_is_not_running(test_id, child, shared_tmp):
    # As root, the check runs as "nobody": root would read a mode 000 file.
    proc = sleeper(test_id, 30)
    try:
        pid_file = shared_tmp / "d.pid"
        pid_file.write_text(f"{proc.pid}\n")
        pid_file.chmod(0)
        daemon = Daemon("unreadable").pid(pid_file)
        if os.geteuid() == 0:
            checker = child(
                _UNREADABLE, str(pid_file), daemon=daemon, as_nobody=True, cwd=shared_tmp
            )
            assert checker.finish() == [False, None]
        else:
            assert daemon.is_running() is False
            assert daemon.read_pid() is None
        assert pid_file.exists()
        assert proc.poll() is None
    finally:
        stop_process(proc)
