"""PostgreSQL, for real: ``pg_ctl start`` and the ``postgres`` binary in the foreground.

Covers initdb on first use in ``before_start`` (once, under the lock), running
as the ``postgres`` user with ``.user()`` when we are root (the PID file names
a postgres-owned ``postgres`` process; with ``foreground()`` it is our own
child, no wrapper in between), PostgreSQL refusing to run as root, its own
``postmaster.pid`` (first line the PID; removed at shutdown), ``pg_ctl stop``
on a stopped cluster exiting 1 and ``dont_stop_if_pid_file_invalid()`` making
``stop()`` quiet then, readiness (a unix-socket ping reports a server ready that
still rejects sessions; ``pg_isready`` does not), a start error with
PostgreSQL's own line, start/stop times, and ``notify()``: this PostgreSQL is
built with libsystemd and sends ``READY=1`` once it accepts sessions, so
neither a ping nor (in the foreground) a PID-file option is needed, in the
foreground and through ``pg_ctl start -W``, which does not wait itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import MARKER, free_port, time_start_stop

from daemon_controller import Daemon, StartError, StartTimeout, StopError

if TYPE_CHECKING:
    from pathlib import Path


class Cluster:
    """A PostgreSQL cluster in ``base/data``; socket, log and lock in ``base``."""

    def __init__(self, pg, base: Path, user: str | None, test_id: str) -> None:
        self.pg = pg
        self.base = base
        self.data = base / "data"
        self.user = user
        self.test_id = test_id
        self.port = free_port()
        self.initdb_runs = 0

    def initdb(self) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid}
        subprocess.run(
            [self.pg.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            cwd=self.base,
            capture_output=True,
            timeout=120,
            **kwargs,
        )
        self.initdb_runs += 1

    def initdb_on_first_use(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.initdb()

    def pg_isready(self) -> list[str]:
        where = ["-h", str(self.base), "-p", str(self.port)]
        return [self.pg.pg_isready, "-q", *where, "-U", "postgres"]

    def _common(self, daemon: Daemon) -> Daemon:
        daemon = (
            daemon.before_start(self.initdb_on_first_use)
            .pid(self.data / "postmaster.pid")
            .log(self.base / "postgresql.log")
            .lock(self.base / "postgresql.lock")
            .cwd(self.base)
            .start_timeout(60)
            .stop_timeout(60)
            .start_abort_timeout(5)
            .env({MARKER: self.test_id})
        )
        return daemon.user(self.user) if self.user else daemon

    def server_options(self) -> list[str]:
        return ["-k", str(self.base), "-p", str(self.port), "-c", "listen_addresses="]

    def with_pg_ctl(self, *extra: str) -> Daemon:
        options = " ".join([*self.server_options()[:-2], "-c", "listen_addresses=''", *extra])
        return self._common(
            Daemon("postgresql")
            .start_with(
                [
                    *(self.pg.pg_ctl, "start", "-w", "-D", str(self.data)),
                    *("-l", str(self.base / "postgresql.log"), "-o", options),
                ]
            )
            .stop_with([self.pg.pg_ctl, "stop", "-w", "-D", str(self.data), "-m", "fast"])
            .dont_stop_if_pid_file_invalid()
            .ping_command(self.pg_isready())
        )

    def in_foreground(self, *extra: str) -> Daemon:
        return self._common(
            Daemon("postgresql")
            .start_with([self.pg.postgres, "-D", str(self.data), *self.server_options(), *extra])
            .foreground()
            .stop_signal("INT")
            .ping_command(self.pg_isready())
        )

    def notifying(self, command: list[str]) -> Daemon:
        """Told by PostgreSQL itself when it is ready: no ping, no pid() or log()."""
        daemon = (
            Daemon(f"postgresql-notify-{self.test_id[:8]}")
            .start_with(command)
            .notify()
            .before_start(self.initdb_on_first_use)
            .cwd(self.base)
            .start_timeout(60)
            .stop_timeout(60)
            .start_abort_timeout(5)
            .env({MARKER: self.test_id})
        )
        return daemon.user(self.user) if self.user else daemon

    def notifying_in_foreground(self) -> Daemon:
        command = [self.pg.postgres, "-D", str(self.data), *self.server_options()]
        return self.notifying(command).stop_signal("INT")

    def notifying_pg_ctl(self) -> Daemon:
        # -W: pg_ctl returns at once; READY=1 says when the server is ready.
        options = " ".join([*self.server_options()[:-2], "-c", "listen_addresses=''"])
        log = str(self.base / "postgresql.log")
        return (
            self.notifying(
                [self.pg.pg_ctl, "start", "-W", "-D", str(self.data), "-l", log, "-o", options]
            )
            .pid(self.data / "postmaster.pid")
            .log(self.base / "postgresql.log")
            .lock(self.base / "postgresql.lock")  # the data directory is made under it
            .stop_with([self.pg.pg_ctl, "stop", "-w", "-D", str(self.data), "-m", "fast"])
            .dont_stop_if_pid_file_invalid()
        )

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(self.pg.psql, "-h", str(self.base), "-p", str(self.port)),
                *("-U", "postgres", "-d", "postgres", "-tAc", sql),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def expected_user(pg_user: str | None) -> str:
    return pg_user or pwd.getpwuid(os.geteuid()).pw_name


def kill_postgres(pid: int | None) -> None:
    """Kill a postmaster; its children notice and exit by themselves."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(pg, pg_user, owned_dir, test_id):
    return Cluster(pg, owned_dir(pg_user), pg_user, test_id)


