"""Ports chosen when a daemon starts: ``port()``, ``{port}``, ``read_port()``, and taken ports.

* ``{port}`` is filled in in the start command (str and argv), ``env``
  values, the stop command and the ping (TCP, HTTP), with the port chosen at
  start, which is recorded beside the lock file and read back by every
  process (``read_port()``, ``status().port``, ``expand()``);
* a restart keeps the port while it is free; ``port(N)`` fixes it;
* a port taken between our choice and the daemon's bind (the daemon says
  "address in use", or dies silently while something holds the port) makes
  the start choose another; after a few, the start fails naming the holder;
  other failures are not retried;
* placeholders used but not declared, or where they cannot be, are refused
  when the daemon is resolved.

Every daemon carries the ``DC_TEST_ID`` marker, so the ``_sweep`` fixture
sees anything a test leaves behind; :func:`runtime_files.forget` removes the
files they keep in the runtime directory.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from echo_server import echo_command
from helpers import MARKER, free_port, roundtrip, wait_until
from runtime_files import forget, placed_echo

from daemon_controller import Daemon, DaemonError, StartError, StartTimeout, TcpPing, load
from daemon_controller._attempts import ATTEMPTS
from daemon_controller._probes import PingUnusable


def _listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


# -- a port chosen at start --------------------------------------------------------------------


def test_port_is_chosen_at_start_filled_in_recorded_and_read_back(tmp_path, test_id, daemons):
    daemon = placed_echo("ported", tmp_path, test_id)
    daemons.append(daemon)
    assert daemon.config.port == "auto"
    assert daemon.read_port() is None  # not running: no port yet
    daemon.start()
    port = daemon.read_port()
    assert isinstance(port, int)
    assert roundtrip(port) == b"hello daemon\n"  # the daemon really listens there
    recorded = daemon.resolved()._target().files.port
    assert recorded.read_text().strip() == str(port)
    status = daemon.status()
    assert (status.port, status.ping, status.answering) == (port, f"tcp://127.0.0.1:{port}", True)
    assert daemon.expand("127.0.0.1:{port}") == f"127.0.0.1:{port}"
    daemon.stop()
    assert daemon.read_port() is None
    assert daemon.status().port is None


def test_another_process_sees_the_same_port(tmp_path, test_id, daemons, child):
    daemon = placed_echo("shared port", tmp_path, test_id)
    daemons.append(daemon)
    daemon.start()
    script = textwrap.dedent(f"""
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from pathlib import Path
        from runtime_files import placed_echo
        other = placed_echo("shared port", Path(args[0]), args[1])
        tell_parent([other.read_port(), other.read_pid()])
    """)
    seen = child(script, str(tmp_path), test_id).finish()
    assert seen == [daemon.read_port(), daemon.read_pid()]


def test_port_in_str_command_env_and_http_ping(tmp_path, test_id, daemons):
    # A shell command, the port handed over in an environment variable too,
    # and an HTTP ping: python -m http.server in the foreground.
    record = tmp_path / "env.json"
    daemon = (
        Daemon("web")
        .port()
        .start_with(f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1")
        .foreground()
        .env({"WEB_PORT": "{port}", "RECORD": str(record)})
        .ping_http("http://127.0.0.1:{port}/")
        .before_start(lambda d: record.write_text(json.dumps(dict(d.config.env))))
        .cwd(tmp_path)
        .env({MARKER: test_id})
        .start_timeout(20)
    )
    daemons.append(daemon)
    daemon.start()
    port = daemon.read_port()
    assert port is not None
    assert json.loads(record.read_text())["WEB_PORT"] == str(port)
    assert daemon.status().ping == f"http://127.0.0.1:{port}/"
    assert daemon.status().answering is True


def test_restart_keeps_the_port_and_the_stop_command_gets_it(tmp_path, test_id, daemons):
    said = tmp_path / "stop.txt"
    daemon = (
        placed_echo("restarted", tmp_path, test_id)
        .stop_with(f"echo {{port}} > {said} && kill $(cat {{run_dir}}/echo.pid)")
        .dont_stop_if_pid_file_invalid()
    )
    daemons.append(daemon)
    daemon.start()
    port, pid = daemon.read_port(), daemon.read_pid()
    daemon.restart()
    assert daemon.read_pid() != pid
    assert daemon.read_port() == port
    assert said.read_text().strip() == str(port)
    daemon.stop()
    assert not daemon.is_running()


def test_a_fixed_port_fills_the_same_templates(tmp_path, test_id, daemons):
    port = free_port()
    daemon = placed_echo("fixed", tmp_path, test_id).port(port)
    daemons.append(daemon)
    daemon.start()
    assert daemon.read_port() == port
    assert roundtrip(port) == b"hello daemon\n"


def test_the_record_is_never_written_through_a_symlink_or_into_a_fifo(tmp_path, test_id, daemons):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    daemon = placed_echo("guarded", tmp_path, test_id)
    daemons.append(daemon)
    record = daemon.resolved()._target().files.port
    record.symlink_to(precious)
    daemon.start()
    assert precious.read_text() == "keep me\n"
    assert not record.is_symlink()
    assert record.read_text().strip() == str(daemon.read_port())
    daemon.stop()
    record.unlink()
    os.mkfifo(record)
    daemon.start()  # no reader on the FIFO: opening it must not hang the start
    assert record.is_file()
    assert record.read_text().strip() == str(daemon.read_port())


def test_port_rejects_what_is_not_a_port():
    for wrong in (0, 65536, -1, "6379", True, 1.5):
        with pytest.raises(ValueError, match="port"):
            Daemon("x").port(wrong)  # type: ignore[arg-type]


def test_undeclared_or_misplaced_placeholders_are_refused(tmp_path):
    base = Daemon("p").start_with(["serve", "--port", "{port}"]).pid(tmp_path / "p.pid")
    with pytest.raises(ValueError, match=r"start_command use\(s\) \{port\}.*add \.port\(\)"):
        base.log(tmp_path / "p.log").ping_tcp("127.0.0.1", 1).start()
    with pytest.raises(ValueError, match=r"ping use\(s\) \{port\}"):
        Daemon("p").ping_tcp("127.0.0.1", "{port}").pid(tmp_path / "p.pid").is_running()
    with pytest.raises(ValueError, match=r"pid_file cannot use \{port\}"):
        base.port().pid(tmp_path / "{port}.pid").is_running()
    with pytest.raises(ValueError, match=r"\{run_dir\}.*add \.run_dir\(\)"):
        Daemon("r").pid("{run_dir}/r.pid").is_running()
    with pytest.raises(ValueError, match=r"must be an int from 1 to 65535 or '\{port\}'"):
        Daemon("t").ping_tcp("127.0.0.1", "6379")  # type: ignore[arg-type]


def test_a_ping_still_waiting_for_its_port_says_so():
    with pytest.raises(PingUnusable, match="known only once the daemon has started"):
        TcpPing("127.0.0.1", "{port}").check(0.1)


def test_expand_needs_a_running_daemon_for_the_port(tmp_path, test_id):
    daemon = placed_echo("idle", tmp_path, test_id)
    run_dir = daemon.resolved().config.run_dir
    assert daemon.expand("{run_dir}/x") == f"{run_dir}/x"
    with pytest.raises(DaemonError, match="not running"):
        daemon.expand("{port}")


# -- a port taken before the daemon could bind it ------------------------------------------------


def _occupy(port: int) -> list[socket.socket]:
    """Use ``port`` as an outgoing connection does: the way a chosen port is lost in real life.

    A connection does not answer pings on the port (a listener would, and
    be taken for the daemon), and psutil sees who holds it.
    """
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.bind(("127.0.0.1", port))
    client.connect(server.getsockname())
    accepted, _ = server.accept()
    return [server, client, accepted]


class Thief:
    """A ``before_start`` that takes the chosen port first, for the first ``times`` attempts."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.ports: list[int] = []
        self.sockets: list[socket.socket] = []

    def __call__(self, daemon: Daemon) -> None:
        port = daemon.config.port
        assert isinstance(port, int)
        self.ports.append(port)
        if len(self.ports) <= self.times:
            self.sockets += _occupy(port)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def thief():
    thieves: list[Thief] = []

    def make(times: int) -> Thief:
        thieves.append(Thief(times))
        return thieves[-1]

    yield make
    for each in thieves:
        each.close()


