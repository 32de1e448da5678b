"""A small, self-contained echo daemon for the daemon_controller tests and benchmarks.

It accepts connections and echoes back every byte it receives until the peer
closes its side (half-closed peers still get all pending bytes back).  It uses
only the standard library and one thread (``selectors``).

Usage::

    python echo_server.py (--port N [--host H] | --unix PATH) [options]

Listening (at most one of ``--port`` / ``--unix``; with neither, the process
runs without a socket until it is signalled, which is handy for tests that
only care about PID files):

``--port N``
    Listen on TCP ``HOST:N`` with ``SO_REUSEADDR``.  ``0`` picks a free port;
    the real address is logged and recorded.
``--host H``
    Host to bind for TCP (default ``127.0.0.1``; ``::1`` works too).
``--unix PATH``
    Listen on a unix socket at ``PATH`` instead.  A stale socket left at
    ``PATH`` by a killed server (connect is refused) is removed first; a live
    one makes startup fail with "cannot listen".  ``PATH`` is removed on a
    clean exit (only if it is still our socket).

Files:

``--pid-file PATH``
    Once daemonized (or, with ``--foreground``, at the same point), write our
    PID (decimal + ``"\\n"``) to ``PATH`` atomically (temp file + rename).  It is
    removed on a clean exit (SIGTERM/SIGINT, or failure to listen), and only
    if it still contains our PID.  Without this option no PID file is written.
``--log-file PATH``
    Append log lines ``"[echo_server <pid>] message"`` to ``PATH`` (opened
    before daemonizing, ``O_APPEND``, one ``write()`` per line, so nothing is
    buffered).  When daemonized, stdout and stderr also go to this file.
    Without it, log lines go to stderr (which is /dev/null once daemonized).
``--record PATH``
    Append JSON lines with events to ``PATH``, each with ``"event"``,
    ``"pid"``, ``"time"`` (``time.time()``) and ``"monotonic"``
    (``time.monotonic()``, CLOCK_MONOTONIC, comparable across processes);
    every line is written with one ``write()`` (not fsync'ed: see record()).  Events:
    ``"listening"`` once ``listen()`` has succeeded, stamped (both times)
    with the moment just before the ``listen()`` call, so no client can have
    connected earlier (extra key
    ``"address"``: ``"127.0.0.1:1234"``, ``"[::1]:1234"``, ``"unix:PATH"``, or
    null without a socket) and ``"exit"`` as the very last thing before
    ``os._exit(0)`` on SIGTERM/SIGINT (extra key ``"signal"``), or right
    before a deliberate failure exit (``--exit-before-daemonize``,
    ``--exit-after-daemonize``, ``--exit-after-pid``; extra key ``"reason"``).
``--write-file PATH=CONTENT``
    (Repeatable.)  After daemonizing, write ``CONTENT`` to ``PATH`` (atomic
    rename).  ``{env:NAME}`` is replaced by ``os.environ.get(NAME, "")``,
    ``{cwd}`` by ``os.getcwd()`` and ``{fds}`` by the comma-separated sorted
    open file descriptors of the daemon (from /proc/self/fd, without the
    descriptor used for listing it).  The server itself holds only 0, 1 and 2
    at that point when daemonized (the log file's descriptor is moved onto
    1/2), so anything else was inherited from whoever started it (handy for
    leak tests).  In the foreground with ``--log-file`` the log file's own
    descriptor is listed as well.

Daemonizing:

``--foreground``
    Do not daemonize; stdin/stdout/stderr are left as they are.  By default
    the server daemonizes with the classic double fork: fork, the parent exits
    0 immediately, the child calls ``setsid()`` and forks again, the
    intermediate exits 0, and the grandchild redirects stdin from /dev/null and
    stdout/stderr to the log file (or /dev/null without ``--log-file``).  It
    does not ``chdir()`` (relative paths keep working) and keeps the umask.
``--ready-line``
    In foreground mode, print ``ready`` to stdout (flushed) once listening.

Telling a controller it is ready (after listening, in this order):

``--log-junk BYTES``
    Log ``BYTES`` bytes of random binary data (newlines included, by chance),
    in writes of up to 1 MiB: a huge, binary log.
``--rotate-log``
    Rename the log file to ``PATH.1`` and go on in a new file at ``PATH``.
``--truncate-log``
    Truncate the log file to 0 bytes (as ``copytruncate`` does).
``--ready-log-line TEXT``
    Log ``TEXT`` (one line, to the log file, or stderr without one), stamped
    with the record event ``"ready-line"`` just before the write.
``--split-ready-line SECONDS``
    Write that line in two ``write()`` calls, ``SECONDS`` apart, the second
    half with the newline.
``--notify-ready``
    Send ``READY=1`` (and ``STATUS=Listening``) to ``$NOTIFY_SOCKET`` (the
    sd_notify protocol; ``@name`` is an abstract socket), stamped with the
    record event ``"notify-ready"`` just before the send.
``--notify-mainpid``
    Send ``MAINPID=<our PID>`` along with it.

Telling a controller other things through ``$NOTIFY_SOCKET``, right after
daemonizing (before the files, step 1 below):

``--notify-status TEXT``
    Send ``STATUS=TEXT``.
``--notify-extend SECONDS``
    Send ``EXTEND_TIMEOUT_USEC=`` for ``SECONDS``.
``--notify-errno N``
    Send ``STATUS=failing`` and ``ERRNO=N``, then wait for a signal without
    listening (the controller must fail on the message, not on an exit).
``--notify-stopping``
    Send ``STOPPING=1``, then wait for a signal without listening.

Before daemonizing (output goes to the start command's stdout/stderr):

``--stdout-message MSG``
    Print ``MSG`` to stdout.
``--before-daemonize-message MSG``
    Print ``MSG`` to stderr (after ``--stdout-message``).
``--exit-before-daemonize CODE``
    Print ``echo_server: failing before daemonizing`` to stderr (after the
    messages above) and exit with ``CODE``.
``--signal-before-daemonize SIG``
    Kill ourselves with signal ``SIG`` (``XCPU``, ``SIGKILL``, ``9`` ...).  Its
    disposition is reset to the default first and core dumps are disabled
    (RLIMIT_CORE=0), so no core file litters the working directory.

After daemonizing, in this order:

1. The ``--notify-*`` messages above, then ``--log-message MSG``: log ``MSG``.
2. ``--write-file`` files are written.
3. ``--exit-after-daemonize CODE``: log ``exiting after daemonizing`` and exit
   with ``CODE`` (no PID file was written).
4. ``--wait-before-pid SECONDS``: sleep (float seconds).
5. The PID file is written.
6. ``--exit-after-pid CODE``: log ``exiting after writing pid file`` and exit
   with ``CODE``, leaving the PID file in place.
7. ``--wait-before-listen SECONDS`` plus
   ``random.uniform(0, --random-extra-wait SECONDS)``: sleep.  Then, with
   ``--listen-at MONOTONIC``, sleep until ``time.monotonic()`` (CLOCK_MONOTONIC,
   the same in every process) reaches ``MONOTONIC``: a benchmark can make a
   daemon ready a set time after it was started, however long the interpreter
   took to start.
8. Bind and listen.  On failure (e.g. port in use) log
   ``cannot listen: <error>`` to the log file and stderr, remove the PID file
   and exit 1.
9. Record ``"listening"``, print the ``--ready-line``, tell readiness (the
   options above), serve.

Stopping:

SIGTERM and SIGINT (handled from step 1 on, also while sleeping or blocked in
``select()``) stop the server cleanly: sleep ``--stop-delay``, remove the PID
file (if it still holds our PID), close the listening socket, remove the unix
socket, log, record ``"exit"``, then ``os._exit(0)``.  Further SIGTERM/SIGINT
during the stop delay are ignored.

``--stop-delay SECONDS``
    On SIGTERM/SIGINT, wait this long before cleaning up and exiting (the PID
    file stays until right before exit; connections are not served meanwhile).
``--ignore-term``
    Ignore SIGTERM from the start (SIGINT still stops it; SIGKILL always does).

The module also offers helpers for tests, without side effects on import:
``free_port()`` (the suite's port allocator in ``helpers.py``, which must be
importable), ``ECHO_SERVER`` (this file's resolved path) and
``echo_command(*args)`` (``[sys.executable, str(ECHO_SERVER), *args]``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import pathlib
import random
import re
import selectors
import signal
import socket
import stat
import sys
import time
import traceback
from typing import TYPE_CHECKING

if sys.platform != "win32":
    import resource

if TYPE_CHECKING:
    from types import FrameType

_PROG = "echo_server"
_RECV_SIZE = 65536
# Stop reading from a client whose unsent echo backlog exceeds this.
_MAX_PENDING = 1 << 20


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _exit_code(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"exit code must be 0..255: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535: {text!r}")
    return value


def _signal_number(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if not 0 < number < getattr(signal, "NSIG", 65):
            raise argparse.ArgumentTypeError(f"bad signal number: {text!r}")
        return number
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown signal: {text!r}") from None


def _write_file_spec(text: str) -> tuple[str, str]:
    path, sep, content = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=CONTENT: {text!r}")
    return path, content


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG, description="Echo server daemon used by the daemon_controller tests."
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", type=_port, metavar="N", help="listen on TCP HOST:N")
    where.add_argument("--unix", metavar="PATH", help="listen on a unix socket at PATH")
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="TCP host (default 127.0.0.1)")
    p.add_argument("--pid-file", metavar="PATH", help="write our PID here once daemonized")
    p.add_argument("--log-file", metavar="PATH", help="append log lines here")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    p.add_argument("--before-daemonize-message", metavar="MSG", help="print MSG to stderr first")
    p.add_argument("--stdout-message", metavar="MSG", help="print MSG to stdout first")
    p.add_argument("--log-message", metavar="MSG", help="log MSG after daemonizing")
    p.add_argument("--exit-before-daemonize", type=_exit_code, metavar="CODE")
    p.add_argument("--signal-before-daemonize", type=_signal_number, metavar="SIG")
    p.add_argument("--exit-after-daemonize", type=_exit_code, metavar="CODE")
    p.add_argument("--exit-after-pid", type=_exit_code, metavar="CODE")
    p.add_argument("--wait-before-pid", type=_non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument("--wait-before-listen", type=_non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument("--random-extra-wait", type=_non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument("--listen-at", type=_non_negative_float, default=0.0, metavar="MONOTONIC")
    p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
    p.add_argument("--stop-delay", type=_non_negative_float, default=0.0, metavar="SECONDS")
    p.add_argument("--record", metavar="PATH", help="append JSON event lines here")
    p.add_argument(
        "--write-file",
        type=_write_file_spec,
        action="append",
        default=[],
        metavar="PATH=CONTENT",
        help="write CONTENT to PATH after daemonizing (repeatable)",
    )
    p.add_argument("--ready-line", action="store_true", help="print 'ready' when listening")
    p.add_argument("--log-junk", type=int, default=0, metavar="BYTES")
    p.add_argument("--rotate-log", action="store_true")
    p.add_argument("--truncate-log", action="store_true")
    p.add_argument("--ready-log-line", metavar="TEXT")
    p.add_argument("--split-ready-line", type=_non_negative_float, metavar="SECONDS")
    p.add_argument("--notify-ready", action="store_true")
    p.add_argument("--notify-mainpid", action="store_true")
    p.add_argument("--notify-status", metavar="TEXT")
    p.add_argument("--notify-extend", type=_non_negative_float, metavar="SECONDS")
    p.add_argument("--notify-errno", type=int, metavar="N")
    p.add_argument("--notify-stopping", action="store_true")
    return p


# ---------------------------------------------------------------------------
# Low-level helpers
# ---------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _say(fd: int, text: str) -> None:
    """Write one line to a standard descriptor, ignoring a closed/broken one."""
    with contextlib.suppress(OSError):
        _write_all(fd, (text + "\n").encode("utf-8", "replace"))


def _ensure_std_fds() -> None:
    """Make sure 0, 1 and 2 are open, so later files never land on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null_fd = os.open(os.devnull, os.O_RDWR)
            if null_fd != fd:
                os.dup2(null_fd, fd)
                os.close(null_fd)


