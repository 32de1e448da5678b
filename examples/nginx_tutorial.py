"""Tutorial 1 of the original README, with nginx in place of Apache.

A tiny test suite for web-server configuration: every test

1. writes an nginx config with the directive under test set to a value,
2. starts nginx (daemonized, with its own PID file and error log, on a free port),
3. sends an HTTP request and checks the answer,
4. stops nginx — ``stop()`` returns once the nginx master has exited, so the
   next test can start a fresh nginx on the same port at once.

The daemon is described with ``DaemonController(...)``, the keyword constructor
that takes the Ruby gem's option names, as in the original tutorial. A syntax
error in a generated config would surface as a ``StartError`` carrying nginx's
own error line (see ``examples/startup_errors.py``).

Everything lives in a temporary directory: nginx gets ``-p <dir>`` (its prefix),
``-c <config>`` and, on nginx >= 1.19.5, ``-e <error log>`` so that it never
touches /var/log/nginx; the config sets ``pid``, ``error_log`` and every
``*_temp_path`` inside that directory. Run as root, the workers run as
``nobody``. Run it with::

    python examples/nginx_tutorial.py
"""

from __future__ import annotations

import grp
import http.client
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from daemon_controller import DaemonController, StartError

if TYPE_CHECKING:
    from collections.abc import Callable

MOVED_PERMANENTLY = 301


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def supports_error_log_option(nginx: str) -> bool:
    """``nginx -e file`` (the startup error log) exists since nginx 1.19.5."""
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return found is not None and tuple(map(int, found.groups())) >= (1, 19, 5)


def user_directive() -> str:
    """As root, run the workers as nobody (nginx's default group name varies by OS)."""
    if os.geteuid() != 0:
        return ""  # the "user" directive would only produce a warning
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"


# --8<-- [start:config]
def write_config(work: Path, port: int, server_directives: str) -> Path:
    """Step 1: an nginx config with the directive under test."""
    config = work / "nginx.conf"
    config.write_text(f"""
{user_directive()}
daemon on;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log info;
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
        {server_directives}
    }}
}}
""")
    return config


# --8<-- [end:config]


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    """Step 3: one HTTP request; the status, the headers and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        headers = {name.lower(): value for name, value in reply.getheaders()}
        return reply.status, headers, reply.read().decode()
    finally:
        conn.close()


# --8<-- [start:test]
class NginxTest:
    """One test: a config snippet, a request, and a check of the answer."""

    def __init__(self, nginx: str, work: Path, port: int) -> None:
        self.nginx = nginx
        self.work = work
        self.port = port
        error_log = ["-e", str(work / "error.log")] if supports_error_log_option(nginx) else []
        self.controller = DaemonController(
            identifier="nginx web server",
            start_command=[nginx, "-p", str(work), "-c", str(work / "nginx.conf"), *error_log],
            ping_command=("tcp", "127.0.0.1", port),
            pid_file=work / "nginx.pid",
            log_file=work / "error.log",
            start_timeout=25,
        )

    def run(self, name: str, directives: str, check: Callable[[int], str | None]) -> bool:
        write_config(self.work, self.port, directives)
        started = time.monotonic()
        try:
            self.controller.start()  # step 2
        except StartError as err:
            print(f"FAIL {name}: nginx did not start:\n{err}")
            return False
        try:
            print(
                f"     {name}: nginx started in {time.monotonic() - started:.3f} s "
                f"(master PID {self.controller.read_pid()})"
            )
            problem = check(self.port)  # step 3
        finally:
            stopped = time.monotonic()
            self.controller.stop()  # step 4: returns once nginx has exited
            print(f"     {name}: nginx stopped in {time.monotonic() - stopped:.3f} s")
        print(f"{'FAIL' if problem else 'PASS'} {name}{': ' + problem if problem else ''}")
        return problem is None


# --8<-- [end:test]


# --8<-- [start:checks]
def check_body(port: int) -> str | None:
    status, _, body = get(port, "/")
    return None if (status, body) == (200, "hello from nginx\n") else f"got {status} {body!r}"


def check_header(port: int) -> str | None:
    _, headers, _ = get(port, "/")
    value = headers.get("x-tutorial")
    return None if value == "daemon-controller" else f"X-Tutorial header is {value!r}"


def check_redirect(port: int) -> str | None:
    status, headers, _ = get(port, "/old")
    location = headers.get("location", "")
    if status == MOVED_PERMANENTLY and location.endswith("/new"):
        return None
    return f"got {status}, Location {location!r}"


# --8<-- [end:checks]


def main() -> int:
    # Debian puts nginx in /usr/sbin, which is not on every user's PATH.
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        print("nginx is not installed (Debian/Ubuntu: apt-get install nginx)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="dc-nginx-tutorial-"))
    test = NginxTest(nginx, work, free_port())
    results = []
    try:
        results.append(
            test.run(
                "test_return_directive",
                'location / { return 200 "hello from nginx\\n"; }',
                check_body,
            )
        )
        results.append(
            test.run(
                "test_add_header_directive",
                "location / { add_header X-Tutorial daemon-controller always; return 204; }",
                check_header,
            )
        )
        results.append(
            test.run(
                "test_redirect_directive",
                "location = /old { return 301 /new; }",
                check_redirect,
            )
        )
    finally:
        test.controller.stop()  # a no-op unless a check crashed with nginx running
        shutil.rmtree(work, ignore_errors=True)
    print(f"{sum(results)} of {len(results)} tests passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