def test_a_port_taken_before_the_bind_is_replaced_by_another(tmp_path, test_id, daemons, thief):
    # The daemon logs "Address already in use" and exits: choose again.
    steal = thief(times=2)
    daemon = placed_echo("robbed", tmp_path, test_id).before_start(steal)
    daemons.append(daemon)
    daemon.start()
    assert len(steal.ports) == 3
    assert len(set(steal.ports)) == 3
    assert daemon.read_port() == steal.ports[-1]
    assert roundtrip(steal.ports[-1]) == b"hello daemon\n"
    log = (daemon.resolved().config.run_dir / "echo.log").read_text()
    assert log.count("Address already in use") == 2


def test_a_silent_death_while_the_port_is_held_is_retried(tmp_path, test_id, daemons, thief):
    # No log: the daemon's bind error is lost, but something holds the port.
    steal = thief(times=1)
    daemon = placed_echo("mute", tmp_path, test_id, log_file=False).before_start(steal)
    daemons.append(daemon)
    daemon.start()
    assert len(steal.ports) == 2
    assert daemon.read_port() == steal.ports[1]


def test_every_port_taken_fails_naming_the_holder(tmp_path, test_id, daemons, thief):
    steal = thief(times=ATTEMPTS)
    daemon = placed_echo("unlucky", tmp_path, test_id).before_start(steal)
    daemons.append(daemon)
    with pytest.raises(StartError) as caught:
        daemon.start()
    assert len(steal.ports) == ATTEMPTS
    message = str(caught.value)
    assert f"each of {ATTEMPTS} ports chosen for it" in message
    assert f"port {steal.ports[-1]} is held by PID {os.getpid()}" in message
    assert "Address already in use" in message  # the daemon's own line
    assert caught.value.reason == "address in use"
    assert not daemon.is_running()


