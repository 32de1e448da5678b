"""Readiness the daemon tells us: Redis says READY=1, memcached and nginx log a line.

Pinging asks a daemon "are you ready?" again and again, and a socket that
accepts is not always a server that serves. Two other ways cost no polling:

* ``notify()``: the daemon speaks systemd's notify protocol. Redis does with
  ``--supervised systemd``: it sends ``READY=1`` once it has loaded its data.
  The library passes it a private socket (``NOTIFY_SOCKET``), learns its PID
  from the message, and writes the PID file itself: no ``pid()``, no
  ``log()``, no ping.
* ``ping_log(pattern)``: the daemon logs a line once it serves. memcached
  with ``-vv`` prints ``server listening`` once it has bound its port; nginx
  logs ``start worker processes`` (at ``notice``) after binding its sockets.
  Only lines written after the start began count, and a daemon that dies
  first fails the start at once, with its last lines.

The example starts each daemon in a temporary directory on a free port, uses
it, shows a memcached whose port is taken failing at once, and stops
everything. Run it with::

    python examples/told_readiness.py
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
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


def ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(100).strip()


def program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        sys.exit(f"{name} is not installed")
    return found


# --8<-- [start:redis]
def redis_told(work: Path, port: int) -> Daemon:
    """Redis under the notify protocol: it says when it is ready, and who it is."""
    return (
        Daemon(f"Redis on port {port}")
        .start_with(
            [
                *(program("redis-server"), "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--dir", str(work), "--supervised", "systemd"),
            ]
        )
        .notify()  # no pid(), no log(), no ping: READY=1 says it all
        .start_timeout(30)
    )


# --8<-- [end:redis]


# --8<-- [start:memcached]
def memcached_logging(port: int) -> Daemon:
    """memcached in the foreground; -vv makes it print when it listens."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return (
        Daemon(f"memcached on port {port}")
        .start_with([program("memcached"), "-vv", "-p", str(port), "-l", "127.0.0.1", *user])
        .foreground()  # its output is its log
        .ping_log("server listening")
        .start_timeout(30)
    )


# --8<-- [end:memcached]


def nginx_logging(work: Path, port: int) -> Daemon:
    """nginx going into the background; its error log says when its workers start."""
    user = ""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    (work / "nginx.conf").write_text(f"""
{user}
pid {work}/nginx.pid;
error_log {work}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body_temp;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ready by its own word\\n"; }}
    }}
}}
""")
    return (
        Daemon("nginx")
        .start_with([program("nginx"), "-p", str(work), "-c", str(work / "nginx.conf")])
        .ping_log(r"\[notice\] .*start worker processes")
        .pid(work / "nginx.pid")
        .log(work / "error.log")
        .start_timeout(30)
    )


def timed(daemon: Daemon) -> float:
    started = time.monotonic()
    daemon.start()
    return time.monotonic() - started


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="dc-told-readiness-"))
    work.chmod(0o755)  # nginx's workers run as nobody
    redis_port, memcached_port, nginx_port = free_port(), free_port(), free_port()
    redis = redis_told(work, redis_port)
    memcached = memcached_logging(memcached_port)
    nginx = nginx_logging(work, nginx_port)
    ok = False
    try:
        took = timed(redis)
        pong = ask(redis_port, b"PING\r\n")
        status = redis.status()
        print(f"1. Redis said READY=1 after {took:.3f} s: PID {redis.read_pid()}, PING -> {pong!r}")
        print(f"   readiness {status.readiness}, its last STATUS: {status.notify_status!r}")

        took = timed(memcached)
        version = ask(memcached_port, b"version\r\n")
        print(f"2. memcached logged 'server listening' after {took:.3f} s: {version!r}")

        took = timed(nginx)
        with urllib.request.urlopen(f"http://127.0.0.1:{nginx_port}/", timeout=10) as reply:
            body = reply.read().decode().strip()
        print(f"3. nginx logged its workers' start after {took:.3f} s: GET / -> {body!r}")

        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            started = time.monotonic()
            try:
                memcached_logging(port).start()
                failed = False
            except StartError as err:
                failed = True
                first = str(err).splitlines()[0]
                print(f"4. A taken port fails at once ({time.monotonic() - started:.3f} s):")
                print(f"   {first}")
                said = [line for line in str(err).splitlines() if "Address already" in line]
                print(f"   memcached's own line: {said[:1]}")
        ok = pong == b"+PONG" and version.startswith(b"VERSION") and failed
        ok = ok and body == "ready by its own word"
    finally:
        for daemon in (nginx, memcached, redis):
            daemon.stop()
        for daemon in (memcached, redis):  # their default files, in the runtime directory
            pid_file = daemon.resolved().config.pid_file
            if pid_file is not None:
                for leftover in pid_file.parent.glob(pid_file.stem + ".*"):
                    leftover.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
