"""A step of the wall clock does not make a live daemon "stale".

A PID file counts only if its process was created before the file was last
written; both times come from the wall clock. When the clock is stepped
forward after the file was written (NTP at boot), the file's mtime lies before
the process's computed creation time. For a daemon we started, the start
record's identity (PID and start time in clock ticks, which no clock step
changes) is trusted instead. Stepping the clock for real would disturb the
whole machine, so the test moves the file's mtime back instead: the same
comparison, seen from the other side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from adversary import posix_only

TESTS = Path(__file__).resolve().parent
#: Long before any process on this machine was created.
LONG_AGO = 1_000_000_000.0

_FRESH_CONTROLLER = """
import json, sys
from daemon_controller import Daemon
pid_file = sys.argv[1]
daemon = Daemon("echo").pid(pid_file)
print(json.dumps({"running": daemon.is_running(), "pid": daemon.read_pid()}))
"""


def fresh_controller(pid_file: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_CONTROLLER, str(pid_file)],
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@posix_only
@pytest.mark.parametrize("foreground", [False, True])
def test_a_clock_step_does_not_make_our_daemon_stale(echo, foreground):
    daemon = echo("--foreground").foreground() if foreground else echo()
    daemon.start()
    try:
        pid = daemon.read_pid()
        assert pid is not None
        os.utime(echo.pid_file, (LONG_AGO, LONG_AGO))  # the clock jumped after the write
        assert fresh_controller(echo.pid_file) == {"running": True, "pid": pid}
        assert echo.pid_file.exists()
        assert daemon.is_running()
    finally:
        daemon.stop()
    assert echo.marked() == []


@posix_only
def test_a_record_of_another_process_start_does_not_vouch_for_a_reused_pid(echo):
    daemon = echo()
    daemon.start()
    try:
        pid = daemon.read_pid()
        record_path = daemon._target().files.record
        record = json.loads(record_path.read_text())
        assert record["pid"] == pid
        record["stamp"] += 1  # the recorded process started at another moment: not this one
        record_path.write_text(json.dumps(record))
        os.utime(echo.pid_file, (LONG_AGO, LONG_AGO))
        assert fresh_controller(echo.pid_file)["running"] is False
    finally:
        echo.pid_file.write_text(f"{pid}\n")
        record_path.unlink()
        daemon.stop()
    assert echo.marked() == []