def test_pg_ctl_initdb_on_first_use_runs_as_postgres(cluster, pg_user, procs):
    server = cluster.with_pg_ctl()
    pids = []
    try:
        server.start()
        assert cluster.initdb_runs == 1
        pid = procs.track(server.read_pid())
        pids.append(pid)
        assert pid is not None
        proc = psutil.Process(pid)
        assert proc.name() == "postgres"
        assert proc.username() == expected_user(pg_user)
        postmaster_pid = (cluster.data / "postmaster.pid").read_text().splitlines()
        assert int(postmaster_pid[0]) == pid
        assert len(postmaster_pid) > 1  # PostgreSQL's multi-line PID file
        # Ready means ready: a query works as soon as start() returns.
        result = cluster.psql("SELECT 6 * 7")
        assert (result.returncode, result.stdout.strip()) == (0, "42"), result.stderr
        server.stop()
        assert procs.gone(pid)
        assert not (cluster.data / "postmaster.pid").exists()
        assert not server.is_running()

        server.start()  # the cluster exists now: no second initdb
        pids.append(procs.track(server.read_pid()))
        assert cluster.initdb_runs == 1
        assert cluster.psql("SELECT 1").returncode == 0
        server.stop()
        assert procs.gone(pids[-1])
    finally:
        server.stop()
        for pid in pids:
            kill_postgres(pid)


def test_pg_ctl_stop_on_a_stopped_cluster(cluster, procs):
    """pg_ctl stop exits 1 when the cluster is not running; the option makes stop() quiet."""
    cluster.initdb()
    quiet = cluster.with_pg_ctl()
    quiet.stop()  # dont_stop_if_pid_file_invalid(): the stop command is not run
    assert not quiet.is_running()

    strict = quiet.dont_stop_if_pid_file_invalid(False)
    with pytest.raises(StopError) as caught:
        strict.stop()
    assert caught.value.exit_status == 1
    assert "postmaster.pid" in str(caught.value)
    assert "Is server running?" in str(caught.value)


def test_foreground_postgres_pid_file_names_postgres_itself(cluster, pg_user, procs):
    server = cluster.in_foreground()
    pid = None
    try:
        server.start()
        pid = procs.track(server.read_pid())
        assert pid is not None
        proc = psutil.Process(pid)
        assert proc.name() == "postgres"
        assert proc.username() == expected_user(pg_user)
        assert proc.ppid() == os.getpid()  # our own child: no runuser/sudo wrapper
        assert int((cluster.data / "postmaster.pid").read_text().split()[0]) == pid
        assert cluster.psql("SELECT current_user").stdout.strip() == "postgres"
        server.stop()
        assert procs.gone(pid)
        assert not (cluster.data / "postmaster.pid").exists()
    finally:
        server.stop()
        kill_postgres(pid)


