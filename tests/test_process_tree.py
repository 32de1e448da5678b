"""Stop stops the tree: what the daemon started goes with it.

A daemon that went into the background starts a worker that holds the port.
After the main process exits, whatever the start created and still runs (the
start's environment marker finds it) gets the stop signal, then SIGKILL at
``stop_timeout``; ``stop()`` returns once all of it is gone, so the next
``start()`` finds the port free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from adversary import posix_only, script
from helpers import MARKER, gone, marked, wait_until

from daemon_controller import Daemon, StartError, StopTimeout

_FORKING = """
import os, signal, socket, sys, time
port, pid_file, worker_file, worker_mode = sys.argv[1:5]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
listener = socket.create_server(("127.0.0.1", int(port)))
worker = os.fork()
if worker == 0:  # the worker serves; the main process only supervises
    if worker_mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(worker_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        conn, _ = listener.accept()
        conn.close()
listener.close()


def leave(signum, frame):  # exits without waiting for the worker
    os.unlink(pid_file)
    os._exit(0)


signal.signal(signal.SIGTERM, leave)
with open(pid_file + ".tmp", "w") as f:
    f.write(f"{os.getpid()}\\n")
os.rename(pid_file + ".tmp", pid_file)
while True:
    time.sleep(1)
"""


def forking_daemon(tmp_path, test_id, port, worker_mode):
    program = script(tmp_path, "forking.py", _FORKING)
    pid_file, worker_file = tmp_path / "d.pid", tmp_path / "worker"
    return (
        Daemon("forking")
        .start_with(
            [sys.executable, str(program), str(port), str(pid_file), str(worker_file), worker_mode]
        )
        .ping_tcp("127.0.0.1", port)
        .pid(pid_file)
        .log(tmp_path / "d.log")
        .stop_timeout(1)
        .env({MARKER: test_id})
    ), worker_file


@posix_only
def test_a_worker_ignoring_sigterm_is_killed_at_stop_timeout(tmp_path, test_id, port):
    daemon, worker_file = forking_daemon(tmp_path, test_id, port, "stubborn")
    try:
        daemon.start()
        assert wait_until(lambda: worker_file.exists() and worker_file.read_text().strip())
        worker = int(worker_file.read_text())
        began = time.monotonic()
        with pytest.raises(StopTimeout) as info:
            daemon.stop()
        took = time.monotonic() - began
        assert str(worker) in str(info.value)
        assert 1.0 <= took < 1.0 + 3.0  # SIGKILL at stop_timeout, not earlier
        assert gone(worker)
        assert marked(test_id) == []
        daemon.start()  # the port is free again
        with pytest.raises(StopTimeout):
            daemon.stop()
    finally:
        for pid in marked(test_id):
            os.kill(pid, signal.SIGKILL)


@posix_only
def test_a_worker_obeying_sigterm_is_stopped_with_the_daemon(tmp_path, test_id, port):
    daemon, worker_file = forking_daemon(tmp_path, test_id, port, "obedient")
    try:
        daemon.start()
        assert wait_until(lambda: worker_file.exists() and worker_file.read_text().strip())
        worker = int(worker_file.read_text())
        began = time.monotonic()
        daemon.stop()  # no StopTimeout: everything exited when asked
        assert time.monotonic() - began < 1.0
        assert gone(worker)
        assert marked(test_id) == []
    finally:
        for pid in marked(test_id):
            os.kill(pid, signal.SIGKILL)


# -- a PID handed out again -------------------------------------------------------------------

_LAST_PID = "/proc/sys/kernel/ns_last_pid"

_ON_A_REUSED_PID = """
import os, sys, time
bystander, flags = int(sys.argv[1]), sys.argv[2]

def flag(name, text=""):
    with open(os.path.join(flags, name), "w") as f:
        f.write(text)

flag("spawned")  # the bystander still runs: it was there when the start began
while not os.path.exists(os.path.join(flags, "reaped")):
    time.sleep(0.005)
for _ in range(50):  # the kernel hands out ns_last_pid + 1 next (somebody may come first)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(bystander - 1))
    child = os.fork()
    if child == 0:
        if os.getpid() != bystander:
            os._exit(0)
        os.setsid()
        flag("daemon", str(os.getpid()))
        while True:  # no PID file, no port: the start runs out of time and is aborted
            time.sleep(0.1)
    if child == bystander:
        break
    os.waitpid(child, 0)
"""


def _pid_ahead(distance: int) -> subprocess.Popen[bytes]:
    """A process whose PID lies ``distance`` ahead of the kernel's PID counter.

    The counter is then put back, so the PIDs handed out next come before
    the bystander's: the kernel reaches its PID again only once the counter
    has moved on that far, as on a busy machine after the counter wrapped.
    """
    counter = int(Path(_LAST_PID).read_text())
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    target = counter + distance
    if target >= pid_max:
        target = target - pid_max + 301  # PIDs wrap to 300
    for _ in range(50):
        Path(_LAST_PID).write_text(str(target - 1))
        proc = subprocess.Popen(["sleep", "120"])
        Path(_LAST_PID).write_text(str(counter))
        if proc.pid == target:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip("other processes kept taking the PID chosen for the bystander")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="placing a process on a chosen PID takes Linux's ns_last_pid, as root",
)
def test_a_daemon_on_a_pid_that_existed_before_the_start_is_still_aborted(tmp_path, test_id, port):
    # The scan for what a start created skips the PIDs that existed before
    # it. Here the bystander exits, and the kernel's PID counter moves on to
    # its PID (as if 5,000 processes had been created meanwhile) and hands it
    # to the start's daemon.
    bystander = _pid_ahead(5000)
    program = script(tmp_path, "reused.py", _ON_A_REUSED_PID)
    flags = tmp_path / "flags"
    flags.mkdir()
    daemon = (
        Daemon("reused")
        .start_with([sys.executable, str(program), str(bystander.pid), str(flags)])
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .start_timeout(3)
        .log_activity_timeout(30)
        .env({MARKER: test_id})
    )
    errors: list[BaseException] = []

    def start() -> None:
        try:
            daemon.start()
        except BaseException as err:  # handed to the test thread
            errors.append(err)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert wait_until((flags / "spawned").exists)
        bystander.kill()
        bystander.wait()  # reaped: its PID is free
        (flags / "reaped").touch()
        starter.join(timeout=30)
        assert not starter.is_alive()
        daemon_flag = flags / "daemon"
        if not daemon_flag.exists():
            pytest.skip("another process took the freed PID first")
        assert int(daemon_flag.read_text()) == bystander.pid
        assert len(errors) == 1
        assert isinstance(errors[0], StartError), errors
        assert marked(test_id) == [], "the daemon on the reused PID was left running"
    finally:
        (flags / "reaped").touch()
        starter.join(timeout=30)
        bystander.kill()
        bystander.wait()
        for pid in marked(test_id):
            os.kill(pid, signal.SIGKILL)


# -- a main thread that exits first ----------------------------------------------------------

_MAIN_THREAD_EXITS = """
import ctypes, os, signal, socket, sys, threading, time
port, pid_file = int(sys.argv[1]), sys.argv[2]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
listener = socket.create_server(("127.0.0.1", port))

def serve():
    while True:
        conn, _ = listener.accept()
        conn.close()

threading.Thread(target=serve).start()
with open(pid_file + ".tmp", "w") as f:
    f.write(f"{os.getpid()}\\n")
os.rename(pid_file + ".tmp", pid_file)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
time.sleep(0.2)
# From here on the process reads as a zombie ("Z" in /proc/PID/stat) while
# its server thread runs and holds the port.
ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pthread_exit via glibc")
def test_a_daemon_whose_main_thread_exited_is_still_running(tmp_path, test_id, port):
    # psutil calls such a process a zombie; it is not one until no thread is left.
    program = script(tmp_path, "threads.py", _MAIN_THREAD_EXITS)
    pid_file = tmp_path / "d.pid"
    daemon = (
        Daemon("threads")
        .start_with([sys.executable, str(program), str(port), str(pid_file)])
        .ping_tcp("127.0.0.1", port)
        .pid(pid_file)
        .log(tmp_path / "d.log")
        .stop_timeout(1)
        .env({MARKER: test_id})
    )
    another_controller = (
        "import sys; from daemon_controller import Daemon\n"
        f"d = Daemon('threads').start_with('true').ping_tcp('127.0.0.1', {port})"
        f".pid({str(pid_file)!r}).log({str(tmp_path / 'd.log')!r})\n"
        "print(d.is_running())"
    )

    def controller() -> str:
        return subprocess.run(
            [sys.executable, "-c", another_controller],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()

    try:
        daemon.start()
        pid = daemon.read_pid()
        assert pid is not None
        assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        assert psutil.Process(pid).num_threads() == 2
        # A controller that never saw the daemon before (no exit handle yet):
        assert controller() == "True"
        assert pid_file.exists()  # not removed as stale
        assert daemon.is_running()
        with pytest.raises(StopTimeout):  # SIGTERM ignored: SIGKILL at stop_timeout
            daemon.stop()
        assert gone(pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        daemon.start()  # the port is free again
        with pytest.raises(StopTimeout):
            daemon.stop()
        assert marked(test_id) == []
    finally:
        for pid in marked(test_id):
            os.kill(pid, signal.SIGKILL)
