"""Helpers shared by the test modules (imported as ``helpers``).

Four groups, each in one place so that a change is made once:

* processes: :func:`gone`, :func:`wait_until`, the ``DC_TEST_ID`` :data:`MARKER`
  and the marked-process scans the ``_sweep`` fixture relies on, throwaway
  processes (:func:`sleeper`, :func:`dead_pid`) and ways to end them;
* the echo daemon's observable effects: :func:`roundtrip`, :func:`pid_in_file`,
  :func:`daemonized_pids` / :func:`daemonized_count`, :func:`lines`;
* TCP ports: :func:`free_port`, which hands out ports that no other program
  picks by itself, coordinated across xdist workers and concurrent runs;
* child Python processes that use the library from another process:
  :class:`Child` in the test, :func:`tell_parent` / :func:`wait_for_parent`
  in the child's script.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import portalocker
import psutil

from daemon_controller import Daemon

if TYPE_CHECKING:
    from collections.abc import Callable

#: This directory: children get it on their PYTHONPATH to import this module.
TESTS_DIR = Path(__file__).resolve().parent

# -- processes -------------------------------------------------------------------------------


def exited(proc: psutil.Process) -> bool:
    """Whether ``proc`` is a zombie: exited, with no thread left running.

    A process whose main thread has exited reads as a zombie while its other
    threads still run and hold its sockets: that one has not exited.
    """
    if proc.status() != psutil.STATUS_ZOMBIE:
        return False
    try:
        return proc.num_threads() <= 1
    except psutil.Error:
        return True


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for PID 1 counts as exited)."""
    try:
        return exited(psutil.Process(pid))
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
            if exited(proc):
                continue
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def marked(marker: str) -> list[int]:
    """PIDs of :func:`marked_processes`."""
    return [proc.pid for proc in marked_processes(marker)]


def kill_marked(marker: str) -> None:
    """SIGKILL every process carrying ``marker`` and wait until they have exited."""
    pids = marked(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: all(gone(pid) for pid in pids))


def leftovers(marker: str, width: int = 120) -> list[str]:
    """Kill and name live processes whose command line or working directory contains ``marker``.

    For runs that cannot carry the sweeper's environment marker (examples and
    docs run in subprocesses of their own): their directory names them.
    """
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if exited(proc):
                continue
            text = " ".join(proc.cmdline())
            with contextlib.suppress(psutil.Error):
                text += " " + proc.cwd()
            if marker in text:
                found.append(f"{proc.pid} {text[:width]}")
                proc.kill()
    return found


def kill_quietly(pid: int | None) -> None:
    """SIGKILL ``pid`` if it is still there, and wait briefly for it to go."""
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(5)


def sleeper(marker: str, seconds: int = 60) -> subprocess.Popen[bytes]:
    """A marked ``sleep``: a live process that any catchable signal would end."""
    return subprocess.Popen(["sleep", str(seconds)], env={**os.environ, MARKER: marker})


