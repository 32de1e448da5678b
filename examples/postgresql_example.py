"""PostgreSQL: initdb on first use, ``pg_ctl start``, a real readiness check.

Shows four things PostgreSQL needs that simpler daemons do not:

* **initdb on first use.** ``before_start`` runs under the daemon's lock right
  before each start; it creates the cluster only when the data directory has
  none yet, so the first start ever initialises it and later ones do not.
* **Not as root.** PostgreSQL refuses to run as root. Run as root, the example
  uses ``.user("postgres")``: the start and stop commands run as that user
  (no ``runuser``/``sudo`` wrapper). Its directories belong to postgres.
* **Readiness that means ready.** PostgreSQL creates its socket and accepts
  connections before it can serve queries: until recovery is done it answers
  "FATAL: the database system is starting up". A unix-socket ping would report
  it ready too early, so the ping is ``pg_isready``, which succeeds only when
  the server accepts sessions.
* **``pg_ctl stop`` on a stopped cluster exits 1** ("PID file ... does not
  exist. Is server running?"), which would make ``stop()`` raise ``StopError``
  whenever PostgreSQL is not running. ``dont_stop_if_pid_file_invalid()`` skips
  the stop command when ``postmaster.pid`` names no live process, so ``stop()``
  is quiet then, as it is for daemons stopped by signal.

The PID file is PostgreSQL's own ``postmaster.pid`` (the PID is its first line;
PostgreSQL removes it when it shuts down). The lock file is kept outside the
data directory, because initdb wants an empty directory.

The second part runs the same cluster the other way: the ``postgres`` binary in
the foreground, daemonized by the library (``.foreground().user("postgres")``),
stopped with SIGINT (PostgreSQL's "fast shutdown"). There the PID file names
the postgres process itself, not a wrapper. Run it with::

    python examples/postgresql_example.py

Debian and Ubuntu install the server binaries in /usr/lib/postgresql/<version>/bin,
not on the PATH; the example looks there too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from daemon_controller import Daemon

PG_USER = "postgres"


def find_pg_bindir() -> Path | None:
    """Where ``postgres``, ``initdb`` and ``pg_ctl`` are: the PATH, then the usual places."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("postgres") and shutil.which("initdb"):
        return Path(found).resolve().parent
    patterns = ("lib/postgresql/*/bin", "pgsql-*/bin", "local/pgsql/bin")
    candidates = [str(path) for pattern in patterns for path in Path("/usr").glob(pattern)]
    candidates += [str(path) for path in Path("/opt/homebrew/opt").glob("postgresql*/bin")]

    def version(path: str) -> tuple[int, ...]:
        digits = "".join(c if c.isdigit() else " " for c in path).split()
        return tuple(map(int, digits))

    for candidate in sorted(candidates, key=version, reverse=True):
        if all((Path(candidate) / name).exists() for name in ("postgres", "initdb", "pg_ctl")):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throw-away PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path, base: Path, port: int) -> None:
        self.bindir = bindir
        self.base = base  # holds the data directory, the socket, the log and the lock
        self.data = base / "data"
        self.port = port
        self.user = PG_USER if os.geteuid() == 0 else None
        self.initdb_runs = 0

    def tool(self, name: str) -> str:
        path = self.bindir / name
        return str(path) if path.exists() else (shutil.which(name) or name)

    def pg_isready(self) -> list[str]:
        return [self.tool("pg_isready"), "-q", "-h", str(self.base), "-p", str(self.port)] + (
            ["-U", PG_USER] if self.user else []
        )

    def initdb_on_first_use(self) -> None:
        """before_start: create the cluster unless the data directory has one."""
        if (self.data / "PG_VERSION").exists():
            print("   before_start: the cluster exists; no initdb")
            return
        print(f"   before_start: initdb {self.data}")
        self.initdb_runs += 1
        subprocess.run(
            [self.tool("initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust", "--no-sync"],
            check=True,
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            user=self.user,  # as root: initdb refuses to run as root, too
            group=pwd.getpwnam(self.user).pw_gid if self.user else None,
        )

    # --8<-- [start:variants]
    def with_pg_ctl(self) -> Daemon:
        """Variant 1: pg_ctl starts PostgreSQL in the background (and waits for it)."""
        server_options = f"-k {self.base} -p {self.port} -c listen_addresses=''"
        daemon = (
            Daemon("PostgreSQL (pg_ctl)")
            .start_with(
                [
                    *(self.tool("pg_ctl"), "start", "-w", "-D", str(self.data)),
                    *("-l", str(self.base / "postgresql.log"), "-o", server_options),
                ]
            )
            .stop_with([self.tool("pg_ctl"), "stop", "-w", "-D", str(self.data), "-m", "fast"])
            .dont_stop_if_pid_file_invalid()  # pg_ctl stop on a stopped cluster exits 1
            .before_start(self.initdb_on_first_use)
            .ping_command(self.pg_isready())
            .pid(self.data / "postmaster.pid")
            .log(self.base / "postgresql.log")
            .lock(self.base / "postgresql.lock")  # not in the data directory: initdb
            .cwd(self.base)
            .start_timeout(60)
            .stop_timeout(60)
        )
        return daemon.user(self.user) if self.user else daemon

    def in_foreground(self) -> Daemon:
        """Variant 2: the postgres binary itself, daemonized by the library."""
        daemon = (
            Daemon("PostgreSQL (foreground)")
            .start_with(
                [
                    *(self.tool("postgres"), "-D", str(self.data), "-k", str(self.base)),
                    *("-p", str(self.port), "-c", "listen_addresses="),
                ]
            )
            .foreground()
            .stop_signal("INT")  # fast shutdown; TERM ("smart") waits for clients
            .before_start(self.initdb_on_first_use)
            .ping_command(self.pg_isready())
            .pid(self.data / "postmaster.pid")  # postgres writes it itself
            .log(self.base / "postgresql.log")
            .lock(self.base / "postgresql.lock")
            .cwd(self.base)
            .start_timeout(60)
            .stop_timeout(60)
        )
        return daemon.user(self.user) if self.user else daemon

    # --8<-- [end:variants]

    def query(self, sql: str) -> str:
        psql = [self.tool("psql"), "-h", str(self.base), "-p", str(self.port), "-U", PG_USER]
        result = subprocess.run(
            [*psql, "-d", "postgres", "-tAc", sql],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip()


def describe(pid: int | None) -> str:
    """``PID 123 (postgres), owned by postgres``."""
    if pid is None:
        return "no PID"
    proc = psutil.Process(pid)
    return f"PID {pid} ({proc.name()}), owned by {proc.username()}"


def command_text(daemon: Daemon) -> str:
    command = daemon.config.start_command
    return " ".join(command) if isinstance(command, tuple) else str(command)


def main() -> int:
    bindir = find_pg_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql)")
        return 1
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            print(f"running as root, but there is no {PG_USER!r} user to run PostgreSQL as")
            return 1
    base = Path(tempfile.mkdtemp(prefix="dc-postgresql-"))
    if os.geteuid() == 0:
        shutil.chown(base, user=PG_USER, group=pwd.getpwnam(PG_USER).pw_gid)
    cluster = Cluster(bindir, base, free_port())
    pg_ctl = cluster.with_pg_ctl()
    foreground = cluster.in_foreground()
    ok = True
    try:
        print(f"Variant 1: {command_text(pg_ctl)}")
        for attempt in (1, 2):
            started = time.monotonic()
            pg_ctl.start()
            print(
                f"{attempt}a. started in {time.monotonic() - started:.3f} s: "
                f"{describe(pg_ctl.read_pid())}"
            )
            print(f"{attempt}b. SELECT 6 * 7 -> {cluster.query('SELECT 6 * 7')}")
            started = time.monotonic()
            pg_ctl.stop()
            print(f"{attempt}c. stopped in {time.monotonic() - started:.3f} s")
        pg_ctl.stop()  # not running: without dont_stop_if_pid_file_invalid() a StopError
        print("3.  stop() when already stopped: nothing to do, no error")
        ok = cluster.initdb_runs == 1

        print(f"Variant 2: {command_text(foreground)}")
        started = time.monotonic()
        foreground.start()
        print(
            f"4a. started in {time.monotonic() - started:.3f} s: {describe(foreground.read_pid())}"
        )
        print(f"4b. SELECT current_user -> {cluster.query('SELECT current_user')}")
        started = time.monotonic()
        foreground.stop()
        print(f"4c. stopped in {time.monotonic() - started:.3f} s")
    finally:
        pg_ctl.stop()
        foreground.stop()
        shutil.rmtree(base, ignore_errors=True)
    print("OK" if ok else f"FAILED: initdb ran {cluster.initdb_runs} times")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