def test_other_failures_are_not_retried(tmp_path, test_id, daemons):
    attempts = []
    daemon = (
        placed_echo("broken", tmp_path, test_id, "--exit-after-pid", "3")
        .before_start(lambda d: attempts.append(d.config.port))
    )  # fmt: skip
    daemons.append(daemon)
    with pytest.raises(StartError) as caught:
        daemon.start()
    assert not isinstance(caught.value, StartTimeout)
    assert "exited before it answered" in str(caught.value)
    assert len(attempts) == 1


def test_a_fixed_port_that_is_taken_is_not_replaced(tmp_path, test_id, daemons):
    port = free_port()
    taken = _listener(port)
    try:
        daemon = placed_echo("stubborn", tmp_path, test_id).port(port).start_timeout(5)
        daemons.append(daemon)
        with pytest.raises(StartError, match="already answered"):
            daemon.start()
    finally:
        taken.close()


def test_a_recorded_port_that_is_taken_now_is_not_reused(tmp_path, test_id, daemons):
    daemon = placed_echo("moved", tmp_path, test_id)
    daemons.append(daemon)
    daemon.start()
    first = daemon.read_port()
    assert first is not None
    daemon.stop()
    squatter = _listener(first)
    try:
        daemon.start()
        assert daemon.read_port() != first
        assert wait_until(lambda: roundtrip(daemon.read_port() or 0) == b"hello daemon\n")
    finally:
        squatter.close()


# -- daemons.toml -----------------------------------------------------------------------------


def test_toml_port_auto_and_fixed(tmp_path, test_id):
    argv = json.dumps(echo_command("--port", "{port}", "--pid-file", "{run_dir}/e.pid"))
    (tmp_path / "daemons.toml").write_text(
        textwrap.dedent(f"""
        [daemons.auto]
        start = {argv}
        port = "auto"
        run_dir = "auto"
        ping = "tcp://127.0.0.1:{{port}}"
        pid = "{{run_dir}}/e.pid"
        log = "{{run_dir}}/e.log"
        env = {{ {MARKER} = "{test_id}" }}

        [daemons.fixed]
        start = "serve --port {{port}}"
        port = 6390
        ping = "http://127.0.0.1:{{port}}/health"
        pid = "run/f.pid"
        log = "run/f.log"
        """)
    )
    daemons = load(tmp_path / "daemons.toml")
    auto, fixed = daemons["auto"], daemons["fixed"]
    assert (auto.config.port, auto.config.run_dir, fixed.config.port) == ("auto", "auto", 6390)
    assert auto.config.ping == TcpPing("127.0.0.1", "{port}")
    try:
        auto.start()
        port = auto.read_port()
        assert port is not None
        assert roundtrip(port) == b"hello daemon\n"
        run_dir = auto.resolved().config.run_dir
        assert (run_dir / "e.pid").is_file()
    finally:
        auto.stop()
        forget(auto)


@pytest.mark.parametrize("value", ['"any"', "0", "true", "70000"])
def test_toml_port_rejects_other_values(tmp_path, value):
    from daemon_controller import ConfigError  # noqa: PLC0415 - one test's import

    (tmp_path / "daemons.toml").write_text(
        f'[daemons.x]\nstart = "true"\nping = "true"\npid = "x.pid"\nlog = "x.log"\n'
        f"port = {value}\n"
    )
    with pytest.raises(ConfigError, match="port"):
        load(tmp_path / "daemons.toml")


# -- the builder -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "field", "value"),
    [
        ("port", (), "port", "auto"),
        ("port", (6390,), "port", 6390),
        ("run_dir", (), "run_dir", "auto"),
        ("instance", ("gw0",), "instance", "gw0"),
    ],
)
def test_builder_methods_return_a_new_daemon(method, args, field, value):
    base = Daemon("builder").start_with(["serve"])
    new = getattr(base, method)(*args)
    assert getattr(new.config, field) == value
    assert getattr(base.config, field) is None
    assert new.name == base.name
    assert new.config.start_command == ("serve",)


def test_prepare_implies_a_run_dir_and_keeps_a_given_one(tmp_path):
    prepared = Daemon("p").prepare(["initdb", "{run_dir}/data"], inputs=["schema.sql"])
    assert prepared.config.run_dir == "auto"
    assert prepared.config.prepare is not None
    assert prepared.config.prepare.inputs == (Path.cwd() / "schema.sql",)
    kept = Daemon("p").run_dir(tmp_path).prepare("initdb {run_dir}/data")
    assert kept.config.run_dir == tmp_path
    with pytest.raises(ValueError, match=r"preparation cannot use \{port\}"):
        Daemon("p").port().prepare("load --port {port}").is_running()
