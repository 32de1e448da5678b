"""Windows process control: console control events and detached spawning."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# The type checker reads this module for Windows only; it still imports
# elsewhere (the tests check), where nothing in it is called.
assert sys.platform == "win32" or not TYPE_CHECKING  # noqa: S101 - a type-checker directive

DEFAULT_STOP_SIGNAL = "CTRL_BREAK_EVENT"
#: Whether a daemon can tell us it is ready through a unix datagram socket:
#: Windows has unix stream sockets only, so ``notify()`` is refused.
HAS_NOTIFY = False
#: Whether ``sh -c "exec prog"`` works here (cmd.exe has no exec).
SHELL_HAS_EXEC = False
_WRONG_OS = "Windows process control is only available on Windows"

PASSTHROUGH_LOG_PATHS = frozenset({"CON", "CONOUT$"})

#: The longest path a unix socket can be connected at (``sun_path`` less its NUL).
UNIX_PATH_MAX = 107
#: ``WaitForSingleObject`` takes milliseconds as a DWORD below INFINITE.
_MAX_WAIT_SECONDS = 0xFFFFFFFE / 1000

#: What psutil can send on Windows: the two console events, and SIGTERM
#: (TerminateProcess).
_NAMES = {"CTRL_BREAK_EVENT", "CTRL_C_EVENT", "SIGTERM"}


def parse_signal(value: str | int) -> int:
    """Turn ``"CTRL_BREAK_EVENT"``, ``"TERM"`` or a number into what ``os.kill`` takes.

    Raises:
        ValueError: Not a signal or console event Windows knows.
    """
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    if name == "TERM":
        name = "SIGTERM"
    if name not in _NAMES:
        msg = f"{value!r} is not a signal or console event on Windows"
        raise ValueError(msg)
    return int(getattr(signal, name))


def signal_name(signum: int) -> str:
    """Return a readable name for a signal or console event number."""
    for name in sorted(_NAMES):
        if getattr(signal, name, None) == signum:
            return name
    return f"signal {signum}"


def send_signal(pid: int, signum: int, *, group: bool = False) -> None:
    """Deliver a console control event, or terminate for any other value.

    CTRL_BREAK_EVENT reaches a process started with CREATE_NEW_PROCESS_GROUP (as
    we start daemons) and sharing our console, and lets it shut down cleanly.
    When the event cannot be delivered (no shared console: the daemon was
    started by another process), the process is terminated instead, since
    waiting ``stop_timeout`` for an event that never arrives helps nobody.
    ``group`` makes no difference: an event already reaches the whole group.
    """
    del group
    if pid <= 0:
        msg = f"refusing to signal PID {pid}"
        raise ValueError(msg)
    try:
        process = psutil.Process(pid)
        try:
            process.send_signal(signum)
        except OSError:
            if signum not in (signal.CTRL_BREAK_EVENT, signal.CTRL_C_EVENT):
                raise
            process.terminate()
    except psutil.NoSuchProcess as err:
        raise ProcessLookupError(pid) from err
    except psutil.AccessDenied as err:
        raise PermissionError(pid) from err


def leads_group(pid: int) -> bool:
    """Process groups are not signalled separately on Windows."""
    del pid
    return False


def leads_session(pid: int) -> bool:
    """There are no sessions to signal on Windows."""
    del pid
    return False


def group_alive(pgid: int) -> bool:
    """Not used on Windows (see :func:`leads_group`)."""
    del pgid
    raise NotImplementedError(_WRONG_OS)


def force_kill(pid: int, *, group: bool = False) -> None:
    """TerminateProcess ``pid`` (and, with ``group``, its children); gone is not an error."""
    try:
        process = psutil.Process(pid)
        victims = [*process.children(recursive=True), process] if group else [process]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()


def detach_kwargs(user: str | None = None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments for a child in its own process group.

    CREATE_NEW_PROCESS_GROUP lets a CTRL_BREAK_EVENT reach the child (and not
    us). No DETACHED_PROCESS: a console event only reaches processes attached
    to the sender's console, so a detached child could only be terminated.
    """
    if user is not None:
        msg = "running a daemon as another user (.user()) is POSIX-only"
        raise NotImplementedError(msg)
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}


def user_environment(user: str, ours: Mapping[str, str]) -> dict[str, str]:
    """Ours: ``.user()`` is POSIX-only, and the spawn says so (see :func:`detach_kwargs`)."""
    del user
    return dict(ours)


def user_ids(user: str | None) -> tuple[int, int] | None:
    """Never a switch of user here."""
    del user
    return None


@contextlib.contextmanager
def files_as(ids: tuple[int, int] | None) -> Iterator[bool]:
    """Files are never opened as another user here."""
    del ids
    yield False


