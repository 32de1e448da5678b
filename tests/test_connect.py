"""``Daemon.connect(fn)`` with real echo-server daemons.

``connect`` calls ``fn`` under a shared lock; when ``fn`` returns ``None`` or
raises a "cannot connect" error it takes the exclusive lock, starts the daemon
if it is not running and calls ``fn`` once more. These tests check each branch
against a real daemon: the socket it returns really echoes, a running daemon is
not restarted, the errors are the documented ones, and every connection error
that means "nobody is listening yet" counts as "cannot connect".
"""

from __future__ import annotations

import errno
import socket
import urllib.error

import pytest
from helpers import daemonized_count, echo_through, free_port, gone

from daemon_controller import ConnectError, StartError


def _connector(port: int):
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=5)

    return connect


def _pid_in_file(echo) -> int | None:
    # Read the file directly: observe the real state from inside fn without
    # going through the library (and its lock) that is under test.
    try:
        text = echo.pid_file.read_text()
    except FileNotFoundError:
        return None
    return int(text.split()[0]) if text.strip() else None


def test_connect_starts_a_stopped_daemon_and_returns_the_socket(echo):
    d = echo()
    assert not d.is_running()
    sock = d.connect(_connector(echo.port))
    try:
        assert isinstance(sock, socket.socket)
        assert echo_through(sock, b"hello through connect") == b"hello through connect"
        pid = d.read_pid()
        assert pid is not None
        assert not gone(pid)
        assert daemonized_count(echo.log_file) == 1
    finally:
        sock.close()
        d.stop()
    assert not d.is_running()


def test_connect_to_a_running_daemon_does_not_start_it_again(echo):
    d = echo()
    d.start()
    try:
        pid = d.read_pid()
        calls = []

        def fn():
            calls.append(1)
            return socket.create_connection(("127.0.0.1", echo.port), timeout=5)

        sock = d.connect(fn)
        with sock:
            assert echo_through(sock, b"ping") == b"ping"
        assert calls == [1]
        assert d.read_pid() == pid
        assert daemonized_count(echo.log_file) == 1
        assert len(echo.marked()) == 1
    finally:
        d.stop()


def test_fn_returning_none_starts_the_daemon_and_is_called_again(echo):
    d = echo()
    assert not d.is_running()
    results = iter([None, "connected"])
    calls = []

    def fn():
        calls.append(_pid_in_file(echo) is not None)
        return next(results)

    try:
        assert d.connect(fn) == "connected"
        # First call: not running; second call: after the start.
        assert calls == [False, True]
        assert d.is_running()
        assert daemonized_count(echo.log_file) == 1
    finally:
        d.stop()


def test_falsy_but_not_none_result_is_returned_without_starting(echo):
    d = echo()
    assert d.connect(lambda: 0) == 0
    assert d.connect(lambda: b"") == b""
    assert not d.is_running()
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_fn_still_none_after_start_raises_connect_error(echo):
    d = echo(name="Always-None echo")
    calls = []

    def fn():
        calls.append(1)

    try:
        with pytest.raises(ConnectError) as info:
            d.connect(fn)
        assert "Always-None echo" in str(info.value)
        assert info.value.identifier == "Always-None echo"
        assert info.value.__cause__ is None
        assert len(calls) == 2
        # The daemon was started for the second attempt and stays up.
        assert d.is_running()
    finally:
        d.stop()


def test_refused_after_start_raises_connect_error_caused_by_it(echo):
    d = echo(name="Refusing echo")
    closed_port = free_port()
    raised: list[OSError] = []

    def fn():
        try:
            return socket.create_connection(("127.0.0.1", closed_port), timeout=5)
        except ConnectionRefusedError as err:
            raised.append(err)
            raise

    try:
        with pytest.raises(ConnectError) as info:
            d.connect(fn)
        assert len(raised) == 2
        assert info.value.__cause__ is raised[-1]
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert "Refusing echo" in str(info.value)
        assert d.is_running()
    finally:
        d.stop()


def test_refused_on_a_running_daemon_raises_connect_error_without_restart(echo):
    d = echo(name="Running refusing echo")
    d.start()
    try:
        pid = d.read_pid()
        refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused on purpose")

        def fn():
            raise refused

        with pytest.raises(ConnectError) as info:
            d.connect(fn)
        assert info.value.__cause__ is refused
        assert "Running refusing echo" in str(info.value)
        assert d.read_pid() == pid
        assert daemonized_count(echo.log_file) == 1
    finally:
        d.stop()


