"""The command line and readiness the daemon tells: ``status`` shows how, and what it said.

``status --json`` gives each daemon's readiness methods (``notify``, ``log``,
``ping``) and the last ``STATUS=`` a notify daemon sent; the table says
"told by notify: <status>" where a daemon has no ping to answer.
"""

from __future__ import annotations

import io
import json
import sys
from typing import TYPE_CHECKING

import pytest
from echo_server import ECHO_SERVER
from helpers import MARKER, free_port

from daemon_controller import _cli, _cli_output, load

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="unix datagram sockets")


def cli(config: Path, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = _cli.run(["-c", str(config), *argv], out, err)
    assert code == 0, err.getvalue()
    return out.getvalue()


@pytest.fixture
def config(tmp_path: Path, test_id: str):
    ports = {name: free_port() for name in ("queue", "cache", "web")}
    env = f'env = {{ {MARKER} = "{test_id}" }}\n'

    def start(name: str, *args: str) -> str:
        argv = [sys.executable, str(ECHO_SERVER), "--port", str(ports[name]), "--foreground"]
        return f"[daemons.{name}]\nstart = {json.dumps([*argv, *args])}\n{env}"

    path = tmp_path / "daemons.toml"
    path.write_text(
        start("queue", "--notify-ready")
        + "notify = true\n"
        + start("cache", "--ready-log-line", "up")
        + 'foreground = true\nping_log = "up$"\n'
        + start("web")
        + f'foreground = true\nping = "tcp://127.0.0.1:{ports["web"]}"\n'
    )
    yield path
    cli(path, "down")


def test_status_says_how_each_daemon_is_ready_and_what_it_said(config):
    cli(config, "up")
    rows = {row["name"]: row for row in json.loads(cli(config, "status", "--json"))}
    assert rows["queue"]["readiness"] == ["notify"]
    assert rows["queue"]["notify_status"] == "Listening"
    assert rows["queue"]["ping"] is None
    assert rows["cache"]["readiness"] == ["log"]
    assert rows["cache"]["notify_status"] is None
    assert rows["web"]["readiness"] == ["ping"]
    assert rows["web"]["ping"] == "ok"
    assert all(row["state"] == "running" for row in rows.values())

    table = {line.split()[0]: line for line in cli(config, "status").splitlines()[1:]}
    assert table["queue"].endswith("told by notify: Listening")
    assert table["cache"].endswith("told by log")
    assert "ok (tcp://127.0.0.1:" in table["web"]

    cli(config, "down")
    rows = {row["name"]: row for row in json.loads(cli(config, "status", "--json"))}
    assert rows["queue"]["state"] == "stopped"
    assert rows["queue"]["notify_status"] is None  # only the running daemon's


def test_the_live_line_shows_what_a_notify_daemon_said_last(config):
    # The live line during `up` shows a daemon's latest STATUS= (else its last log line).
    cli(config, "up", "queue")
    daemon = load(config)["queue"]
    assert _cli_output._last_log_line(daemon) == "Listening"
