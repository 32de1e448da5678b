"""Startup errors reported well: the exception shows the daemon's own error line.

Two broken configurations, both caught as ``StartError`` and printed:

* nginx with a syntax error in its config (``bogus on;``). nginx checks its
  config before it goes into the background and exits with status 1; its
  message (``unknown directive "bogus"``) is in what the start command printed,
  and in the error log.
* Redis with a bad directive (``no-such-directive yes``). Redis also refuses
  before daemonizing: ``Bad directive or wrong number of arguments``.

The text of a ``StartError`` is: what went wrong, then the start command's
output, then the lines the daemon added to its log file during the start, then
a summary such as ``(exited with status 1)``. Its fields (``output``, ``log``,
``exit_status``) hold the same data for programs. Nothing is left running.
Run it with::

    python examples/startup_errors.py
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from daemon_controller import Daemon, StartError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_log_option(nginx: str, path: Path) -> list[str]:
    """``-e <file>``: nginx's startup error log (nginx >= 1.19.5), not /var/log/nginx."""
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    new_enough = found is not None and tuple(map(int, found.groups())) >= (1, 19, 5)
    return ["-e", str(path)] if new_enough else []


def broken_nginx(nginx: str, work: Path, port: int) -> Daemon:
    config = work / "nginx.conf"
    config.write_text(f"""
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body_temp;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        bogus on;
    }}
}}
""")
    error_log = error_log_option(nginx, work / "error.log")
    return (
        Daemon("nginx")
        .start_with([nginx, "-p", str(work), "-c", str(config), *error_log])
        .ping_tcp("127.0.0.1", port)
        .pid(work / "nginx.pid")
        .log(work / "error.log")
        .start_timeout(15)
    )


def broken_redis(redis: str, work: Path, port: int) -> Daemon:
    config = work / "redis.conf"
    config.write_text(
        f"daemonize yes\npidfile {work}/redis.pid\nlogfile {work}/redis.log\n"
        f"port {port}\nbind 127.0.0.1\ndir {work}\nno-such-directive yes\n"
    )
    return (
        Daemon("Redis")
        .start_with([redis, str(config)])
        .ping_tcp("127.0.0.1", port)
        .pid(work / "redis.pid")
        .log(work / "redis.log")
        .start_timeout(15)
    )


def show(daemon: Daemon, expected: str) -> bool:
    """Start the broken daemon; print the error; did it show the daemon's own line?"""
    try:
        daemon.start()
    except StartError as err:
        print(f"--- {daemon.name}: {type(err).__name__} (exit status {err.exit_status})")
        print(err)
        found = expected in str(err)
        print(f"--- the daemon's own error line {expected!r} is in it: {found}\n")
        return found
    finally:
        daemon.stop()  # a no-op: the failed start left nothing running
    print(f"--- {daemon.name} started although its config is broken?!\n")
    return False


def main() -> int:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    redis = shutil.which("redis-server")
    if nginx is None or redis is None:
        print("needs nginx and redis-server (Debian/Ubuntu: apt-get install nginx redis-server)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="dc-startup-errors-"))
    try:
        results = [
            show(broken_nginx(nginx, work, free_port()), 'unknown directive "bogus"'),
            show(
                broken_redis(redis, work, free_port()),
                "Bad directive or wrong number of arguments",
            ),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("OK" if all(results) else "FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
