"""Helpers for the tests that attack the library: throwaway users, stubborn daemons.

Imported as ``adversary`` by ``test_privileges.py``, ``test_interrupts.py``,
``test_resource_bounds.py``, ``test_process_tree.py`` and ``test_clock_steps.py``.

Daemons run as a throwaway user cannot read our virtualenv's interpreter (it
lives under /root), so they run the system's ``/usr/bin/python3`` on scripts
written to a directory everybody may read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import gone, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

#: An interpreter every user may run (ours may sit under /root).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

needs_root = pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0, reason="needs root to create users"
)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX behaviour")


def _run(*argv: str) -> None:
    """Run a user-administration command, retrying while another holds /etc/passwd."""
    for _ in range(50):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        if "lock" not in result.stderr:
            break
        time.sleep(0.1)
    msg = f"{' '.join(argv)}: {result.stderr.strip()}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def throwaway_user():
    """A fresh user (and its group), removed with every process it still runs."""
    name = f"dc{uuid.uuid4().hex[:10]}"
    _run("useradd", "--no-create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/sh", name)
    try:
        yield pwd.getpwnam(name)
    finally:
        uid = pwd.getpwnam(name).pw_uid
        kill_user_processes(uid)
        _run("userdel", name)


def kill_user_processes(uid: int) -> None:
    procs = [
        p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid
    ]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def user_fixture() -> Iterator[pwd.struct_passwd]:
    """The body of a ``user`` fixture: a throwaway user (root only)."""
    if sys.platform == "win32" or os.geteuid() != 0:
        pytest.skip("needs root to create users")
    with throwaway_user() as entry:
        yield entry


def shared_fixture() -> Iterator[Path]:
    """The body of a ``shared`` fixture: a directory every user may enter (root's, 0755)."""
    path = Path(tempfile.mkdtemp(prefix="dc-adv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def owned_dir(parent: Path, name: str, uid: int, gid: int, mode: int = 0o755) -> Path:
    path = parent / name
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def script(directory: Path, name: str, text: str) -> Path:
    """Write a Python script that every user may read."""
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def stubborn(seconds: float = 120) -> subprocess.Popen[bytes]:
    """A process of ours that ignores SIGTERM (any other signal ends it)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"print('ready', flush=True); time.sleep({seconds})"
            ),
        ],
        stdout=subprocess.PIPE,
    )


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"


def finish(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: all(gone(pid) for pid in pids))


def is_locked(path: Path, *, shared: bool = False) -> bool:
    """Whether somebody holds a lock on ``path`` that keeps us from taking one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
