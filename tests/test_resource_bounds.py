"""Bounds that hold whatever the daemon, its files or its options do.

* Captured output is bounded: a start command printing 64 MiB gives an error
  (and a ``.failure`` record) of about 64 KiB, its beginning and its end.
* Lock descriptors do not leak: 1,200 daemons, each in a temporary directory
  removed afterwards, under a limit of 256 open files.
* Any timeout the builder or daemons.toml accepts works, ``inf`` included.
* ``start_timeout`` bounds ``start()`` whatever the ping does: an HTTP server
  trickling its answer a byte at a time does not hold it (nor ``status``).
* Pings that could never succeed fail when they are built, and a deeply
  nested daemons.toml is a configuration error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adversary import posix_only, script
from helpers import MARKER, marked

from daemon_controller import ConfigError, Daemon, StartError, StartTimeout, load

TESTS = Path(__file__).resolve().parent
CHILD = {
    "cwd": TESTS,
    "env": {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
}

# -- captured output --------------------------------------------------------------------------

_PRINT_A_LOT = """
import sys
sys.stdout.write("the first line\\n")
sys.stdout.flush()
chunk = b"x" * (1024 * 1024)
for _ in range(64):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.flush()
sys.stderr.write("\\nthe real error\\n")
sys.exit(3)
"""


def test_a_start_command_printing_64_mib_makes_an_error_of_64_kib(tmp_path, test_id, port):
    program = script(tmp_path, "loud.py", _PRINT_A_LOT)
    daemon = (
        Daemon("loud")
        .start_with([sys.executable, str(program)])
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as info, daemon.running():
        pytest.fail("a failing daemon entered the block")
    output = info.value.output
    assert output is not None
    assert len(output) < 66 * 1024
    assert output.startswith("the first line")
    assert output.rstrip().endswith("the real error")
    assert "bytes left out ..." in output
    left_out = int(output.split("[... ")[1].split(" bytes")[0])
    assert left_out > 63 * 1024 * 1024
    assert len(str(info.value)) < 67 * 1024
    assert daemon._target().files.failure.stat().st_size < 512 * 1024


_CHATTER = """
import sys, time
chunk = b"y" * (1024 * 1024)
while True:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    time.sleep(0.02)
"""


@pytest.mark.parametrize("foreground", [False, True])
def test_a_chatty_program_that_never_answers_makes_a_bounded_timeout(
    tmp_path, test_id, port, foreground
):
    program = script(tmp_path, "chatty.py", _CHATTER)
    daemon = (
        Daemon("chatty")
        .start_with([sys.executable, str(program)])
        .ping_tcp("127.0.0.1", port)
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .start_timeout(1)
        .start_abort_timeout(1)
        .foreground(foreground)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartTimeout) as info:
        daemon.start()
    assert len(str(info.value)) < 67 * 1024
    assert marked(test_id) == []


# -- lock descriptors -------------------------------------------------------------------------

_MANY_DAEMONS = """
import json, os, resource, shutil, subprocess, tempfile
from pathlib import Path
from daemon_controller import Daemon, _lock

resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
alive = subprocess.Popen(["sleep", "60"])  # named in every PID file: its verdict holds a pidfd
for number in range(1200):
    base = Path(tempfile.mkdtemp())
    (base / "d.pid").write_text(f"{alive.pid}\\n")
    daemon = Daemon(f"d{number}").pid(base / "d.pid")
    daemon.is_running()
    daemon.read_pid()
    shutil.rmtree(base)
