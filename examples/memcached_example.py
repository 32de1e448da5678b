"""memcached daemonized with ``-d -P pidfile``, pinged over TCP.

Shows the start command as a *shell string*, because memcached needs its output
redirected to make its errors visible::

    memcached -d -v -P <dir>/memcached.pid -p <port> -l 127.0.0.1 -U 0 [-u nobody] >><log> 2>&1

Why ``-v`` and the redirection: memcached has no log file option. With ``-d`` it
points its stdout and stderr at /dev/null when it goes into the background —
unless it runs with ``-v``, in which case it keeps them. A failure after that
point (the port is taken, the PID file cannot be written) is then only visible
if its output goes to a file; the library reads that file (``log()``) and puts
memcached's own error line into the ``StartError``. Without ``-v`` you would get
"(logs empty)".

Other memcached quirks this example handles:

* ``-d`` makes memcached ``chdir("/")``: give ``-P`` an absolute path.
* As root it refuses to run without ``-u <user>``, and it writes its PID file
  *after* switching to that user: the PID file's directory must be writable by
  ``nobody``. Run as root, the example makes such a directory.
* memcached removes its PID file when it exits on SIGTERM (the default stop
  signal); ``stop()`` waits for the process itself to exit.

The second part provokes a failure: a socket already bound to the port makes
memcached fail after going into the background, and the error shows memcached's
"failed to listen" line. Run it with::

    python examples/memcached_example.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from daemon_controller import Daemon, StartError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --8<-- [start:daemon]
def memcached_daemon(memcached: str, run_dir: Path, port: int) -> Daemon:
    pid_file = run_dir / "memcached.pid"
    log_file = run_dir / "memcached.log"
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    argv = [memcached, "-d", "-v", "-P", str(pid_file), "-p", str(port)]
    argv += ["-l", "127.0.0.1", "-U", "0", *user]
    command = f"{shlex.join(argv)} >>{shlex.quote(str(log_file))} 2>&1"
    return (
        Daemon("memcached")
        .start_with(command)  # a str runs through the shell, for the redirection
        .ping_tcp("127.0.0.1", port)
        .pid(pid_file)
        .log(log_file)
        .start_timeout(15)
        .log_activity_timeout(3)
    )


# --8<-- [end:daemon]


def memcached_call(port: int, request: bytes, end: bytes) -> bytes:
    """Send a text-protocol request; read until the reply ends with ``end``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(end):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


# --8<-- [start:run_dir]
def make_run_dir() -> Path:
    """A temporary directory; as root, one that memcached (as nobody) may write to."""
    run_dir = Path(tempfile.mkdtemp(prefix="dc-memcached-"))
    if os.geteuid() == 0:
        shutil.chown(run_dir, user="nobody")
    return run_dir


# --8<-- [end:run_dir]


def main() -> int:
    memcached = shutil.which("memcached")
    if memcached is None:
        print("memcached is not installed (Debian/Ubuntu: apt-get install memcached)")
        return 1
    run_dir = make_run_dir()
    port = free_port()
    cache = memcached_daemon(memcached, run_dir, port)
    ok = True
    try:
        print(f"1. Start command: {cache.config.start_command}")
        started = time.monotonic()
        cache.start()
        pid = cache.read_pid()
        print(f"2. memcached is ready after {time.monotonic() - started:.3f} s, PID {pid}")
        stored = memcached_call(port, b"set greeting 0 0 5\r\nhello\r\n", b"\r\n")
        fetched = memcached_call(port, b"get greeting\r\n", b"END\r\n")
        print(f"3. set -> {stored.strip()!r}; get -> {fetched.splitlines()[1]!r}")
        ok = fetched.splitlines()[1] == b"hello"
        started = time.monotonic()
        cache.stop()
        print(
            f"4. Stopped in {time.monotonic() - started:.3f} s; PID file left behind: "
            f"{(run_dir / 'memcached.pid').exists()}; running: {cache.is_running()}"
        )

        # A startup error after memcached went into the background: the port is taken.
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", port))  # bound, not listening: the ping still fails
            try:
                cache.start()
            except StartError as err:
                print(f"5. With the port taken, start() raised {type(err).__name__}:")
                print("   " + str(err).replace("\n", "\n   "))
                ok = ok and "failed to listen" in str(err)
            else:
                print("5. memcached started although its port was taken?!")
                ok = False
    finally:
        cache.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