def start_stamp(pid: int) -> int | None:
    """The creation time Windows stored for ``pid``, in microseconds; ``None`` if gone."""
    with contextlib.suppress(psutil.Error):
        return round(psutil.Process(pid).create_time() * 1_000_000)
    return None


def boot_id() -> str:
    """Creation times are unique across boots: nothing to tell them apart with."""
    return ""


def last_pid() -> int | None:
    """Windows does not hand out PIDs in order: nothing to read."""
    return None


def wait_exit(pid: int, timeout: float) -> bool | None:
    """Block until ``pid`` exits, for at most ``timeout`` seconds (WaitForSingleObject).

    Returns:
        ``True`` if the process has exited, ``False`` if the timeout passed first.
    """
    try:
        process = psutil.Process(pid)
        while timeout > _MAX_WAIT_SECONDS:
            with contextlib.suppress(psutil.TimeoutExpired):
                process.wait(_MAX_WAIT_SECONDS)
                return True
            timeout -= _MAX_WAIT_SECONDS
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def runtime_dir() -> Path:
    """A per-user directory for PID, lock and log files we choose ourselves."""
    import tempfile  # noqa: PLC0415 - import time, as on POSIX

    base = os.environ.get("LOCALAPPDATA") or tempfile.gettempdir()
    path = Path(base) / "daemon-controller"
    path.mkdir(exist_ok=True)
    return path


def lock_fd(fd: int, *, shared: bool, blocking: bool = True) -> bool:
    """Lock an open file through portalocker (LockFileEx via pywin32 for shared locks).

    Returns:
        ``False`` if ``blocking`` is false and a conflicting lock is held.
    """
    import portalocker  # noqa: PLC0415 - Windows only; costs import time elsewhere

    flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
    if not blocking:
        flags |= portalocker.LockFlags.NON_BLOCKING
    while True:
        try:
            portalocker.lock(fd, flags)
        except portalocker.AlreadyLocked:
            # msvcrt's blocking lock gives up after about 10 s; we wait on.
            if not blocking:
                return False
            continue
        return True


def unlock_fd(fd: int) -> None:
    """Release a lock taken with :func:`lock_fd`."""
    import portalocker  # noqa: PLC0415 - Windows only

    portalocker.unlock(fd)


class ExitHandle:
    """Never made on Windows: :func:`exit_handle` returns ``None``."""

    __slots__ = ()

    def exited(self) -> bool:
        """Not used on Windows."""
        raise NotImplementedError(_WRONG_OS)

    def wait(self, timeout: float, wake: int | None = None) -> bool:
        """Not used on Windows."""
        del timeout, wake
        raise NotImplementedError(_WRONG_OS)

    def fileno(self) -> int | None:
        """Not used on Windows."""
        return None

    def close(self) -> None:
        """Not used on Windows."""


def exit_handle(pid: int) -> ExitHandle | None:
    """No cheap exit handle here: liveness is checked through psutil each time."""
    del pid
    return None


def give(path: Path | str, ids: tuple[int, int] | None) -> None:
    """Nothing to do: see :func:`user_ids`."""
    del path, ids


def user_runtime_dir(user: str | None) -> Path:
    """Our runtime directory: commands run as ourselves here."""
    del user
    return runtime_dir()


def clone_file(source: int, target: int) -> bool:
    """No block cloning through this interface here: the caller copies the bytes."""
    del source, target
    return False


def keep_owner(path: str, original: os.stat_result) -> None:
    """Nothing to do: copies belong to whoever makes them."""
    del path, original


class FileWatch:
    """Never made on Windows: :func:`watch_files` returns ``None``."""

    __slots__ = ()
    complete = False

    def fileno(self) -> int:
        """Not used on Windows."""
        raise NotImplementedError(_WRONG_OS)

    def changed(self) -> bool:
        """Not used on Windows."""
        raise NotImplementedError(_WRONG_OS)

    def close(self) -> None:
        """Not used on Windows."""


class NotifySocket:
    """Windows has no unix datagram sockets: ``notify()`` is refused when it is set."""

    address = ""

    def __init__(self, runtime_dir: Callable[[], Path]) -> None:
        del runtime_dir
        msg = "Windows has no unix datagram sockets for the notify protocol"
        raise OSError(msg)

    def fileno(self) -> int:
        """Not used on Windows."""
        raise NotImplementedError(_WRONG_OS)

    def receive(self) -> list[tuple[int | None, bytes]]:
        """Not used on Windows."""
        raise NotImplementedError(_WRONG_OS)

    def close(self) -> None:
        """Not used on Windows."""


def watch_files(paths: Iterable[Path]) -> FileWatch | None:
    """No file-change events here (yet): the caller polls."""
    del paths
    return None
