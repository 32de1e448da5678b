"""POSIX process control: signals and detached spawning."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

# The type checker reads this module for POSIX only; it still imports on
# Windows (the tests check), where nothing in it is called.
assert sys.platform != "win32" or not TYPE_CHECKING  # noqa: S101 - a type-checker directive

if sys.platform != "win32":  # this module imports on Windows too, as the tests check
    import fcntl
else:  # pragma: no cover - Windows
    fcntl = None

DEFAULT_STOP_SIGNAL = "TERM"
#: Whether a daemon can tell us it is ready through a unix datagram socket
#: (the sd_notify protocol; ``notify()``).
HAS_NOTIFY = True
#: Whether ``sh -c "exec prog"`` works here (cmd.exe has no exec).
SHELL_HAS_EXEC = True

#: Log paths that mean "our own terminal": output written there is not a file
#: we can read back, so the start command's output is not captured either.
PASSTHROUGH_LOG_PATHS = frozenset(
    {"/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2"},
)

#: The longest path a unix socket can be connected at: ``sun_path`` less its
#: terminating NUL (108 bytes on Linux, 104 on macOS and the BSDs).
UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

#: ``poll()`` takes milliseconds as a C int: a longer wait is made of several.
_MAX_POLL_MS = 2**31 - 1


def parse_signal(value: str | int) -> int:
    """Turn ``"TERM"``, ``"SIGTERM"``, ``15`` or ``signal.SIGTERM`` into a signal number.

    Raises:
        ValueError: The name or number is not a signal on this platform.
    """
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            msg = f"{value} is not a signal number on this platform"
            raise ValueError(msg) from None
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        msg = f"{value!r} is not a signal name on this platform"
        raise ValueError(msg) from None


def signal_name(signum: int) -> str:
    """Return ``"SIGXCPU"`` for ``signal.SIGXCPU``, or ``"signal N"`` if unknown."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def send_signal(pid: int, signum: int, *, group: bool = False) -> None:
    """Send ``signum`` to ``pid``, or to the process group it leads.

    Raises:
        ProcessLookupError: No such process.
        PermissionError: The process belongs to somebody we may not signal.
    """
    if pid <= 1:  # never the whole session, init, or "every process we may signal"
        msg = f"refusing to signal PID {pid}"
        raise ValueError(msg)
    if group:
        os.killpg(pid, signum)
    else:
        os.kill(pid, signum)


def leads_group(pid: int) -> bool:
    """Whether ``pid`` leads its own process group (as the daemons we detach do)."""
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def leads_session(pid: int) -> bool:
    """Whether ``pid`` leads its own session, and so its own process group."""
    try:
        return os.getsid(pid) == pid and os.getpgid(pid) == pid
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies are not).

    A process whose main thread has exited reads as a zombie while its other
    threads run: it counts as running until no thread is left (as in
    ``_process.is_zombie``, which this layer cannot import).
    """
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE or proc.num_threads() > 1:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def force_kill(pid: int, *, group: bool = False) -> None:
    """Kill ``pid`` (or its group) with SIGKILL; already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        send_signal(pid, signal.SIGKILL, group=group)


