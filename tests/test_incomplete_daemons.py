"""A daemon description that lacks a part fails before anything runs.

Every action that needs a part the description lacks raises ``ValueError``
naming the daemon and the part, before ``before_start`` is called, before
the start command runs, and before a connect function is called.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

import pytest
from helpers import MARKER, free_port

from daemon_controller import Daemon

if TYPE_CHECKING:
    from pathlib import Path

NAME = "Incomplete daemon"


def _touch_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]


@pytest.mark.parametrize("action", ["is_running", "read_pid", "stop", "start", "restart"])
def test_actions_without_pid_file(tmp_path, action):
    marker = tmp_path / "spawned"
    d = (
        Daemon(NAME)
        .start_with(_touch_command(marker))
        .ping_tcp("127.0.0.1", free_port())
        .log(tmp_path / "d.log")
    )
    with pytest.raises(ValueError) as info:
        getattr(d, action)()
    assert NAME in str(info.value)
    assert "pid_file" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("missing", ["start_command", "ping", "pid_file", "log_file"])
@pytest.mark.parametrize("action", ["start", "connect", "restart"])
def test_start_like_actions_name_the_missing_part(tmp_path, test_id, missing, action):
    marker = tmp_path / "spawned"
    parts = {
        "start_command": lambda d: d.start_with(_touch_command(marker)),
        "ping": lambda d: d.ping_tcp("127.0.0.1", free_port()),
        "pid_file": lambda d: d.pid(tmp_path / "d.pid"),
        "log_file": lambda d: d.log(tmp_path / "d.log"),
    }
    called: list[str] = []
    d = Daemon(NAME).env({MARKER: test_id}).before_start(lambda: called.append("before_start"))
    for name, add in parts.items():
        if name != missing:
            d = add(d)
    args = (lambda: called.append("connect function"),) if action == "connect" else ()
    with pytest.raises(ValueError) as info:
        getattr(d, action)(*args)
    text = str(info.value)
    assert re.search(f"(?s){NAME}.*{missing}", text), text
    assert not marker.exists()
    assert called == []
    assert not (tmp_path / "d.pid").exists()


def test_connect_needs_a_complete_daemon_before_calling_fn(tmp_path):
    d = Daemon("Half-built").pid(tmp_path / "d.pid").ping_tcp("127.0.0.1", free_port())
    calls = []
    with pytest.raises(ValueError, match="Half-built") as info:
        d.connect(lambda: calls.append(1))
    assert "start_command" in str(info.value)
    assert calls == []