def assert_not_signalled(proc: subprocess.Popen[bytes]) -> None:
    """``proc`` (a :func:`sleeper`) is still running: no signal reached it."""
    try:
        proc.wait(timeout=0.3)  # a signal, had one been sent, has been delivered by now
    except subprocess.TimeoutExpired:
        return
    raise AssertionError(f"the process exited with {proc.returncode}: it was signalled")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Kill and reap a child this test started itself."""
    proc.kill()
    proc.wait(timeout=10)


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


# -- what the echo daemon does -------------------------------------------------------------


def echo_through(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` over a connection to the echo server, half-close, read all it returns."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def roundtrip(port: int, payload: bytes = b"hello daemon\n", host: str = "127.0.0.1") -> bytes:
    """Connect to the echo server (must succeed at once) and :func:`echo_through` ``payload``."""
    with socket.create_connection((host, port), timeout=10) as sock:
        return echo_through(sock, payload)


def pid_in_file(path: Path) -> int:
    """The PID on the first line of ``path``, read directly (not through the library)."""
    return int(path.read_text().split("\n", 1)[0])


def assert_live_echo_server(pid: int) -> None:
    """``pid`` is a running (not zombie) echo server."""
    proc = psutil.Process(pid)
    assert proc.status() != psutil.STATUS_ZOMBIE
    assert any("echo_server" in part for part in proc.cmdline()), proc.cmdline()


def daemonized_pids(log_file: Path) -> list[int]:
    """PIDs of the echo daemons that went into the background with this log file."""
    if not log_file.exists():
        return []
    text = log_file.read_text(errors="replace")
    found = re.finditer(r"\[echo_server (\d+)\] daemonized$", text, re.MULTILINE)
    return [int(match.group(1)) for match in found]


def daemonized_count(log_file: Path) -> int:
    """How many times an echo daemon went into the background with this log file."""
    return len(daemonized_pids(log_file))


def lines(path: Path) -> list[str]:
    """The lines of ``path``; none when it does not exist."""
    return path.read_text().splitlines() if path.exists() else []


class BeforeStart:
    """A ``before_start`` that records each start: a JSON line on entry and on exit.

    ``pause`` seconds pass in between, under the daemon's lock. Each line is
    one ``write()`` with ``O_APPEND``, so lines from many processes never mix.
    """

    def __init__(self, path: Path | str, pause: float = 0.0) -> None:
        self.path = str(path)
        self.pause = pause

    def _record(self, event: str) -> None:
        fields = {"event": event, "pid": os.getpid(), "thread": threading.get_ident()}
        line = json.dumps({**fields, "t": time.monotonic()}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def __call__(self) -> None:
        self._record("enter")
        if self.pause:
            time.sleep(self.pause)
        self._record("exit")


def event_time(record: Path, event: str, timeout: float = 10.0) -> float:
    """When the echo server stamped ``event`` in its ``--record`` file (CLOCK_MONOTONIC).

    Waits briefly for the line: the server stamps the moment, then writes it.
    """
    found: list[float] = []

    def stamped() -> bool:
        found[:] = [
            entry["monotonic"]
            for entry in map(json.loads, lines(record) if record.exists() else [])
            if entry["event"] == event
        ]
        return bool(found)

    assert wait_until(stamped, timeout), f"no {event!r} in {record}"
    return found[-1]


def start_records(path: Path) -> list[dict[str, Any]]:
    """What a :class:`BeforeStart` recorded in ``path``."""
    return [json.loads(line) for line in lines(path) if line.strip()]


def count_starts(path: Path) -> int:
    """How many starts a :class:`BeforeStart` saw begin."""
    return sum(1 for record in start_records(path) if record["event"] == "enter")


# -- ports ---------------------------------------------------------------------------------

#: How many ports the suite takes turns on. A port comes round again only after
#: this many allocations, by then long released by the test that had it.
_PORT_POOL_SIZE = 4000


def _port_pool() -> range:
    """Ports just below the kernel's ephemeral range.

    The kernel picks ports for ``bind(port 0)`` and for outgoing connections
    only from its ephemeral range, so no other program gets one of these unless
    it asks for that port by number.
    """
    low = 49152  # IANA's dynamic range, used by macOS and Windows
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    low = max(low, 1024 + _PORT_POOL_SIZE)
    return range(low - _PORT_POOL_SIZE, low)


_NO_IPV6 = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def _port_is_free(port: int) -> bool:
    """Nothing holds ``port`` on the loopback addresses, not even a TIME_WAIT socket."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))  # no SO_REUSEADDR: fails on any socket using the port
        except OSError as err:
            if family == socket.AF_INET6 and err.errno in _NO_IPV6:
                continue
            return False
    return True


def _port_state_file() -> Path:
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"daemon_controller-test-ports{user}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free and that no other test of any run is given.

    Ports come round-robin from a pool below the kernel's ephemeral range (see
    :func:`_port_pool`), with the turn kept in a file under an exclusive file
    lock, which xdist workers and concurrent test runs of the same user share.
    So neither another test nor a program that lets the kernel choose can take
    the port between this call and the daemon's ``bind()``.
    """
    pool = _port_pool()
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(_port_state_file(), flags, 0o600)
    with os.fdopen(fd, "r+") as state:
        portalocker.lock(state, portalocker.LOCK_EX)
        try:
            text = state.read().strip()
            turn = int(text) if text.isdigit() else os.getpid()
            for _ in range(len(pool)):
                port = pool[turn % len(pool)]
                turn += 1
                if _port_is_free(port):
                    state.seek(0)
                    state.truncate()
                    state.write(str(turn % len(pool)))
                    state.flush()
                    return port
        finally:
            portalocker.unlock(state)
    raise RuntimeError(f"no free port in {pool}")


# -- child processes -----------------------------------------------------------------------

# Run in the child before its script: the names the script may use.
_CHILD_PRELUDE = """\
import json, os, socket, sys, time
from helpers import rebuild_daemon, become_nobody, tell_parent, wait_for_parent
_setup = json.loads(sys.argv[1])
args = sys.argv[2:]
daemon = rebuild_daemon(_setup["daemon"]) if _setup["daemon"] else None
if _setup["nobody"]:
    become_nobody()
