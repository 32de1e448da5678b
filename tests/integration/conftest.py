"""Fixtures for the integration tests with real daemons: nginx, Redis, memcached, PostgreSQL.

* The binaries are looked up on the PATH, then where distributions put them
  (nginx in /usr/sbin; PostgreSQL's server programs in
  /usr/lib/postgresql/<version>/bin on Debian). A test whose daemon is not
  installed is skipped with the reason — unless the environment variable
  ``DAEMON_CONTROLLER_REQUIRE_DAEMONS=1`` is set (CI sets it after installing
  the packages): then a missing daemon is a failure, not a skip.
* ``owned_dir(user)`` makes a temporary directory under the system temp dir
  (pytest's ``tmp_path`` is private to root, and PostgreSQL and memcached run
  as another user when we are root), owned by that user, removed afterwards.
* ``procs`` is the safety net: at the end of each test it kills every live
  process that a test registered, and every process whose command line or
  working directory mentions one of the test's directories, and fails the test
  if it had to. (The ``DC_TEST_ID`` marker of the main suite does not find
  these daemons: nginx, Redis and PostgreSQL overwrite their environment when
  they set their process titles.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from helpers import exited, gone, wait_until

REQUIRE_ENV = "DAEMON_CONTROLLER_REQUIRE_DAEMONS"
_HERE = Path(__file__).parent
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs a real third-party daemon")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where the daemons are required (CI)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1 requires it)")
    pytest.skip(reason)


def find_program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def _pg_candidates() -> list[Path]:
    dirs: list[Path] = []
    found = shutil.which("pg_ctl")
    if found:
        dirs.append(Path(found).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(Path(out.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", str(path)))

    for pattern in ("lib/postgresql/*/bin", "pgsql-*/bin", "local/pgsql/bin"):
        dirs.extend(sorted(Path("/usr").glob(pattern), key=version, reverse=True))
    return dirs


@dataclass(frozen=True)
class PgBin:
    """The PostgreSQL programs of one installation."""

    bindir: Path

    def __getattr__(self, name: str) -> str:
        path = self.bindir / name
        if path.exists():
            return str(path)
        return shutil.which(name) or str(path)


def find_pg_bindir() -> Path | None:
    for candidate in _pg_candidates():
        if all((candidate / name).exists() for name in ("postgres", "initdb", "pg_ctl")):
            return candidate
    return None


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    path = find_program("nginx")
    if path is None:
        unavailable("nginx is not installed (apt-get install nginx)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def redis_bin() -> str:
    path = find_program("redis-server")
    if path is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def memcached_bin() -> str:
    path = find_program("memcached")
    if path is None:
        unavailable("memcached is not installed (apt-get install memcached)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def pg() -> PgBin:
    bindir = find_pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL's postgres/initdb/pg_ctl not found (apt-get install postgresql)")
    assert bindir is not None
    pg = PgBin(bindir)
    for tool in ("pg_isready", "psql"):
        if not Path(getattr(pg, tool)).exists():
            unavailable(f"PostgreSQL's {tool} not found (apt-get install postgresql-client)")
    return pg


@pytest.fixture(scope="session")
def pg_user() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root, but there is no 'postgres' user to run PostgreSQL as")
    return "postgres"


@dataclass
class Procs:
    """Processes and directories of one test, for the clean-up check at its end."""

    pids: set[int] = field(default_factory=set)
    dirs: list[str] = field(default_factory=list)
    remove_after: list[Path] = field(default_factory=list)

    gone = staticmethod(gone)
    wait_until = staticmethod(wait_until)

    def track(self, pid: int | None) -> int | None:
        if pid is not None:
            self.pids.add(pid)
        return pid

    def watch_dir(self, path: Path) -> Path:
        self.dirs.append(str(path))
        return path

    def survivors(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if not exited(proc):
                    found[pid] = proc
        if self.dirs:
            for proc in psutil.process_iter(["pid"]):
                if proc.pid in found or proc.pid == os.getpid():
                    continue
                try:
                    if exited(proc):
                        continue
                    text = " ".join(proc.cmdline())
                    with contextlib.suppress(psutil.Error):
                        text += " " + proc.cwd()
                except psutil.Error:
                    continue
                if any(d in text for d in self.dirs):
                    found[proc.pid] = proc
        return list(found.values())


@pytest.fixture
def procs() -> object:
    tracker = Procs()
    yield tracker
    left = tracker.survivors()
    names = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    for path in tracker.remove_after:
        shutil.rmtree(path, ignore_errors=True)
    if left:
        pytest.fail(f"test left processes running (killed now): {'; '.join(names)}")


@pytest.fixture
def owned_dir(procs: Procs) -> object:
    """``owned_dir(user=None)``: a fresh temp dir owned by ``user`` (when we are root).

    Removed after the test, once ``procs`` has made sure nothing runs from it.
    """

    def make(user: str | None = None) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dc-it-"))
        procs.remove_after.append(path)
        if user is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return procs.watch_dir(path)

    return make
