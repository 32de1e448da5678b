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
import sys
import time

import pytest
from adversary import posix_only, script
from helpers import MARKER, gone, marked, wait_until

from daemon_controller import Daemon, StopTimeout

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
