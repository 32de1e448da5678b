"""Root controlling a daemon of another user, and files in directories others can write.

Each test plays the other user's part for real (a throwaway user, removed with
its processes afterwards) and checks what root does:

* the log of a foreground daemon is never opened through a symlink (to a file
  or into a directory only root may use), as a FIFO, or as another name of
  root's file, not even through a directory swapped for a symlink;
* a PID file the other user can write does not decide whom root signals, and
  a foreground daemon's process group is signalled only when it is the
  session the library made for it;
* lock and side files are 0600, refused when another user owns them, and a
  FIFO or a symlink to ``/dev/zero`` planted as a side file neither hangs nor
  exhausts memory;
* ``.user()`` gives the daemon that user's login environment.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from adversary import (
    SYSTEM_PYTHON,
    finish,
    is_locked,
    kill_pids,
    needs_root,
    owned_dir,
    posix_only,
    shared_fixture,
    stubborn,
    user_fixture,
    wait_ready,
)
from helpers import MARKER, gone, marked

from daemon_controller import Daemon, DaemonError, StartError, StopError
from daemon_controller._files import UnsafeFileError, read_file

SECRET = "root's secret\n"


@pytest.fixture
def user():
    yield from user_fixture()


@pytest.fixture
def shared():
    yield from shared_fixture()


def sleeper_daemon(name: str, base: Path, test_id: str) -> Daemon:
    """A foreground daemon that only sleeps; ready once it runs."""
    return (
        Daemon(name)
        .start_with(["sleep", "120"])
        .foreground()
        .ping(lambda: bool(marked(test_id)))
        .pid(base / "d.pid")
        .log(base / "d.log")
        .stop_timeout(2)
        .env({MARKER: test_id})
    )


def root_only(base: Path) -> Path:
    """A directory only root may use, holding root's secret file."""
    private = base / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text(SECRET)
    (private / "secret").chmod(0o600)
    return private


