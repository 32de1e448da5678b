"""The readiness probes: each kind against real listeners, and each used for real in a start.

``TcpPing``, ``UnixPing``, ``HttpPing``, ``CommandPing`` and ``CallablePing``
are checked directly against listeners in this process (what counts as ready,
what counts as "not yet", what propagates); then every ``ping_*`` builder
method is used in a real start of an echo-server daemon.
"""

from __future__ import annotations

import errno
import http.server
import os
import socket
import sys
import threading
import urllib.request

import psutil
import pytest
from echo_server import echo_command
from helpers import free_port, gone, pid_in_file, roundtrip, wait_until

from daemon_controller import CallablePing, CommandPing, Daemon, HttpPing, TcpPing, UnixPing
from daemon_controller._probes import PingUnusable

NAME = "Probe test daemon"


def _ping_fn() -> bool:
    return True


# -- probes against real listeners -------------------------------------------------------------


def _listening_tcp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(8)
    return sock


def test_tcp_ping_against_a_listener_and_a_closed_port():
    with _listening_tcp() as listener:
        port = listener.getsockname()[1]
        assert TcpPing("127.0.0.1", port).check(2) is True
        assert TcpPing("localhost", port).check(2) is True
    assert TcpPing("127.0.0.1", port).check(2) is False
    assert TcpPing("no-such-host.invalid", port).check(2) is False


def test_tcp_ping_tries_ipv6_addresses_too():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("cannot create an IPv6 socket")
    with listener:
        try:
            listener.bind(("::1", free_port()))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        listener.listen(8)
        port = listener.getsockname()[1]
        assert TcpPing("::1", port).check(2) is True
        names = {info[4][0] for info in socket.getaddrinfo("localhost", port)}
        if "::1" in names:
            # Only the IPv6 address answers: every resolved address must be tried.
            assert TcpPing("localhost", port).check(2) is True


def test_unix_ping_against_a_listener_a_dead_socket_and_no_file(tmp_path):
    path = tmp_path / "ping.sock"
    assert UnixPing(path).check(2) is False
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(path))
        listener.listen(8)
        assert UnixPing(path).check(2) is True
        assert Daemon(NAME).ping_unix(path).config.ping.check(2) is True
    # The socket file is still there, but nobody listens: refused.
    assert path.exists()
    assert UnixPing(path).check(2) is False


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(self.path.split("?")[0].strip("/") or "200")
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", "/200")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "ready"), [(200, True), (204, True), (302, True), (404, False), (500, False)]
)
def test_http_ping_status_codes(http_server, status, ready):
    assert HttpPing(f"http://127.0.0.1:{http_server}/{status}").check(5) is ready


def test_http_ping_closed_port_and_query(http_server):
    assert HttpPing(f"http://127.0.0.1:{http_server}/200?probe=1").check(5) is True
    assert HttpPing(f"http://127.0.0.1:{free_port()}/").check(2) is False


def test_http_ping_against_a_non_http_listener():
    with _listening_tcp() as listener:
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"this is not http\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        try:
            assert HttpPing(f"http://127.0.0.1:{port}/").check(5) is False
        finally:
            thread.join(timeout=10)


def test_command_ping_exit_status(tmp_path):
    assert CommandPing("exit 0").check(5) is True
    assert CommandPing("exit 1").check(5) is False
    assert CommandPing((sys.executable, "-c", "raise SystemExit(0)")).check(5) is True
    assert CommandPing((sys.executable, "-c", "raise SystemExit(3)")).check(5) is False
    # A command that cannot run can never answer: said at once, not "not yet".
    with pytest.raises(PingUnusable, match="no-such-program"):
        CommandPing((str(tmp_path / "no-such-program"),)).check(5)
    with pytest.raises(PingUnusable, match="not found") as info:
        CommandPing("no-such-program --flag").check(5)
    assert info.value.exit_status == 127
    marker = tmp_path / "ready"
    ping = Daemon(NAME).ping_command(f"test -e {marker}").config.ping
    assert ping.check(5) is False
    marker.touch()
    assert ping.check(5) is True


def test_callable_ping_closes_a_returned_socket():
    with _listening_tcp() as listener:
        port = listener.getsockname()[1]
        returned: list[socket.socket] = []

        def fn() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            returned.append(sock)
            return sock

        assert CallablePing(fn).check(2) is True
        assert len(returned) == 1
        assert returned[0].fileno() == -1  # closed by the probe
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(1) == b""  # the peer sees the close


def test_callable_ping_ignores_errors_from_close():
    closes = []

    class Grumpy:
        def close(self) -> None:
            closes.append(1)
            raise OSError(errno.EBADF, "already closed")

    assert CallablePing(Grumpy).check(1) is True
    assert closes == [1]