"""


def daemon_spec(daemon: Daemon) -> dict[str, Any]:
    """What a child needs to build the same daemon (everything but callables)."""
    cfg = daemon.config
    command = cfg.start_command
    ping = cfg.ping
    return {
        "name": daemon.name,
        "command": command if isinstance(command, str) or command is None else list(command),
        "tcp": [ping.host, ping.port] if hasattr(ping, "port") else None,
        "pid": None if cfg.pid_file is None else str(cfg.pid_file),
        "log": None if cfg.log_file is None else str(cfg.log_file),
        "lock": None if cfg.lock_file is None else str(cfg.lock_file),
        "env": dict(cfg.env),
        "start_timeout": cfg.start_timeout,
        "stop_timeout": cfg.stop_timeout,
        "start_abort_timeout": cfg.start_abort_timeout,
        "log_activity_timeout": cfg.log_activity_timeout,
    }


def rebuild_daemon(spec: dict[str, Any]) -> Daemon:
    """In a child: the daemon :func:`daemon_spec` described."""
    daemon = Daemon(spec["name"])
    if spec["command"] is not None:
        daemon = daemon.start_with(spec["command"])
    if spec["tcp"] is not None:
        daemon = daemon.ping_tcp(*spec["tcp"])
    for key, method in (("pid", "pid"), ("log", "log"), ("lock", "lock")):
        if spec[key] is not None:
            daemon = getattr(daemon, method)(spec[key])
    return (
        daemon.env(spec["env"])
        .start_timeout(spec["start_timeout"])
        .stop_timeout(spec["stop_timeout"])
        .start_abort_timeout(spec["start_abort_timeout"])
        .log_activity_timeout(spec["log_activity_timeout"])
    )


def become_nobody() -> None:
    """In a child run as root: drop to ``nobody`` (uid and gid 65534).

    Our interpreter may live where ``nobody`` may not read (under /root), so
    everything the library imports lazily is imported first.
    """
    import asyncio  # noqa: F401, PLC0415 - imported while the interpreter's files are readable
    import concurrent.futures  # noqa: F401, PLC0415 - ditto
    import hashlib  # noqa: F401, PLC0415 - ditto
    import http.client  # noqa: F401, PLC0415 - ditto

    import tenacity  # noqa: F401, PLC0415 - ditto

    import daemon_controller  # noqa: F401, PLC0415 - ditto

    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def tell_parent(message: object) -> None:
    """In a child: send ``message`` as JSON to the test's :meth:`Child.message`."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def wait_for_parent() -> str:
    """In a child: wait for the test's :meth:`Child.send`; return the line sent."""
    return sys.stdin.readline().strip()


class Child:
    """A child Python process running a script that uses the library.

    The script runs after a prelude (``_CHILD_PRELUDE``) that gives it
    ``args`` (the extra arguments), ``daemon`` (the ``daemon`` passed here,
    rebuilt in the child from its description; ``None`` without one), the
    modules json, os, socket, sys and time, and :func:`tell_parent` /
    :func:`wait_for_parent` to talk to the test over its stdout and stdin.

    With ``as_nobody`` the child becomes ``nobody`` after the prelude (root
    only). The child does not carry the test's marker unless ``marker`` is
    given: a marker scan then finds only what its starts created. Use the
    ``child`` fixture, which reaps every child at the end of the test.
    """

    def __init__(
        self,
        script: str,
        *args: str,
        daemon: Daemon | None = None,
        as_nobody: bool = False,
        marker: str | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        setup = {"daemon": daemon_spec(daemon) if daemon else None, "nobody": as_nobody}
        path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        if marker is not None:
            env[MARKER] = marker
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_PRELUDE + script, json.dumps(setup), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
        )
        self._messages: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._messages.put(line)
        self._messages.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self._stderr.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def message(self, timeout: float = 60.0) -> Any:
        """The next message the child sent with :func:`tell_parent`."""
        try:
            line = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child sent nothing within {timeout} s") from None
        if line is None:
            self.proc.wait(timeout=30)
            for reader in self._readers:
                reader.join(timeout=30)
            raise AssertionError(
                f"child exited with {self.proc.returncode} before it said more: {self.stderr}"
            )
        return json.loads(line)

    def has_message(self) -> bool:
        """Whether the child has said something not read yet."""
        return not self._messages.empty()

    def send(self, line: str = "go") -> None:
        """Wake the child's :func:`wait_for_parent` with ``line``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        """Close the child's stdin, wait for its exit, return its exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        return self.proc.returncode

    def unread_messages(self) -> list[Any]:
        """Once the child has exited (see :meth:`wait`): the messages not read yet."""
        unread = []
        while (line := self._messages.get(timeout=30)) is not None:
            unread.append(json.loads(line))
        self._messages.put(None)
        return unread

    def finish(self, timeout: float = 60.0) -> Any:
        """Wait for a successful exit; return the last message (``None`` if none is left)."""
        status = self.wait(timeout)
        assert status == 0, f"child exited with {status}: {self.stderr}"
        unread = self.unread_messages()
        return unread[-1] if unread else None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout=30)


#: A :class:`Child` script: say "starting", start the daemon, say how it ended;
#: a KeyboardInterrupt (SIGINT) during the start makes it exit with status 42.
INTERRUPTIBLE_START = """
tell_parent("starting")
try:
    daemon.start()
except KeyboardInterrupt:
    tell_parent("interrupted")
    sys.exit(42)
tell_parent("started")
"""


def release_together(children: list[Child]) -> None:
    """Wait until every child has said "ready", then let them all go at once."""
    for proc in children:
        assert proc.message() == "ready"
    for proc in children:
        proc.send("go")


# -- timing --------------------------------------------------------------------------------


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
