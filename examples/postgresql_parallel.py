"""Running a test suite in parallel: one PostgreSQL per pytest-xdist worker, from one template.

The suite in ``examples/parallel_suite/`` declares its database in
``conftest.py`` without a single fixed port or path:

* ``.port()``: a free port is chosen when each instance starts and filled in
  for ``{port}`` (in the command, the ping, the connection string);
* ``.prepare(...)``: ``initdb`` and the schema run once, into a template;
  every instance's private run directory (``{run_dir}``) starts as a copy,
  so four workers do not run ``initdb`` four times (``fresh=True``: each
  session starts from the prepared state again);
* ``database.for_worker()``: under ``pytest -n 4`` each worker gets its own
  instance, with its own port, run directory and data.

This script copies the suite to a temporary directory, runs it with
``pytest -n 4`` twice (the second time the template is ready: no
``initdb``), prints which worker used which port, and removes everything
the suite left in the runtime directory. Run it with::

    python examples/postgresql_parallel.py

It needs PostgreSQL (Debian/Ubuntu: ``apt-get install postgresql``) and
pytest-xdist. Run as root, PostgreSQL runs as the ``postgres`` user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from postgresql_example import find_pg_bindir

SUITE = Path(__file__).resolve().parent / "parallel_suite"
PG_USER = "postgres"


def copy_suite() -> Path:
    """The suite in a fresh directory that PostgreSQL (maybe another user) may read."""
    project = Path(tempfile.mkdtemp(prefix="dc-pg-parallel-"))
    for name in ("conftest.py", "test_accounts.py", "schema.sql"):
        shutil.copyfile(SUITE / name, project / name)
    project.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(project, user=PG_USER, group=pwd.getpwnam(PG_USER).pw_gid)
    return project


def run_suite(project: Path, bindir: Path, report: Path) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PG_BIN=str(bindir), EXAMPLE_REPORT=str(report))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "4", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    if result.returncode != 0:
        print(result.stdout + result.stderr)
    return result.returncode, summary, time.monotonic() - started


def forget_everything(project: Path) -> None:
    """Stop the instances (if a failure left any) and remove their files and the template."""
    sys.path.insert(0, str(project))
    try:
        import conftest  # noqa: PLC0415 - the suite's own description of its database

        base = conftest.database
        instances = [base, *(base.for_worker(f"gw{i}") for i in range(4))]
        for daemon in instances:
            daemon.stop()
            config = daemon.resolved().config
            for path in (config.run_dir, config.log_file, config.pid_file):
                if isinstance(path, Path) and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif isinstance(path, Path):
                    path.unlink(missing_ok=True)
            lock = config.lock_file
            if lock is not None:
                for side in lock.parent.glob(f"{lock.name}*"):
                    side.unlink(missing_ok=True)
        template = base.resolved().config.prepare.template
        for path in template.parent.glob(f"{template.name}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    finally:
        sys.path.remove(str(project))


def main() -> int:
    bindir = find_pg_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql)")
        return 1
    os.environ["PG_BIN"] = str(bindir)
    project = copy_suite()
    report = project / "ports.jsonl"
    ok = True
    try:
        for session in (1, 2):
            report.unlink(missing_ok=True)
            status, summary, took = run_suite(project, bindir, report)
            print(f"{session}. pytest -n 4: {summary} ({took:.1f} s in all)")
            ok = ok and status == 0
            if status != 0:
                break
            ports = {}
            for line in report.read_text().splitlines():
                record = json.loads(line)
                ports.setdefault(record["worker"], set()).add(record["port"])
            for worker in sorted(ports):
                print(
                    f"   {worker}: its own PostgreSQL on port {', '.join(map(str, ports[worker]))}"
                )
            distinct = {port for used in ports.values() for port in used}
            ok = ok and len(distinct) == len(ports)  # no two workers shared an instance
            print(f"   {len(ports)} workers, {len(distinct)} instances")
    finally:
        forget_everything(project)
        shutil.rmtree(project, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
