"""A test suite run in parallel against real daemons: PostgreSQL and Redis under ``pytest -n 4``.

Each case writes a small project (a daemon description, a ``conftest.py``
and a test module) and runs pytest on it in a subprocess, twice:

* **per worker**: ``daemon_fixture(..., per_worker=True)``: four workers
  get four instances, on four ports chosen at start, each with
  its own run directory copied from one prepared template (``initdb`` plus
  a schema, or a Redis dataset, prepared once); every worker sees the
  template's seed data and only its own writes;
* **shared**: ``daemon_fixture(..., scope="session")``: one instance for all
  four workers, started once and stopped after the last.

No port is written anywhere: the descriptions use ``{port}`` and
``{run_dir}``. The tests record what each worker saw in a JSON-lines file
that the outer test checks. Afterwards nothing may run from the run
directories, and everything the daemons kept in the runtime directory is
removed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from runtime_files import forget

WORKERS = 4

CONFTEST = """
import os

from suite_daemon import database

from daemon_controller.pytest_plugin import daemon_fixture

per_worker = os.environ["SUITE_MODE"] == "per_worker"
db = daemon_fixture("db", database(), scope="session", per_worker=per_worker)
"""

TESTS = """
import json
import os

import pytest
from suite_daemon import read_others, write_mine


@pytest.mark.parametrize("n", range(3))
def test_writes_and_reads_its_own_data(db, worker_id, n):
    seed, others = write_mine(db, worker_id, n), read_others(db, worker_id)
    record = {
        "worker": worker_id, "port": db.read_port(), "pid": db.read_pid(),
        "run_dir": str(db.resolved().config.run_dir), "seed": seed, "others": others,
    }
    with open(os.environ["SUITE_RESULTS"], "a") as results:
        results.write(json.dumps(record) + "\\n")
"""

POSTGRESQL = """
import os
import subprocess
from pathlib import Path

from daemon_controller import Daemon

HERE = Path(__file__).resolve().parent
BIN = Path(os.environ["SUITE_PG_BIN"])
USER = os.environ.get("SUITE_PG_USER") or None


def database() -> Daemon:
    daemon = (
        Daemon("suite postgresql")
        .port()
        .prepare(
            f"{BIN}/initdb -D {{run_dir}}/data -U postgres -A trust --no-sync --wal-segsize=1"
            f" > /dev/null && {BIN}/postgres --single -D {{run_dir}}/data -c fsync=off"
            " postgres < schema.sql > /dev/null",
            inputs=[HERE / "schema.sql"],
            fresh=True,
        )
        .start_with([
            f"{BIN}/postgres", "-D", "{run_dir}/data", "-k", "{run_dir}", "-p", "{port}",
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
        ])
        .foreground()
        .stop_signal("INT")
        .pid("{run_dir}/data/postmaster.pid")
        .ping_command([f"{BIN}/pg_isready", "-q", "-h", "127.0.0.1", "-p", "{port}"])
        .cwd(HERE)
        .start_timeout(90)
        .stop_timeout(60)
    )
    return daemon.user(USER) if USER else daemon


def sql(db: Daemon, query: str) -> list[str]:
    argv = [f"{BIN}/psql", "-h", "127.0.0.1", "-p", str(db.read_port()), "-U", "postgres"]
    out = subprocess.run([*argv, "-tAc", query], capture_output=True, text=True, check=True)
    return out.stdout.split()


def write_mine(db: Daemon, worker: str, n: int) -> list[str]:
    sql(db, f"INSERT INTO visits VALUES ('{worker}', {n})")
    return sql(db, "SELECT worker FROM visits WHERE worker = 'template'")


def read_others(db: Daemon, worker: str) -> list[str]:
    mine = f"('{worker}', 'template')"
    return sql(db, f"SELECT DISTINCT worker FROM visits WHERE worker NOT IN {mine}")
"""

SCHEMA = "CREATE TABLE visits (worker text, n int);\nINSERT INTO visits VALUES ('template', 0);\n"

REDIS = """
import os
import subprocess
from pathlib import Path

from daemon_controller import Daemon

HERE = Path(__file__).resolve().parent

# A dataset: a throw-away server on a unix socket in the template loads it
# and saves dump.rdb. Redis replaces dump.rdb by renaming a new file over it,
# never writing it in place, so copies may share it through hard links.
DATASET = (
    "redis-server --port 0 --unixsocket {run_dir}/prepare.sock --dir {run_dir}"
    " --save '' --appendonly no --daemonize no > /dev/null &"
    " until redis-cli -s {run_dir}/prepare.sock ping > /dev/null 2>&1; do sleep 0.05; done;"
    " redis-cli -s {run_dir}/prepare.sock set seed template > /dev/null"
    " && redis-cli -s {run_dir}/prepare.sock shutdown save; wait"
)


