"""A foreground program with no PID file: ``python -m http.server``.

Many programs — most written in Python, Node or Go, and anything meant to run
under systemd or Docker — stay in the foreground and write no PID file. With
``.foreground()`` the library runs such a program as a daemon itself: it
starts it detached (a session of its own, stdin from /dev/null), sends its
output to the log file, waits for the ping and only then writes the PID file,
atomically. Without ``pid()`` and ``log()`` both files live in a private
per-user runtime directory, named after the daemon, so the description below is
complete. This is also the path that works on Windows, where programs do not
daemonize themselves.

The example starts, restarts and stops the server, then uses it through
``running()``: the block starts it (unless it runs) and stops it on leaving
if the block started it. Run it with::

    python examples/foreground_http_server.py
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from daemon_controller import Daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def main() -> int:
    site = Path(tempfile.mkdtemp(prefix="dc-http-server-"))
    (site / "index.txt").write_text("served by a foreground program\n")
    port = free_port()
    web = (
        # The port in the name keeps the default PID/log files of two runs apart.
        Daemon(f"http.server on port {port}")
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .foreground()  # stays in the foreground and writes no PID file
        .cwd(site)  # http.server serves its working directory
        .ping_http(f"http://127.0.0.1:{port}/")
        .start_timeout(30)
    )
    files = web.resolved().config
    print(f"1. PID file {files.pid_file}\n   log file {files.log_file}")
    ok = False
    try:
        started = time.monotonic()
        web.start()
        pid = web.read_pid()
        print(f"2. Ready after {time.monotonic() - started:.3f} s; the PID file names {pid}")
        text = fetch(f"http://127.0.0.1:{port}/index.txt").strip()
        print(f"3. GET /index.txt -> {text!r}")
        web.restart()
        print(f"4. Restarted: PID {pid} -> {web.read_pid()}")
        ok = text == "served by a foreground program" and web.read_pid() not in (None, pid)
        started = time.monotonic()
        web.stop()
        print(f"5. Stopped in {time.monotonic() - started:.3f} s; running: {web.is_running()}")

        with web.running():  # starts it; stops it on leaving, since the block started it
            text = fetch(f"http://127.0.0.1:{port}/index.txt").strip()
            print(f"6. Inside running(): PID {web.read_pid()}, GET /index.txt -> {text!r}")
        print(f"7. Left the block: running {web.is_running()}")
        ok = ok and not web.is_running()
        log = files.log_file.read_text() if files.log_file else ""
        print(f"8. Its output went to the log: {log.splitlines()[-1] if log else '(empty)'}")
    finally:
        web.stop()
        shutil.rmtree(site, ignore_errors=True)
        if files.pid_file is not None:  # the log and lock files in the runtime directory
            for leftover in files.pid_file.parent.glob(files.pid_file.stem + ".*"):
                leftover.unlink(missing_ok=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