def test_unrelated_exception_propagates_unchanged_and_starts_nothing(echo):
    d = echo()
    boom = ValueError("not a connect problem")

    def fn():
        raise boom

    with pytest.raises(ValueError) as info:
        d.connect(fn)
    assert info.value is boom
    assert not d.is_running()
    assert not echo.pid_file.exists()
    assert echo.marked() == []


def test_unrelated_os_error_propagates_and_starts_nothing(echo):
    d = echo()
    denied = PermissionError(errno.EACCES, "permission denied on purpose")

    def fn():
        raise denied

    with pytest.raises(PermissionError) as info:
        d.connect(fn)
    assert info.value is denied
    assert not d.is_running()
    assert echo.marked() == []


def test_unrelated_exception_on_the_second_attempt_propagates(echo):
    d = echo()
    boom = KeyError("second attempt")
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 1:
            return
        raise boom

    try:
        with pytest.raises(KeyError) as info:
            d.connect(fn)
        assert info.value is boom
        assert len(calls) == 2
        assert d.is_running()
    finally:
        d.stop()


CANNOT_CONNECT = [
    pytest.param(lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"), id="refused"),
    pytest.param(lambda: ConnectionResetError(errno.ECONNRESET, "reset"), id="reset"),
    pytest.param(lambda: TimeoutError("timed out"), id="timeout"),
    pytest.param(lambda: FileNotFoundError(errno.ENOENT, "no socket file"), id="enoent"),
    pytest.param(lambda: OSError(errno.ENETUNREACH, "unreachable"), id="enetunreach"),
    pytest.param(lambda: OSError(errno.EADDRNOTAVAIL, "addr n/a"), id="eaddrnotavail"),
    pytest.param(lambda: OSError(errno.EINVAL, "invalid"), id="einval"),
]


@pytest.mark.parametrize("make_error", CANNOT_CONNECT)
def test_each_cannot_connect_error_starts_the_daemon(echo, make_error):
    d = echo()
    assert not d.is_running()
    seen_running = []
    result = object()

    def fn():
        seen_running.append(_pid_in_file(echo) is not None)
        if len(seen_running) == 1:
            raise make_error()
        return result

    try:
        assert d.connect(fn) is result
        assert seen_running == [False, True]
        assert d.read_pid() is not None
        assert daemonized_count(echo.log_file) == 1
    finally:
        d.stop()


def test_start_failure_during_connect_propagates_as_start_error(echo):
    d = echo("--before-daemonize-message", "cannot start today", "--exit-before-daemonize", "4")
    calls = []

    def fn():
        calls.append(1)
        return socket.create_connection(("127.0.0.1", echo.port), timeout=5)

    with pytest.raises(StartError) as info:
        d.connect(fn)
    err = info.value
    assert not isinstance(err, ConnectError)
    assert err.exit_status == 4
    assert "cannot start today" in str(err)
    assert calls == [1]  # no second attempt after a failed start
    assert not d.is_running()
    assert echo.marked() == []


def _wrapped_connect(port: int, wrap):
    def connect() -> socket.socket:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as err:
            raise wrap(err) from err

    return connect


def _raise_chained(err: OSError) -> OSError:
    try:
        raise OSError("client library failure") from err
    except OSError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(urllib.error.URLError, id="urllib-reason"),
        pytest.param(_raise_chained, id="explicit-cause"),
    ],
)
def test_a_wrapped_connect_error_starts_the_daemon(echo, wrap):
    # Client libraries wrap the socket error (urllib's URLError keeps it as
    # `reason`); the wrapped error still means "cannot connect yet".
    daemon = echo()
    sock = daemon.connect(_wrapped_connect(echo.port, wrap))
    try:
        assert daemon.is_running()
    finally:
        sock.close()
        daemon.stop()


def test_a_real_os_error_raised_while_handling_a_refusal_is_not_a_connect_error(echo):
    daemon = echo()

    def connect() -> None:
        try:
            socket.create_connection(("127.0.0.1", echo.port), timeout=5)
        except ConnectionRefusedError:
            raise PermissionError(13, "denied while handling it") from None

    with pytest.raises(PermissionError):
        daemon.connect(connect)
    assert not daemon.is_running()
