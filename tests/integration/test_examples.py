"""Every script in examples/ runs to completion, says what it should, and leaves nothing running.

Each example is run as the README says (``python examples/<name>.py``) in a
subprocess with a generous timeout; it must exit 0 and print its key lines.
Afterwards no live process may still run from the example's temporary
directory (matched in command lines and working directories).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import leftovers

_REPO = Path(__file__).resolve().parents[2]


def run_example(name: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    result = subprocess.run(
        [sys.executable, str(_REPO / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=_REPO,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{output}"
    return output


def check(name: str, marker: str, *expected: str) -> str:
    try:
        output = run_example(name)
    finally:
        left = leftovers(marker)
    assert not left, f"{name} left processes running (killed now): {left}"
    for line in expected:
        assert line in output, f"{name} did not print {line!r}:\n{output}"
    return output


def test_nginx_tutorial(nginx_bin):
    check(
        "nginx_tutorial.py",
        "dc-nginx-tutorial-",
        "PASS test_return_directive",
        "PASS test_add_header_directive",
        "PASS test_redirect_directive",
        "3 of 3 tests passed",
    )


def test_redis_search_server(redis_bin):
    output = check(
        "redis_search_server.py",
        "dc-redis-search-",
        "building the index from 4 documents",
        "Redis was started 1 time(s)",
        "'daemon controller' -> ['doc3', 'doc4']",
        "A later query reuses it: ['doc1']",
        "Stopped; running: False",
        "OK",
    )
    assert output.count("building the index") == 1
    assert output.count("Starting daemon 'Redis search server'") == 1


def test_memcached_example(memcached_bin):
    check(
        "memcached_example.py",
        "dc-memcached-",
        "set -> b'STORED'; get -> b'hello'",
        "PID file left behind: False; running: False",
        "failed to listen on one of interface(s) 127.0.0.1: Address already in use",
        "OK",
    )


def test_postgresql_example(pg, pg_user):
    output = check(
        "postgresql_example.py",
        "dc-postgresql-",
        "SELECT 6 * 7 -> 42",
        "stop() when already stopped: nothing to do, no error",
        "SELECT current_user -> postgres",
        "OK",
    )
    assert output.count("before_start: initdb") == 1
    assert output.count("before_start: the cluster exists; no initdb") == 2
    if pg_user is not None:
        assert output.count(f"(postgres), owned by {pg_user}") == 3


def test_asyncio_example(redis_bin, memcached_bin):
    check(
        "asyncio_example.py",
        "dc-asyncio-",
        "Redis: SET -> 'OK', GET -> 'hello from asyncio'",
        "memcached: set -> 'STORED', get -> 'hello from asyncio'",
        "Left the block: Redis running False, memcached running False; processes left: []",
        "astart() under asyncio.timeout(1.0): TimeoutError after",
        "The start was aborted: processes left: []; lock free: True",
        "OK",
    )


def test_foreground_http_server():
    check(
        "foreground_http_server.py",
        "dc-http-server-",
        "GET /index.txt -> 'served by a foreground program'",
        "Restarted: PID",
        "Left the block: running False",
        "OK",
    )


def test_told_readiness(nginx_bin, redis_bin, memcached_bin):
    check(
        "told_readiness.py",
        "dc-told-readiness-",
        "1. Redis said READY=1",
        "PING -> b'+PONG'",
        "its last STATUS: 'Ready to accept connections'",
        "2. memcached logged 'server listening'",
        "GET / -> 'ready by its own word'",
        "pattern 'server listening' not seen; the daemon (PID",
        "Address already in use",
        "OK",
    )


def test_startup_errors(nginx_bin, redis_bin):
    check(
        "startup_errors.py",
        "dc-startup-errors-",
        'unknown directive "bogus"',
        "Bad directive or wrong number of arguments",
        "is in it: True",
        "OK",
    )


@pytest.mark.parametrize(
    "name",
    sorted(path.name for path in (_REPO / "examples").glob("*.py")),
)
def test_every_example_says_how_to_run_it(name):
    source = (_REPO / "examples" / name).read_text()
    assert source.startswith('"""'), f"{name} has no module docstring header"
    assert f"python examples/{name}" in source.split('"""')[1]


def test_postgresql_parallel(pg, pg_user):
    output = check(
        "postgresql_parallel.py",
        "dc-pg-parallel-",
        "1. pytest -n 4: 8 passed",
        "2. pytest -n 4: 8 passed",
        "OK",
    )
    assert output.count("4 workers, 4 instances") == 2


def test_readme_shows_the_parallel_suites_conftest():
    # The README's "Running a test suite in parallel" shows this file as it is.
    conftest = (_REPO / "examples" / "parallel_suite" / "conftest.py").read_text()
    body = conftest[conftest.index("HERE = ") :]  # after the imports
    readme = (_REPO / "README.md").read_text()
    assert body.strip() in readme