def test_postgres_refuses_to_run_as_root(pg, owned_dir, procs, test_id):
    if os.geteuid() != 0:
        pytest.skip("only root sees PostgreSQL's refusal to run as root")
    base = owned_dir()
    port = free_port()
    server = (
        Daemon("postgresql as root")
        .start_with([pg.postgres, "-D", str(base / "data"), "-k", str(base), "-p", str(port)])
        .foreground()
        .ping_command([pg.pg_isready, "-q", "-h", str(base), "-p", str(port)])
        .pid(base / "postmaster.pid")
        .log(base / "postgresql.log")
        .start_timeout(30)
        .env({MARKER: test_id})
    )
    with pytest.raises(StartError) as caught:
        server.start()
    assert '"root" execution of the PostgreSQL server is not permitted' in str(caught.value)


def test_start_error_shows_postgres_line(cluster, procs):
    server = cluster.with_pg_ctl("-c", "shared_buffers=lots")
    with pytest.raises(StartError) as caught:
        server.start()
    text = str(caught.value)
    assert 'invalid value for parameter "shared_buffers": "lots"' in text
    assert "could not start server" in text  # pg_ctl's own output
    assert not server.is_running()


@pytest.mark.slow
def test_socket_ping_is_ready_too_early_pg_isready_is_not(cluster, pg, procs):
    """A server that accepts on its socket but rejects every session (a standby
    without hot standby, like a server still recovering): a unix-socket ping
    declares it ready, pg_isready does not."""
    cluster.initdb()
    (cluster.data / "standby.signal").touch()
    socket_ping = cluster.in_foreground("-c", "hot_standby=off").ping_unix(
        cluster.base / f".s.PGSQL.{cluster.port}"
    )
    pid = None
    try:
        socket_ping.start()
        pid = procs.track(socket_ping.read_pid())
        result = cluster.psql("SELECT 1")
        assert result.returncode != 0
        # "starting up" while the standby initialises, "not accepting connections" after.
        assert (
            "the database system is starting up" in result.stderr
            or "the database system is not accepting connections" in result.stderr
        ), result.stderr
        assert subprocess.run(cluster.pg_isready(), check=False).returncode != 0
        socket_ping.stop()
        assert procs.gone(pid)

        real_ping = cluster.in_foreground("-c", "hot_standby=off").start_timeout(3)
        with pytest.raises(StartTimeout):
            real_ping.start()
        assert not real_ping.is_running()
        assert procs.wait_until(lambda: not procs.survivors(), timeout=10)
    finally:
        socket_ping.stop()
        kill_postgres(pid)


@pytest.mark.parametrize("variant", ["foreground", "pg_ctl"])
def test_notify_ready_means_a_query_works(cluster, pg_user, procs, variant):
    server = (
        cluster.notifying_in_foreground() if variant == "foreground" else cluster.notifying_pg_ctl()
    )
    assert server.config.ping is None
    pid = None
    try:
        server.start()
        pid = procs.track(server.read_pid())
        assert pid is not None
        assert int((cluster.data / "postmaster.pid").read_text().split()[0]) == pid
        proc = psutil.Process(pid)
        assert proc.name() == "postgres"
        assert proc.username() == expected_user(pg_user)
        result = cluster.psql("SELECT 6 * 7")  # at once: READY=1 means it accepts sessions
        assert (result.returncode, result.stdout.strip()) == (0, "42"), result.stderr
        assert server.status().readiness == ("notify",)
        server.stop()
        assert procs.gone(pid)
        assert not server.is_running()
    finally:
        server.stop()
        kill_postgres(pid)


@pytest.mark.parametrize("variant", ["pg_ctl", "foreground"])
def test_start_and_stop_times(cluster, procs, variant):
    cluster.initdb()
    server = cluster.with_pg_ctl() if variant == "pg_ctl" else cluster.in_foreground()
    starts, stops = time_start_stop(f"postgresql ({variant})", server, procs.track, kill_postgres)
    assert max(starts) < 30
    assert max(stops) < 30
