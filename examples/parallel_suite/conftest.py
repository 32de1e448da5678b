# conftest.py: one PostgreSQL per pytest-xdist worker, each on its own port, with its
# own data, all started from one prepared template (initdb and the schema, run once).
from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon_controller import Daemon
from daemon_controller.pytest_plugin import daemon_fixture

HERE = Path(__file__).resolve().parent
BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))  # initdb, postgres...
SERVER = [f"{BIN}/postgres", "-D", "{run_dir}/data", "-k", "{run_dir}", "-p", "{port}"]

database = (
    Daemon("test database")
    .port()  # a free port, chosen when it starts: {port}
    .prepare(  # once, into a template; again only when schema.sql changes
        f"{BIN}/initdb -D {{run_dir}}/data -U postgres -A trust --no-sync > /dev/null"
        f" && {BIN}/postgres --single -D {{run_dir}}/data postgres < schema.sql > /dev/null",
        inputs=[HERE / "schema.sql"],
        fresh=True,  # each session starts from the prepared state
    )
    .start_with([*SERVER, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
    .foreground()
    .stop_signal("INT")  # PostgreSQL's fast shutdown
    .pid("{run_dir}/data/postmaster.pid")
    .ping_command([f"{BIN}/pg_isready", "-q", "-h", "127.0.0.1", "-p", "{port}"])
    .cwd(HERE)
    .start_timeout(120)
)
if os.geteuid() == 0:  # PostgreSQL refuses to run as root
    database = database.user("postgres")

# Each xdist worker ("gw0", "gw1"...) gets its own instance; without xdist, one.
db = daemon_fixture("db", database, scope="session", per_worker=True)


@pytest.fixture
def dsn(db: Daemon) -> str:
    return db.expand("postgresql://postgres@127.0.0.1:{port}/postgres")
