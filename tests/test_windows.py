"""Windows-only behaviour: detached start, CTRL_BREAK_EVENT stop, shared locks, no notify().

These run on a Windows machine (see .github/workflows/ci.yml); on POSIX they skip.
"""

from __future__ import annotations

import socket
import sys
import threading

import pytest
from helpers import free_port

from daemon_controller import Daemon, _lock

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="Windows machine needed")


def test_foreground_program_starts_and_stops(tmp_path):  # pragma: win32 cover
    port = free_port()
    web = (
        Daemon("web")
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .foreground()
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "web.pid")
        .log(tmp_path / "web.log")
        .stop_timeout(10)
    )
    web.start()
    try:
        assert web.is_running()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        web.stop()
    assert not web.is_running()


def test_notify_is_refused_at_build_time():  # pragma: win32 cover
    # Windows has no unix datagram sockets for the notify protocol.
    with pytest.raises(NotImplementedError, match="unix datagram sockets"):
        Daemon("x").notify()
    assert Daemon("x").notify(False).config.notify is False


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):  # pragma: win32 cover
    path = tmp_path / "x.lock"
    first = _lock.acquire(path, "x", shared=True)
    second = _lock.acquire(path, "x", shared=True)
    assert first is not None
    assert second is not None
    assert _lock.acquire(path, "x", shared=False, blocking=False) is None
    first.release()
    second.release()
    exclusive = _lock.acquire(path, "x", shared=False, blocking=False)
    assert exclusive is not None
    exclusive.release()


def test_threads_are_serialised_by_the_lock(tmp_path):  # pragma: win32 cover
    path = tmp_path / "x.lock"
    inside = []
    overlap = []

    def worker():
        with _lock.locked(path, "x", shared=False):
            inside.append(1)
            overlap.append(len(inside))
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlap) == 1