def replace_as(path: Path, text: str, uid: int, gid: int) -> None:
    """What the other user can do in a directory of theirs: put a new file in its place."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.chown(tmp, uid, gid)
    tmp.replace(path)


# -- the log of a foreground daemon ---------------------------------------------------------


@needs_root
@pytest.mark.parametrize(
    "attack", ["symlink to a file", "symlink into a directory", "fifo", "hard link"]
)
def test_log_planted_by_the_daemons_user_is_refused(user, shared, test_id, attack):
    private = root_only(shared)
    theirs = owned_dir(shared, "theirs", user.pw_uid, user.pw_gid)
    log = theirs / "d.log"
    if attack == "symlink to a file":
        log.symlink_to(private / "secret")
    elif attack == "symlink into a directory":
        log.symlink_to(private / "created-by-root.log")
    elif attack == "fifo":
        os.mkfifo(log)
    else:
        os.link(private / "secret", log)  # what protected_hardlinks would stop the user doing
    os.lchown(log, user.pw_uid, user.pw_gid)
    daemon = sleeper_daemon("log", theirs, test_id).user(user.pw_name).log(log)
    began = time.monotonic()
    with pytest.raises(DaemonError) as info:
        daemon.start()
    assert time.monotonic() - began < 5  # a FIFO does not block the start
    assert str(log) in str(info.value)
    assert (private / "secret").read_text() == SECRET
    assert sorted(p.name for p in private.iterdir()) == ["secret"]
    assert marked(test_id) == []  # nothing was spawned


@needs_root
def test_log_directory_swapped_for_a_symlink_is_not_followed_as_root(user, shared, test_id):
    # The user owns the directory holding the log's directory: it can put a
    # symlink to root's private directory in the log directory's place.
    private = root_only(shared)
    home = owned_dir(shared, "home", user.pw_uid, user.pw_gid)
    (home / "logs").symlink_to(private)
    os.lchown(home / "logs", user.pw_uid, user.pw_gid)
    daemon = sleeper_daemon("swap", home, test_id).user(user.pw_name).log(home / "logs" / "secret")
    with pytest.raises(DaemonError, match="log file"):
        daemon.start()
    assert (private / "secret").read_text() == SECRET
    assert marked(test_id) == []


@needs_root
def test_log_of_the_daemons_user_is_created_as_that_user(user, shared, test_id):
    theirs = owned_dir(shared, "theirs", user.pw_uid, user.pw_gid)
    daemon = sleeper_daemon("own log", theirs, test_id).user(user.pw_name)
    daemon.start()
    try:
        info = (theirs / "d.log").lstat()
        assert stat.S_ISREG(info.st_mode)
        assert info.st_uid == user.pw_uid
        assert psutil.Process(daemon.read_pid()).uids().real == user.pw_uid
    finally:
        daemon.stop()


# -- whom a PID file may name ---------------------------------------------------------------


@needs_root
def test_pid_file_rewritten_by_the_daemons_user_cannot_name_a_root_process(user, shared, test_id):
    theirs = owned_dir(shared, "theirs", user.pw_uid, user.pw_gid)
    daemon = sleeper_daemon("rewritten", theirs, test_id).user(user.pw_name)
    victim = stubborn()
    try:
        wait_ready(victim)
        daemon.start()
        real = daemon.read_pid()
        assert real is not None
        replace_as(theirs / "d.pid", f"{victim.pid}\n", user.pw_uid, user.pw_gid)
        assert daemon.is_running() is False
        with pytest.raises(StopError) as info:
            daemon.stop()
        message = str(info.value)
        assert str(victim.pid) in message
        assert "not trusted" in message
        assert user.pw_name in message
        assert victim.poll() is None  # never signalled (it ignores SIGTERM, not SIGKILL)
        assert (theirs / "d.pid").exists()  # the evidence is kept
        assert not gone(real)  # the library refused to act: the daemon runs on
    finally:
        finish(victim)


@needs_root
def test_pid_file_written_during_the_start_cannot_name_a_root_process(user, shared, test_id):
    # The daemon's user writes the PID file as the daemon goes into the
    # background: what it names must not become "the daemon" the start records.
    theirs = owned_dir(shared, "theirs", user.pw_uid, user.pw_gid)
    flag = theirs / "up"
    victim = stubborn()
    try:
        wait_ready(victim)
        daemon = (
            Daemon("lying")
            .start_with(
                f"echo {victim.pid} > {theirs / 'd.pid'}; touch {flag}; "
                "sleep 60 >/dev/null 2>&1 & exit 0"
            )
            .user(user.pw_name)
            .ping(flag.exists)
            .pid(theirs / "d.pid")
            .log(theirs / "d.log")
            .stop_timeout(1)
            .start_abort_timeout(1)
            .env({MARKER: test_id})
        )
        with pytest.raises(StartError, match="not trusted"):
            daemon.start()
        with pytest.raises(StopError, match="not trusted"):
            daemon.stop()
        assert victim.poll() is None  # never signalled
        assert marked(test_id) == []  # what the start did spawn was stopped
    finally:
        finish(victim)


@needs_root
def test_pid_file_planted_in_a_shared_directory_cannot_name_a_root_process(
    user, shared, test_id, port
):
    sticky = shared / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    victim = stubborn()
    try:
        wait_ready(victim)
        pid_file = sticky / "d.pid"
        pid_file.write_text(f"{victim.pid}\n")
        os.chown(pid_file, user.pw_uid, user.pw_gid)  # the other user made it first
        daemon = (
            Daemon("planted")
            .start_with(["sleep", "60"])
            .foreground()
            .ping_tcp("127.0.0.1", port)
            .pid(pid_file)
            .log(shared / "d.log")
            .stop_timeout(1)
            .env({MARKER: test_id})
        )
        assert daemon.is_running() is False
        assert pid_file.exists()
        with pytest.raises(StopError, match="not trusted"):
            daemon.stop()
        with pytest.raises(StartError, match="not trusted"):
            daemon.start()
        assert victim.poll() is None
        assert marked(test_id) == []
    finally:
        finish(victim)


@posix_only
def test_a_process_group_is_signalled_only_when_it_is_the_daemons_own_session(tmp_path, test_id):
    daemon = sleeper_daemon("group", tmp_path, test_id)
    # A stranger leading a session of its own, with a child in its group.
    stranger = subprocess.Popen(
        ["sh", "-c", "sleep 120 & echo $!; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    child = None
    try:
        assert stranger.stdout is not None
        child = int(stranger.stdout.readline())
        daemon.start()
        (tmp_path / "d.pid").write_text(f"{stranger.pid}\n")  # now names the stranger
        daemon.stop()
        stranger.wait(timeout=10)  # the PID file named it: it was asked to stop
        assert not gone(child)  # but not its whole group
    finally:
        finish(stranger)
        if child is not None:
            kill_pids([child])
        kill_pids(marked(test_id))


# -- lock and side files --------------------------------------------------------------------


@posix_only
def test_lock_and_side_files_are_private(echo):
    daemon = echo()
    files = daemon._target().files
    modes = {}

    def look(*paths: Path) -> None:
        modes.update({path.name: oct(path.stat().st_mode & 0o777) for path in paths})

    failing = echo("--exit-before-daemonize", "3")
    with pytest.raises(StartError), failing.running():
        pass
    look(files.lock, files.users, files.failure)
    with daemon.running():
        look(files.owner, files.record)
    assert set(modes.values()) == {"0o600"}, modes
    assert len(modes) == 5


@posix_only
def test_a_lock_file_left_world_readable_is_made_private(echo):
    daemon = echo()
    lock = daemon._target().files.lock
    lock.touch(mode=0o644)
    lock.chmod(0o644)  # as an older version made it: anybody could flock it
    assert daemon.is_running() is False
    assert lock.stat().st_mode & 0o777 == 0o600


_LOCK_IT = """
import fcntl, os, sys, time
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[3]))
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except PermissionError:
    print("refused", flush=True)
    sys.exit(0)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@needs_root
