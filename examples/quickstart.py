"""Quickstart: start a real web server on demand, use it, stop it.

Runs Python's own ``http.server`` as the daemon, so it works on any machine with
Python. ``http.server`` stays in the foreground and writes no PID file, so we
ask the library to daemonize it for us; it writes the PID file itself once the
server answers. Run it with::

    python examples/quickstart.py
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from daemon_controller import Daemon, StartError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="   [log] %(message)s", stream=sys.stdout)
    work = Path(tempfile.mkdtemp(prefix="daemon-controller-quickstart-"))
    (work / "hello.txt").write_text("Hello from a daemon started on demand!\n")
    port = free_port()

    web = (
        Daemon("quickstart web server")
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .foreground()  # http.server stays in the foreground
        .cwd(work)  # serve files from the work directory
        .ping_http(f"http://127.0.0.1:{port}/")
        .pid(work / "web.pid")
        .log(work / "web.log")
        .start_timeout(15)
    )

    print(f"1. Is the web server running? {web.is_running()}")

    started = time.monotonic()
    web.start()
    print(
        f"2. Started in {time.monotonic() - started:.3f} s, "
        f"PID {web.read_pid()}; running: {web.is_running()}"
    )

    # connect() starts the daemon first when it is not running; here it is.
    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5) as reply:
            return bytes(reply.read())

    print(f"3. GET /hello.txt -> {web.connect(fetch).decode().strip()!r}")

    started = time.monotonic()
    web.stop()
    print(f"4. Stopped in {time.monotonic() - started:.3f} s; running: {web.is_running()}")

    # Startup errors become exceptions carrying the daemon's own output.
    broken = web.start_with([sys.executable, "-m", "http.server", "not-a-port"])
    try:
        broken.start()
    except StartError as err:
        last = [line for line in (err.log or "").splitlines() if line.strip()][-1:]
        print(f"5. A broken start raised {type(err).__name__}: exit status {err.exit_status}")
        print(f"   the daemon's last log line: {last[0] if last else '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