def database() -> Daemon:
    return (
        Daemon("suite redis")
        .port()
        .prepare(DATASET, hardlinks=True, fresh=True)
        .start_with([
            "redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--dir", "{run_dir}",
            "--daemonize", "yes", "--pidfile", "{run_dir}/redis.pid",
            "--logfile", "{run_dir}/redis.log", "--save", "", "--appendonly", "no",
        ])
        .ping_command(["redis-cli", "-p", "{port}", "ping"])
        .pid("{run_dir}/redis.pid")
        .log("{run_dir}/redis.log")
        .cwd(HERE)
        .start_timeout(30)
    )


def cli(db: Daemon, *args: str) -> list[str]:
    argv = ["redis-cli", "-p", str(db.read_port()), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def write_mine(db: Daemon, worker: str, n: int) -> list[str]:
    cli(db, "set", f"worker:{worker}:{n}", "1")
    return cli(db, "get", "seed")


def read_others(db: Daemon, worker: str) -> list[str]:
    keys = cli(db, "keys", "worker:*")
    return sorted({key.split(":")[1] for key in keys} - {worker})
"""


def write_project(directory: Path, description: str, *extra: tuple[str, str]) -> None:
    files = [
        ("suite_daemon.py", description),
        ("conftest.py", CONFTEST),
        ("test_suite.py", TESTS),
        *extra,
    ]
    for name, text in files:
        (directory / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        (directory / name).chmod(0o644)


def load_description(directory: Path, env: dict[str, str]):
    """The project's ``database()``, built here as the suite builds it."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location("suite_daemon", directory / "suite_daemon.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.database()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_suite(directory: Path, env: dict[str, str], mode: str) -> list[dict]:
    results = directory / f"results-{mode}.jsonl"
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "DAEMON_CONTROLLER_PYTEST"))
    }
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-n", str(WORKERS), "--dist", "each"),
            *("-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error"),
        ],
        cwd=directory,
        env={**inherited, **env, "SUITE_MODE": mode, "SUITE_RESULTS": str(results)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pytest -n {WORKERS} failed:\n{result.stdout}{result.stderr}"
    return [json.loads(line) for line in results.read_text().splitlines()]


def check_both_modes(directory: Path, env: dict[str, str], procs, seed: list[str]) -> None:
    base = load_description(directory, env)
    instances = [base, *(base.for_worker(f"gw{i}") for i in range(WORKERS))]
    for daemon in instances:
        procs.watch_dir(daemon.resolved().config.run_dir)
    try:
        per_worker = run_suite(directory, env, "per_worker")
        assert len(per_worker) == WORKERS * 3
        by_worker = {r["worker"]: r for r in per_worker}
        assert sorted(by_worker) == [f"gw{i}" for i in range(WORKERS)]
        assert len({r["port"] for r in per_worker}) == WORKERS  # four instances, four ports
        assert len({r["pid"] for r in per_worker}) == WORKERS
        assert len({r["run_dir"] for r in per_worker}) == WORKERS
        for record in per_worker:
            assert record["seed"] == seed  # each started from the prepared template
            assert record["others"] == []  # and sees only its own writes
        for record in by_worker.values():
            assert record["port"] not in ("{port}", None)

        shared = run_suite(directory, env, "shared")
        assert len(shared) == WORKERS * 3
        assert len({r["worker"] for r in shared}) == WORKERS
        assert len({(r["port"], r["pid"], r["run_dir"]) for r in shared}) == 1  # one instance
        assert all(r["seed"] == seed for r in shared)
        assert not any(daemon.is_running() for daemon in instances)  # all stopped
        template = base.resolved().config.prepare.template
        prepared = [p for p in template.parent.glob(f"{template.name}-*") if p.is_dir()]
        assert len(prepared) == 1  # prepared once for five instances
    finally:
        for daemon in instances:
            daemon.stop()
            forget(daemon)


def test_postgresql_per_worker_and_shared(pg, pg_user, owned_dir, procs):
    project = owned_dir(pg_user)
    write_project(project, POSTGRESQL, ("schema.sql", SCHEMA))
    env = {"SUITE_PG_BIN": str(pg.bindir), "SUITE_PG_USER": pg_user or ""}
    check_both_modes(project, env, procs, seed=["template"])


def test_redis_per_worker_and_shared(redis_bin, owned_dir, procs):
    if not Path(redis_bin).with_name("redis-cli").exists():
        pytest.skip("redis-cli is not installed next to redis-server")
    project = owned_dir()
    write_project(project, REDIS)
    check_both_modes(project, {"PATH": f"{Path(redis_bin).parent}:{os.environ['PATH']}"}, procs,
                     seed=["template"])  # fmt: skip