def _open_fds() -> list[int]:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        fds: list[int] = []
        for name in names:
            try:
                fd = int(name)
            except ValueError:
                continue
            try:
                os.fstat(fd)
            except OSError:
                continue  # the descriptor listdir() used, closed by now
            fds.append(fd)
        return sorted(fds)
    return []


_PLACEHOLDER = re.compile(r"\{(env:[^{}]*|cwd|fds)\}")


def _expand(content: str) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "cwd":
            return os.getcwd()
        if key == "fds":
            return ",".join(str(fd) for fd in _open_fds())
        return os.environ.get(key[4:], "")

    return _PLACEHOLDER.sub(replace, content)


def _atomic_write(path: str, content: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _format_address(sock: socket.socket) -> str:
    address = sock.getsockname()
    if isinstance(address, (bytes, str)):
        name = address.decode() if isinstance(address, bytes) else address
        return f"unix:{name}"
    host, port = address[0], address[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class _Client:
    __slots__ = ("eof", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()
        self.eof = False


class _Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_fd: int | None = None
        self.listener: socket.socket | None = None
        # When listen() was called: nothing could connect before this moment.
        self.listen_moment: tuple[float, float] | None = None  # (time, monotonic)
        self.unix_ident: tuple[int, int] | None = None
        self.stopping = False

    # -- logging / records ---------------------------------------------------

    def log(self, message: str, *, also_stderr: bool = False) -> None:
        line = f"[{_PROG} {os.getpid()}] {message}"
        targets: list[int] = []
        if self.log_fd is not None:
            targets.append(self.log_fd)
        if (self.log_fd is None or also_stderr) and 2 not in targets:
            targets.append(2)
        for fd in targets:
            _say(fd, line)

    def record(self, event: str, **extra: object) -> None:
        path = self.args.record
        if not path:
            return
        entry: dict[str, object] = {
            "event": event,
            "pid": os.getpid(),
            "time": time.time(),
            "monotonic": time.monotonic(),
        }
        entry.update(extra)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # No fsync: readers see the line at once through the page cache,
                # and an fsync (0.1 to several ms on a VM disk) would sit between
                # the "exit" stamp and the real exit, inflating exit delays.
                _write_all(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as e:
            self.log(f"cannot write record file {path}: {e}")

    # -- telling a controller --------------------------------------------------

    def notify(self, message: str, *, stamp: str | None = None) -> None:
        """Send one sd_notify datagram to $NOTIFY_SOCKET (recording ``stamp`` just before)."""
        address = os.environ.get("NOTIFY_SOCKET", "")
        family = getattr(socket, "AF_UNIX", None)
        if not address or family is None:
            self.log("no NOTIFY_SOCKET to notify")
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        moment = (time.time(), time.monotonic())
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        if stamp is not None:
            self.record(stamp, time=moment[0], monotonic=moment[1])

    def log_fd_now(self) -> int:
        return self.log_fd if self.log_fd is not None else 2

    def tell_ready(self) -> None:
        """The log junk, rotation, truncation, ready line and READY=1, as the options say."""
        args = self.args
        if args.log_junk:
            left = args.log_junk
            while left > 0:
                chunk = os.urandom(min(left, 1 << 20))
                _write_all(self.log_fd_now(), chunk)
                left -= len(chunk)
        if (args.rotate_log or args.truncate_log) and args.log_file:
            if args.rotate_log:
                os.replace(args.log_file, args.log_file + ".1")
                fresh = os.open(args.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                for fd in {self.log_fd_now(), 1, 2} if not args.foreground else {self.log_fd_now()}:
                    os.dup2(fresh, fd)
                os.close(fresh)
            if args.truncate_log:
                os.ftruncate(self.log_fd_now(), 0)
        if args.ready_log_line is not None:
            line = f"[{_PROG} {os.getpid()}] {args.ready_log_line}\n".encode()
            moment = (time.time(), time.monotonic())
            if args.split_ready_line is not None:
                half = len(line) // 2
                _write_all(self.log_fd_now(), line[:half])
                time.sleep(args.split_ready_line)
                _write_all(self.log_fd_now(), line[half:])
            else:
                _write_all(self.log_fd_now(), line)
            self.record("ready-line", time=moment[0], monotonic=moment[1])
        if args.notify_ready:
            message = "READY=1\nSTATUS=Listening"
            if args.notify_mainpid:
                message += f"\nMAINPID={os.getpid()}"
            self.notify(message, stamp="notify-ready")

    def tell_early(self) -> None:
        """What the options say to send right after daemonizing."""
        args = self.args
        if args.notify_status is not None:
            self.notify(f"STATUS={args.notify_status}")
        if args.notify_extend is not None:
            self.notify(f"EXTEND_TIMEOUT_USEC={round(args.notify_extend * 1e6)}")
        if args.notify_errno is not None or args.notify_stopping:
            if args.notify_errno is not None:
                self.notify(f"STATUS=failing\nERRNO={args.notify_errno}")
            else:
                self.notify("STOPPING=1")
            self.log("told the controller it failed; waiting for a signal")
            while True:
                time.sleep(3600)

    # -- pid file --------------------------------------------------------------

    def write_pid_file(self) -> None:
        path = self.args.pid_file
        if path:
            _atomic_write(path, f"{os.getpid()}\n")
            self.log(f"wrote pid file {path}")

    def remove_pid_file(self) -> None:
        path = self.args.pid_file
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as f:
                content = f.read().strip()
        except OSError:
            return
        if content == str(os.getpid()):
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -- listening -------------------------------------------------------------

    def listen(self) -> socket.socket | None:
        args = self.args
        if args.unix is not None:
            return self._listen_unix(args.unix)
        if args.port is not None:
            return self._listen_tcp(args.host, args.port)
        return None

    def _listen_tcp(self, host: str, port: int) -> socket.socket:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            self.listen_moment = (time.time(), time.monotonic())  # connectable from here on
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        return sock

    def _listen_unix(self, path: str) -> socket.socket:
        family = getattr(socket, "AF_UNIX", None)
        if family is None:
            raise OSError(errno.EAFNOSUPPORT, "unix sockets are not supported here")
        self._remove_stale_unix_socket(path, family)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            st = os.stat(path)
            self.unix_ident = (st.st_dev, st.st_ino)
            self.listen_moment = (time.time(), time.monotonic())  # connectable from here on
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            self.remove_unix_socket()
            raise
        return sock

    def _remove_stale_unix_socket(self, path: str, family: int) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            return  # let bind() report the problem
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            self.log(f"removing stale unix socket {path}")
            with contextlib.suppress(OSError):
                os.unlink(path)
        except OSError:
            pass
        else:
            raise OSError(errno.EADDRINUSE, f"a server is already listening on {path}")
        finally:
            probe.close()

    def remove_unix_socket(self) -> None:
        path = self.args.unix
        if path is None or self.unix_ident is None:
            return
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == self.unix_ident:
                os.unlink(path)
        except OSError:
            pass
        self.unix_ident = None

    # -- signals ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        if not self.args.ignore_term:
            signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        name = signal.Signals(signum).name
        self.log(f"received {name}")
        if self.args.stop_delay > 0:
            self.log(f"waiting {self.args.stop_delay:g}s before exiting")
            time.sleep(self.args.stop_delay)
        self.remove_pid_file()
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
        self.remove_unix_socket()
        self.log("exiting")
        self.record("exit", signal=name)
        os._exit(0)

    # -- echo loop -------------------------------------------------------------

    def serve(self, listener: socket.socket | None) -> None:
        if listener is None:
            while True:  # nothing to serve; wait for a signal
                time.sleep(3600)
        selector = selectors.DefaultSelector()
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, None)
        while True:
            for key, mask in selector.select():
                client = key.data
                if client is None:
                    self._accept(selector, listener)
                else:
                    self._service(selector, client, mask)

    def _accept(self, selector: selectors.BaseSelector, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                # EMFILE, ENFILE, ENOBUFS...: don't spin at full speed.
                self.log(f"accept failed: {e}")
                time.sleep(0.05)
                return
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, _Client(conn))

    def _service(self, selector: selectors.BaseSelector, client: _Client, mask: int) -> None:
        sock = client.sock
        try:
            if mask & selectors.EVENT_READ and not client.eof:
                try:
                    data = sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data is not None:
                    if data:
                        client.pending += data
                    else:
                        client.eof = True
            if client.pending:
                try:
                    sent = sock.send(client.pending)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                del client.pending[:sent]
        except OSError:
            selector.unregister(sock)
            sock.close()
            return
        events = 0
        if not client.eof and len(client.pending) < _MAX_PENDING:
            events |= selectors.EVENT_READ
        if client.pending:
            events |= selectors.EVENT_WRITE
        if not events:
            selector.unregister(sock)
            sock.close()
        elif events != selector.get_key(sock).events:
            selector.modify(sock, events, client)

    # -- main sequence ---------------------------------------------------------

    def open_log(self) -> None:
        if self.args.log_file:
            self.log_fd = os.open(self.args.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def daemonize(self) -> None:
        fork = getattr(os, "fork", None)
        setsid = getattr(os, "setsid", None)
        if fork is None or setsid is None:
            _say(2, f"{_PROG}: cannot daemonize on this platform; use --foreground")
            os._exit(1)
        if fork() > 0:
            os._exit(0)
        setsid()
        if fork() > 0:
            os._exit(0)
        null_fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(null_fd, 0)
        if self.log_fd is not None:
            os.dup2(self.log_fd, 1)
            os.dup2(self.log_fd, 2)
            if self.log_fd > 2:
                os.close(self.log_fd)
            self.log_fd = 2
        else:
            os.dup2(null_fd, 1)
            os.dup2(null_fd, 2)
        if null_fd > 2:
            os.close(null_fd)

    def before_daemonizing(self) -> None:
        args = self.args
        if args.stdout_message is not None:
            _say(1, args.stdout_message)
        if args.before_daemonize_message is not None:
            _say(2, args.before_daemonize_message)
        if args.exit_before_daemonize is not None:
            _say(2, f"{_PROG}: failing before daemonizing")
            self.record("exit", reason="exit-before-daemonize")
            os._exit(args.exit_before_daemonize)
        if args.signal_before_daemonize is not None:
            self._kill_self(args.signal_before_daemonize)

    @staticmethod
    def _kill_self(signum: int) -> None:
        if sys.platform != "win32":
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # SIGKILL/SIGSTOP cannot be caught anyway.
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1.0)  # delivery to ourselves is normally synchronous
        if signum in (getattr(signal, "SIGSTOP", -1), getattr(signal, "SIGTSTP", -1)):
            return  # resumed with SIGCONT: carry on
        os._exit(128 + signum)

    def after_daemonizing(self) -> None:
        args = self.args
        self.log("started" if args.foreground else "daemonized")
        self.tell_early()
        if args.log_message is not None:
            self.log(args.log_message)
        for path, content in args.write_file:
            _atomic_write(path, _expand(content))
        if args.exit_after_daemonize is not None:
            self.log("exiting after daemonizing")
            self.record("exit", reason="exit-after-daemonize")
            os._exit(args.exit_after_daemonize)
        if args.wait_before_pid > 0:
            time.sleep(args.wait_before_pid)
        try:
            self.write_pid_file()
        except OSError as e:
            self.log(f"cannot write pid file: {e}", also_stderr=True)
            os._exit(1)
        if args.exit_after_pid is not None:
            self.log("exiting after writing pid file")
            self.record("exit", reason="exit-after-pid")
            os._exit(args.exit_after_pid)
        wait = args.wait_before_listen
        if args.random_extra_wait > 0:
            wait += random.uniform(0.0, args.random_extra_wait)
        if wait > 0:
            time.sleep(wait)
        if args.listen_at > time.monotonic():
            time.sleep(args.listen_at - time.monotonic())
        try:
            self.listener = self.listen()
        except OSError as e:
            self.log(f"cannot listen: {e}", also_stderr=True)
            self.remove_pid_file()
            os._exit(1)
        address = _format_address(self.listener) if self.listener is not None else None
        self.log(f"listening on {address}" if address else "running without a socket")
        if self.listen_moment is not None:
            # The moment listen() was called, not now: a controller may see the
            # socket answer before this line is reached.
            wall, monotonic = self.listen_moment
            self.record("listening", address=address, time=wall, monotonic=monotonic)
        else:
            self.record("listening", address=address)
        if args.foreground and args.ready_line:
            _say(1, "ready")
        self.tell_ready()

    def run(self) -> None:
        if self.args.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.open_log()
        except OSError as e:
            _say(2, f"{_PROG}: cannot open log file: {e}")
            os._exit(1)
        self.before_daemonizing()
        if not self.args.foreground:
            self.daemonize()
        self.install_signal_handlers()
        try:
            self.after_daemonizing()
            self.serve(self.listener)
        except Exception:
            for line in traceback.format_exc().rstrip().splitlines():
                self.log(line, also_stderr=True)
            self.remove_pid_file()
            self.remove_unix_socket()
            os._exit(1)


def main(argv: list[str] | None = None) -> int:
    _ensure_std_fds()
    args = _parser().parse_args(argv)
    _Server(args).run()
    return 0


# ---------------------------------------------------------------------------
# Helpers for tests (no side effects on import)
# ---------------------------------------------------------------------------

ECHO_SERVER = pathlib.Path(__file__).resolve()


def free_port() -> int:
    """A TCP port for a test daemon: the suite's one allocator, ``helpers.free_port``.

    Imported on use, so that the server itself stays a self-contained script.
    """
    from helpers import free_port as allocate  # noqa: PLC0415 - see the docstring

    return allocate()


def echo_command(*args: str) -> list[str]:
    """The argv that runs this echo server with ``args``."""
    return [sys.executable, str(ECHO_SERVER), *args]


if __name__ == "__main__":
    sys.exit(main())
