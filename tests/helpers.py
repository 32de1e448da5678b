"""Small helpers shared by the test modules (imported as ``helpers``)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for PID 1 counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


#: The environment variable carrying a test's id into every process it starts.
MARKER = "DC_TEST_ID"


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment has ``DC_TEST_ID=marker``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def marked(marker: str) -> list[int]:
    """PIDs of :func:`marked_processes`."""
    return [proc.pid for proc in marked_processes(marker)]


def time_start_stop(
    label: str,
    daemon: Any,
    track: Callable[[int | None], Any],
    kill: Callable[[int | None], object],
    runs: int = 5,
) -> tuple[list[float], list[float]]:
    """Start and stop ``daemon`` ``runs`` times; print and return the seconds each took.

    ``track`` registers each PID with the test's safety net; ``kill`` is called
    on every PID at the end, whatever happened.
    """
    starts: list[float] = []
    stops: list[float] = []
    pids: list[int | None] = []
    try:
        for _ in range(runs):
            began = time.perf_counter()
            daemon.start()
            starts.append(time.perf_counter() - began)
            pids.append(track(daemon.read_pid()))
            began = time.perf_counter()
            daemon.stop()
            stops.append(time.perf_counter() - began)
    finally:
        daemon.stop()
        for pid in pids:
            kill(pid)
    print(
        f"{label}: start median {statistics.median(starts) * 1000:.1f} ms, "
        f"stop median {statistics.median(stops) * 1000:.1f} ms "
        f"(starts {[round(s * 1000, 1) for s in starts]}, "
        f"stops {[round(s * 1000, 1) for s in stops]})"
    )
    return starts, stops


_LOCK_PROBE = r"""
import fcntl, os, sys
for line in sys.stdin:
    try:
        fd = os.open(line.rstrip("\n"), os.O_RDWR)
    except FileNotFoundError:
        print("missing", flush=True)
        continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held", flush=True)
    else:
        print("free", flush=True)
    finally:
        os.close(fd)
"""


class LockProbe:
    """A separate process that says whether anybody holds a lock file.

    It tries to take the file exclusively, without waiting, on a descriptor
    of its own: from another process, so neither this process's open lock
    files nor its threads can fool it. One process answers every question
    (starting one per check would cost tens of milliseconds each).
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCK_PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def state(self, path: os.PathLike[str] | str) -> str:
        """``"free"``, ``"held"`` or ``"missing"``."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{os.fspath(path)}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def held(self, *paths: os.PathLike[str] | str) -> list[str]:
        """Those of ``paths`` that somebody holds."""
        return [os.fspath(path) for path in paths if self.state(path) == "held"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
