"""``Daemon.status()``: PID, since when, and whether the daemon answers its ping.

``is_running()`` keeps the gem's meaning (the PID file names a live process);
a status tells "running and answering" from "running, not answering". Read-only
questions leave no files behind.
"""

from __future__ import annotations

import time

from helpers import free_port

from daemon_controller import Daemon, Status


def test_status_of_a_stopped_daemon(echo):
    daemon = echo()
    status = daemon.status()
    assert isinstance(status, Status)
    assert status.pid is None
    assert not status.running
    assert status.answering is False  # nothing holds its address either
    assert status.since is None
    assert status.state == "stopped"
    assert not status.ok
    assert status.ping == f"tcp://127.0.0.1:{echo.port}"


def test_status_of_a_running_answering_daemon(echo):
    daemon = echo()
    daemon.start()
    try:
        status = daemon.status()
        assert status.running
        assert status.pid == daemon.read_pid()
        assert status.answering is True
        assert status.ok
        assert status.state == "running"
        assert status.since is not None
        assert 0 <= time.time() - status.since < 60
        assert status.uptime is not None
    finally:
        daemon.stop()


def test_status_of_a_running_daemon_that_does_not_answer(echo):
    daemon = echo()
    daemon.start()
    try:
        # The same process, asked on a port where nothing listens.
        silent = daemon.ping_tcp("127.0.0.1", free_port())
        status = silent.status(timeout=0.5)
        assert status.running
        assert silent.is_running()  # the gem's meaning is unchanged
        assert status.answering is False
        assert not status.ok
        assert status.state == "not answering"
    finally:
        daemon.stop()


def test_read_only_questions_create_no_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    daemon = Daemon("never started").pid(run / "d.pid").ping_tcp("127.0.0.1", free_port())
    assert not daemon.is_running()
    assert daemon.read_pid() is None
    assert daemon.status().state == "stopped"
    assert list(run.iterdir()) == []