alive.kill()
alive.wait()
print(json.dumps({"cached": len(_lock._state.files)}))
"""


@posix_only
@pytest.mark.slow
def test_a_thousand_daemons_in_removed_directories_do_not_run_out_of_descriptors():
    result = subprocess.run(
        [sys.executable, "-c", _MANY_DAEMONS],
        **CHILD,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["cached"] <= 64


# -- timeouts of any size ---------------------------------------------------------------------

INFINITY = float("inf")


@pytest.mark.parametrize("seconds", [INFINITY, 1e10, 1e300])
def test_any_stop_timeout_the_builder_accepts_works(echo, seconds):
    daemon = echo().stop_timeout(seconds).start_timeout(seconds).ping_interval(seconds)
    daemon.start()
    pid = daemon.read_pid()
    daemon.stop()
    assert pid is not None
    assert not daemon.is_running()
    assert echo.marked() == []


def test_an_infinite_abort_timeout_still_aborts(echo):
    # The daemon takes a moment to exit after SIGTERM: the abort waits for it.
    daemon = (
        echo("--wait-before-listen", "30", "--stop-delay", "0.3")
        .start_timeout(0.5)
        .start_abort_timeout(INFINITY)
    )
    with pytest.raises(StartTimeout):
        daemon.start()
    assert echo.marked() == []


def test_an_infinite_timeout_with_a_stop_command_works(echo):
    daemon = echo().stop_with(f"kill $(cat {echo.pid_file})").stop_timeout(INFINITY)
    daemon.start()
    daemon.stop()
    assert echo.marked() == []


def test_inf_in_daemons_toml_works_from_the_command_line(tmp_path, echo):
    echo()  # for the paths and the port
    config = tmp_path / "daemons.toml"
    command = json.dumps(
        [
            sys.executable,
            str(TESTS / "echo_server.py"),
            "--port",
            str(echo.port),
            "--pid-file",
            str(echo.pid_file),
            "--log-file",
            str(echo.log_file),
        ]
    )
    config.write_text(
        "[daemons.echo]\n"
        f"start = {command}\n"
        f'ping = "tcp://127.0.0.1:{echo.port}"\n'
        f'pid = "{echo.pid_file}"\n'
        f'log = "{echo.log_file}"\n'
        "stop_timeout = inf\n"
        "start_timeout = inf\n"
        "start_abort_timeout = inf\n"
        f'env = {{ {MARKER} = "{echo.test_id}" }}\n'
    )
    daemon = load(config)["echo"]
    assert daemon.config.stop_timeout == INFINITY
    cli = [sys.executable, "-m", "daemon_controller", "-c", str(config)]
    for action in ("up", "down"):
        result = subprocess.run(
            [*cli, action], **CHILD, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, (action, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    assert echo.marked() == []


# -- a ping that trickles ---------------------------------------------------------------------

_TRICKLE = """
import socket, sys, threading, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))


def trickle(conn):
    try:
        conn.recv(4096)
        for byte in b"HTTP/1.1 200 OK\\r\\n" + b"X-Slow: " + b"y" * 10000:
            conn.sendall(bytes([byte]))
            time.sleep(0.5)
    except OSError:
        pass
    finally:
        conn.close()


while True:
    conn, _ = listener.accept()
    threading.Thread(target=trickle, args=(conn,), daemon=True).start()
"""


@pytest.mark.timeout(60)
def test_start_timeout_bounds_a_start_whose_http_ping_trickles(tmp_path, test_id, port):
    program = script(tmp_path, "trickle.py", _TRICKLE)
    daemon = (
        Daemon("trickle")
        .start_with([sys.executable, str(program), str(port)])
        .foreground()
        .ping_http(f"http://127.0.0.1:{port}/")
        .pid(tmp_path / "d.pid")
        .log(tmp_path / "d.log")
        .start_timeout(2)
        .start_abort_timeout(2)
        .env({MARKER: test_id})
    )
    began = time.monotonic()
    with pytest.raises(StartTimeout):
        daemon.start()
    assert time.monotonic() - began < 2 + 1.5
    assert marked(test_id) == []


@pytest.mark.timeout(60)
def test_status_is_not_held_by_an_http_ping_that_trickles(tmp_path, test_id, port):
    program = script(tmp_path, "trickle.py", _TRICKLE)
    server = subprocess.Popen(
        [sys.executable, str(program), str(port)], env={**os.environ, MARKER: test_id}
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        (tmp_path / "d.pid").write_text(f"{server.pid}\n")
        config = tmp_path / "daemons.toml"
        config.write_text(
            "[daemons.trickle]\n"
            'start = "true"\n'
            f'ping = "http://127.0.0.1:{port}/"\n'
            'pid = "d.pid"\n'
            'log = "d.log"\n'
        )
        began = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "daemon_controller", "-c", str(config), "status", "--json"],
            **CHILD,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert time.monotonic() - began < 10, result.stdout
        assert "no answer" in result.stdout
    finally:
        server.kill()
        server.wait(timeout=10)


# -- pings that could never succeed -----------------------------------------------------------


@posix_only
def test_a_unix_socket_path_too_long_to_connect_to_fails_at_build_time(tmp_path):
    limit = 107 if sys.platform.startswith("linux") else 103
    fits = "/" + "s" * (limit - 1)
    Daemon("fits").ping_unix(fits)
    too_long = fits + "s"
    with pytest.raises(ValueError, match=f"up to {limit} bytes"):
        Daemon("too long").ping_unix(too_long)
    config = tmp_path / "daemons.toml"
    config.write_text(
        f'[daemons.d]\nstart = "true"\nping = "unix://{too_long}"\npid = "p"\nlog = "l"\n'
    )
    with pytest.raises(ConfigError, match="bytes"):
        load(config)


def test_an_http_url_with_credentials_fails_at_build_time():
    with pytest.raises(ValueError, match="credentials"):
        Daemon("secret").ping_http("http://user:secret@127.0.0.1:8080/health")
    with pytest.raises(ValueError, match="credentials"):
        Daemon("user").ping_http("http://user@127.0.0.1:8080/health")


def test_deeply_nested_daemons_toml_is_a_configuration_error(tmp_path):
    config = tmp_path / "daemons.toml"
    config.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load(config)