def detach_kwargs(user: str | None = None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that put the child in a session of its own.

    A new session means our terminal's Ctrl-C (SIGINT to the foreground process
    group) does not reach the daemon, and the whole group can be signalled.

    Args:
        user: Run the child as this user (with its primary group and its
            supplementary groups; its environment is :func:`user_environment`'s)
            when we are root; ignored when we already are that user.

    Raises:
        LookupError: No such user.
        PermissionError: Not root, and ``user`` is somebody else.
    """
    kwargs: dict[str, Any] = {"start_new_session": True}
    if user is None:
        return kwargs
    import grp  # noqa: PLC0415 - only for .user()
    import pwd  # noqa: PLC0415 - only for .user()

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"no user named {user!r}"
        raise LookupError(msg) from None
    if entry.pw_uid == os.geteuid():
        return kwargs
    if os.geteuid() != 0:
        msg = f"only root can run commands as {user!r}"
        raise PermissionError(msg)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=groups)
    return kwargs


def start_stamp(pid: int) -> int | None:
    """When ``pid`` started, in a form no change of the wall clock alters; ``None`` if gone.

    Linux: clock ticks after boot (field 22 of ``/proc/PID/stat``). Elsewhere:
    psutil's creation time in microseconds, which the kernel stored when the
    process was created.
    """
    if not sys.platform.startswith("linux"):
        with contextlib.suppress(psutil.Error):
            return round(psutil.Process(pid).create_time() * 1_000_000)
        return None
    try:
        with Path(f"/proc/{pid}/stat").open("rb") as f:
            data = f.read(4096)
        # The command name (field 2) may hold spaces and parentheses: count after it.
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def boot_id() -> str:
    """Tells this boot from others (Linux); ``""`` where the stamps are unique anyway."""
    try:
        # Bytes: decoding by name may import a codec, which a process that
        # dropped its privileges may no longer be allowed to read.
        return Path("/proc/sys/kernel/random/boot_id").read_bytes().decode().strip()
    except OSError:
        return ""


def last_pid() -> int | None:
    """The PID the kernel handed out last (Linux: ``ns_last_pid``); ``None`` elsewhere.

    PIDs are handed out in increasing order, wrapping at ``pid_max`` (32768
    on many machines): the PIDs between two readings were given to processes
    created in between, whether or not a process had that PID before.
    """
    try:
        return int(Path("/proc/sys/kernel/ns_last_pid").read_bytes())
    except (OSError, ValueError):
        return None


def wait_exit(pid: int, timeout: float) -> bool | None:
    """Block until ``pid`` exits, for at most ``timeout`` seconds, as an event.

    Uses a pidfd (Linux >= 5.3, see :func:`exit_handle`), which becomes
    readable the moment the process exits, whether or not it has been reaped
    yet, so a zombie counts as exited. (psutil's ``wait()`` keeps polling a
    zombie that is not our child until PID 1 reaps it, which on some machines
    takes seconds.)

    Returns:
        ``True`` if the process has exited, ``False`` if the timeout passed
        first, ``None`` if it cannot be waited for by event (no pidfd here, or
        the PID is already gone): the caller polls instead.
    """
    handle = exit_handle(pid)
    if handle is None:
        return None
    try:
        return handle.wait(timeout)
    finally:
        handle.close()


def runtime_dir() -> Path:
    """A private per-user directory for PID, lock and log files we choose ourselves.

    ``$XDG_RUNTIME_DIR/daemon-controller`` where that exists (tmpfs, per user,
    cleared at logout), else ``<tmp>/daemon-controller-<uid>``. A directory in a
    shared /tmp must be ours and closed to others, or somebody could plant
    files or symlinks there.

    Raises:
        PermissionError: The directory exists but is not safe to use.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        path = Path(xdg) / "daemon-controller"
    else:
        import tempfile  # noqa: PLC0415 - with shutil, lzma and bz2: 5 ms of import time

        path = Path(tempfile.gettempdir()) / f"daemon-controller-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        msg = f"{str(path)!r} is not a private directory of this user; refusing to use it"
        raise PermissionError(msg)
    return path


def lock_fd(fd: int, *, shared: bool, blocking: bool = True) -> bool:
    """``flock()`` an open file: shared or exclusive, waiting or not.

    This is exactly what portalocker does on POSIX (its ``LOCKER`` is
    ``fcntl.flock``), minus about 19 microseconds of argument checking per call,
    which matters on the ``is_running()``/``connect()`` hot path.

    Returns:
        ``False`` if ``blocking`` is false and a conflicting lock is held.
    """
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if not blocking:
        operation |= fcntl.LOCK_NB
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    return True


def unlock_fd(fd: int) -> None:
    """Release a lock taken with :func:`lock_fd`."""
    fcntl.flock(fd, fcntl.LOCK_UN)


class ExitHandle:
    """A pidfd: whether its process has exited is one ``poll()`` system call.

    Shared between threads (through the PID-file cache), so every call makes
    its own poll object: one poll object may not be polled by two threads at
    once ("concurrent poll() invocation").
    """

    __slots__ = ("_fd",)
    _fd: int

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __del__(self) -> None:
        # Shared handles are closed when the last user lets go of them, never
        # under another thread's feet (a closed fd would poll as "exited").
        self.close()

    def _poll(self, milliseconds: int, wake: int | None = None) -> bool:
        fd = self._fd
        if fd < 0:
            msg = "exit handle used after close()"
            raise ValueError(msg)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wake is None:  # the hot path of is_running(): one descriptor
            events = poller.poll(milliseconds)
            mask = events[0][1] if events else 0
        else:
            poller.register(wake, select.POLLIN)
            mask = sum(m for polled, m in poller.poll(milliseconds) if polled == fd)
        if mask & select.POLLNVAL:
            msg = "exit handle's descriptor is not open"
            raise ValueError(msg)
        return bool(mask)

    def exited(self) -> bool:
        """Whether the process has exited (a zombie has).

        The hot path of ``is_running()``: :meth:`_poll` inlined for one descriptor.
        """
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)  # a closed handle's -1: ValueError
        events = poller.poll(0)
        if events and events[0][1] & select.POLLNVAL:
            msg = "exit handle's descriptor is not open"
            raise ValueError(msg)
        return bool(events)

    def fileno(self) -> int | None:
        """The pidfd, readable once the process has exited (``None`` once closed)."""
        return self._fd if self._fd >= 0 else None

    def wait(self, timeout: float, wake: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``inf``: no limit) for the exit; whether it happened.

        Args:
            timeout: Seconds; ``0`` only looks.
            wake: A descriptor that ends the wait early when it polls readable
                (a cancellation's pipe), or ``None``.
        """
        milliseconds = timeout * 1000
        while milliseconds > _MAX_POLL_MS:  # poll() takes an int of milliseconds
            if self._poll(_MAX_POLL_MS, wake):
                return True
            if wake is not None and select.select([wake], [], [], 0)[0]:
                return False
            milliseconds -= _MAX_POLL_MS
        return self._poll(max(0, int(milliseconds)), wake)

    def close(self) -> None:
        """Close the pidfd (only its last user should)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def exit_handle(pid: int) -> ExitHandle | None:
    """A handle that tells cheaply whether ``pid`` has exited, or ``None``.

    A pidfd refers to one process for good: if the PID is later reused, the
    pidfd still reports the old process as exited. That makes it a cheap and
    exact liveness check for a PID we have verified once.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return ExitHandle(pidfd_open(pid, 0))
    except OSError:
        return None
