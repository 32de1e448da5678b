# test_accounts.py: each test changes the data; no test sees another worker's changes.
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from daemon_controller import Daemon


def psql(dsn: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", dsn, "-tAc", sql], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip()


@pytest.mark.parametrize("amount", range(10, 90, 10))
def test_transfer(dsn: str, db: Daemon, worker_id: str, amount: int) -> None:
    me = f"{worker_id}-{amount}"  # an account of this test's own
    psql(dsn, f"INSERT INTO accounts VALUES ('{me}', 0)")
    psql(dsn, f"UPDATE accounts SET balance = balance + {amount} WHERE owner = '{me}'")
    assert psql(dsn, f"SELECT balance FROM accounts WHERE owner = '{me}'") == str(amount)
    # The template's rows are there; other workers' accounts are not.
    owners = psql(dsn, "SELECT owner FROM accounts ORDER BY owner").split()
    assert {"alice", "bob"} <= set(owners)
    assert all(o in ("alice", "bob") or o.startswith(f"{worker_id}-") for o in owners)
    report = os.environ.get("EXAMPLE_REPORT")
    if report:
        with Path(report).open("a", encoding="utf-8") as out:
            out.write(json.dumps({"worker": worker_id, "port": db.read_port()}) + "\n")