@pytest.mark.parametrize("which", ["lock", "users"])
def test_another_user_cannot_hold_our_locks(user, shared, test_id, which):
    daemon = sleeper_daemon("held", shared, test_id)
    with daemon.running():
        files = daemon._target().files
    path = files.lock if which == "lock" else files.users
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", _LOCK_IT, str(path), str(user.pw_gid), str(user.pw_uid)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"refused"
        assert not is_locked(path)
    finally:
        finish(holder)


@needs_root
@pytest.mark.parametrize("which", ["lock", "users", "failure", "started"])
def test_side_file_of_another_user_is_refused_naming_it(user, tmp_path, test_id, which):
    daemon = sleeper_daemon("foreign", tmp_path, test_id)
    files = daemon._target().files
    path = files.lock if which == "lock" else files.lock.with_name(f"{files.lock.name}.{which}")
    path.write_text("{}" if which in ("failure", "started") else "")
    os.chown(path, user.pw_uid, user.pw_gid)
    with pytest.raises(DaemonError) as info, daemon.running():
        pytest.fail("entered the block")
    assert str(path) in str(info.value)
    assert user.pw_name in str(info.value)
    assert marked(test_id) == []


@needs_root
def test_owner_record_of_another_user_does_not_make_us_stop_the_daemon(user, tmp_path, test_id):
    # The daemon was running before the block: the last block out must leave
    # it running, whatever a record another user planted says.
    daemon = sleeper_daemon("foreign owner", tmp_path, test_id)
    daemon.start()
    try:
        pid = daemon.read_pid()
        files = daemon._target().files
        owner = files.lock.with_name(f"{files.lock.name}.owner")
        owner.write_text(f"{pid}\n")
        os.chown(owner, user.pw_uid, user.pw_gid)
        with pytest.raises(OSError, match=user.pw_name), daemon.running():
            pass
        assert daemon.read_pid() == pid
    finally:
        daemon.stop()


_CONNECT = """
import json, resource, sys, socket
resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))  # a runaway read fails, not the machine
from daemon_controller import Daemon
from echo_server import echo_command
port, pid_file, log_file, test_id = sys.argv[1:5]
d = (Daemon("echo").start_with(echo_command("--port", port, "--pid-file", pid_file,
     "--log-file", log_file)).ping_tcp("127.0.0.1", int(port)).pid(pid_file).log(log_file)
     .start_timeout(15).env({"DC_TEST_ID": test_id}))
sock = d.connect(lambda: socket.create_connection(("127.0.0.1", int(port)), timeout=5))
sock.close()
with d.running():
    pass
d.stop()
print(json.dumps("ok"))
"""


@posix_only
@pytest.mark.parametrize("planted", ["fifo", "symlink to /dev/zero"])
def test_failure_record_planted_as_fifo_or_dev_zero_neither_hangs_nor_eats_memory(
    echo, test_id, planted, port
):
    daemon = echo(port=port)
    failure = daemon._target().files.failure
    if planted == "fifo":
        os.mkfifo(failure)
    else:
        failure.symlink_to("/dev/zero")
    tests = Path(__file__).parent
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CONNECT,
            str(port),
            str(echo.pid_file),
            str(echo.log_file),
            test_id,
        ],
        cwd=tests,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), *sys.path])},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == "ok"


# -- the environment of a daemon run as another user ----------------------------------------


@needs_root
def test_user_gets_their_own_login_environment(user, shared, test_id, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/0")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/ssh-root/agent.1")
    monkeypatch.setenv("MAIL", "/var/mail/root")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/0/bus")
    monkeypatch.setenv("LANG", "C.UTF-8")
    daemon = sleeper_daemon("env", shared, test_id).user(user.pw_name).env({"FROM_ENV": "yes"})
    daemon.start()
    try:
        env = psutil.Process(daemon.read_pid()).environ()
    finally:
        daemon.stop()
    assert env["HOME"] == user.pw_dir
    assert env["USER"] == env["LOGNAME"] == user.pw_name
    assert env["SHELL"] == user.pw_shell
    for name in ("XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "MAIL", "DBUS_SESSION_BUS_ADDRESS"):
        assert name not in env
    assert env["FROM_ENV"] == "yes"
    assert env[MARKER] == test_id
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == os.environ["PATH"]


@posix_only
def test_a_refused_side_file_error_survives_pickling(tmp_path):
    fifo = tmp_path / "planted"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError) as info:
        read_file(fifo, 10)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) == f"{str(fifo)!r} is a FIFO, not a regular file"
    assert isinstance(copy, OSError)