@pytest.mark.parametrize(
    ("result", "ready"), [(None, False), (False, False), (0, False), (True, True), ("yes", True)]
)
def test_callable_ping_truthiness(result, ready):
    assert CallablePing(lambda: result).check(1) is ready


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        TimeoutError("timed out"),
        FileNotFoundError(errno.ENOENT, "no socket"),
        OSError(errno.ENETUNREACH, "unreachable"),
        OSError(errno.EADDRNOTAVAIL, "not available"),
        OSError(errno.EINVAL, "invalid"),
    ],
    ids=lambda e: type(e).__name__ + str(getattr(e, "errno", "")),
)
def test_callable_ping_connect_errors_mean_not_ready(error):
    def fn():
        raise error

    assert CallablePing(fn).check(1) is False


@pytest.mark.parametrize(
    "error",
    [ValueError("bug in the ping"), PermissionError(errno.EACCES, "denied"), KeyError("k")],
    ids=["ValueError", "PermissionError", "KeyError"],
)
def test_callable_ping_other_errors_propagate(error):
    def fn():
        raise error

    with pytest.raises(type(error)) as info:
        CallablePing(fn).check(1)
    assert info.value is error


def test_probes_describe_themselves(tmp_path):
    assert "127.0.0.1" in TcpPing("127.0.0.1", 80).describe()
    assert "80" in TcpPing("127.0.0.1", 80).describe()
    assert str(tmp_path / "s") in UnixPing(tmp_path / "s").describe()
    assert HttpPing("http://x/").describe() == "http://x/"
    assert "exit 0" in CommandPing("exit 0").describe()
    assert "_ping_fn" in CallablePing(_ping_fn).describe()
    assert os.sep in UnixPing(tmp_path / "s").describe()


# -- each ping in a real start ----------------------------------------------------------------


def test_ping_unix(echo, tmp_path):
    sock_path = tmp_path / "echo.sock"
    daemon = (
        echo()
        .start_with(
            echo_command(
                "--unix",
                str(sock_path),
                "--pid-file",
                str(echo.pid_file),
                "--log-file",
                str(echo.log_file),
                "--wait-before-listen",
                "0.3",
            )
        )
        .ping_unix(sock_path)
    )
    daemon.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(sock_path))
            sock.sendall(b"over unix")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"over unix"
    finally:
        daemon.stop()


def test_ping_http_with_a_foreground_http_server(echo, tmp_path):
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served by http.server")
    daemon = (
        echo(port=port)
        .start_with([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
        .ping_http(f"http://127.0.0.1:{port}/")
        .foreground()
        .cwd(www)
    )
    daemon.start()
    try:
        pid = pid_in_file(echo.pid_file)
        assert "http.server" in psutil.Process(pid).cmdline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as resp:
            assert resp.read() == b"served by http.server"
    finally:
        daemon.stop()
    assert wait_until(lambda: gone(pid))


def test_ping_command(echo):
    port = free_port()
    check = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
    daemon = echo("--wait-before-listen", "0.3", port=port).ping_command(
        [sys.executable, "-c", check]
    )
    daemon.start()
    try:
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()


def test_ping_function_result_is_closed(echo):
    port = free_port()
    returned: list[socket.socket] = []

    def ping():
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        returned.append(sock)
        return sock

    daemon = echo("--wait-before-listen", "0.3", port=port).ping(ping)
    daemon.start()
    try:
        assert returned
        assert all(sock.fileno() == -1 for sock in returned)
        assert roundtrip(port) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "::1"])
def test_ping_tcp_localhost(echo, listen_host):
    families = {info[0] for info in socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)}
    wanted = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    if wanted not in families:
        pytest.skip(f"'localhost' does not resolve to {listen_host} on this machine")
    port = free_port()
    daemon = echo("--host", listen_host, port=port).ping_tcp("localhost", port)
    daemon.start()
    try:
        assert roundtrip(port, host=listen_host) == b"hello daemon\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "::1"])
def test_ping_tcp_tries_every_address(echo, monkeypatch, listen_host):
    # A host name that resolves to both loopback addresses, the one the daemon
    # does NOT listen on first (what /etc/hosts with "::1 localhost" gives).
    # Only name resolution is stood in for; the connects are real.
    other = "::1" if listen_host == "127.0.0.1" else "127.0.0.1"
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "dual-stack.test":
            return real_getaddrinfo(other, port, *args, **kwargs) + real_getaddrinfo(
                listen_host, port, *args, **kwargs
            )
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    port = free_port()
    daemon = echo("--host", listen_host, port=port).ping_tcp("dual-stack.test", port)
    daemon.start()
    try:
        assert roundtrip(port, host=listen_host) == b"hello daemon\n"
    finally:
        daemon.stop()
