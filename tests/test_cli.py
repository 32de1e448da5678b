"""The ``daemon-controller`` command, run for real as a subprocess.

Every test writes a ``daemons.toml`` in ``tmp_path`` declaring echo-server
daemons (``tests/echo_server.py``, free ports, PID and log files relative to
the file, ``DC_TEST_ID`` in their ``env`` so the sweeper finds leftovers) and
runs the installed console script: ``up`` / ``down`` / ``restart`` /
``status`` (table and ``--json``) / ``logs`` / ``exec``, the ``after`` order
for starting and stopping, concurrent starts, exit codes (0, 1 with the
daemon's error output, 2 for usage and configuration errors), config lookup
(``-c``, parent directories), ``--help``, ``-v``, colours and the live status
line on a terminal (a real pseudo-terminal) and plain output elsewhere, and
``python -m daemon_controller``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest
from echo_server import ECHO_SERVER, free_port

from daemon_controller._files import read_tail

_SIBLING = Path(sys.executable).parent / "daemon-controller"
SCRIPT = str(_SIBLING) if _SIBLING.exists() else shutil.which("daemon-controller")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.skipif(SCRIPT is None, reason="console script not installed")


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def base_env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "DC_TEST_ID"}}
    env["TERM"] = "xterm-256color"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class Project:
    """A directory with a ``daemons.toml`` of echo-server daemons, and the CLI to drive it."""

    def __init__(self, root: Path, test_id: str) -> None:
        self.root = root
        self.test_id = test_id
        self.dir = root / "proj"
        for sub in ("tmp", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "daemons.toml"
        self.tables: dict[str, dict[str, object]] = {}
        self.ports: dict[str, int] = {}

    def echo(
        self,
        name: str,
        *args: str,
        timed: bool = False,
        **keys: object,
    ) -> Project:
        """Declare an echo-server daemon ``name``; ``timed`` logs its start time to starts/."""
        port = free_port()
        self.ports[name] = port
        argv = [
            sys.executable,
            str(ECHO_SERVER),
            "--port",
            str(port),
            "--pid-file",
            f"tmp/{name}.pid",
            "--log-file",
            f"log/{name}.log",
            "--record",
            f"tmp/{name}.jsonl",
            *args,
        ]
        start: object = argv
        if timed:
            (self.dir / "starts").mkdir(exist_ok=True)
            start = f"date +%s.%N > starts/{name}; exec {shlex.join(argv)}"
        table: dict[str, object] = {
            "start": start,
            "ping": f"tcp://127.0.0.1:{port}",
            "pid": f"tmp/{name}.pid",
            "log": f"log/{name}.log",
            "start_timeout": 15,
            "stop_timeout": 10,
            "start_abort_timeout": 3,
            "log_activity_timeout": 5,
        }
        table.update(keys)
        table["env"] = {"DC_TEST_ID": self.test_id}
        self.tables[name] = table
        return self.write()

    def write(self) -> Project:
        text = "".join(
            f"[daemons.{name}]\n"
            + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
            + "\n"
            for name, table in self.tables.items()
        )
        self.path.write_text(text, encoding="utf-8")
        return self

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, *args],
            cwd=cwd or self.dir,
            env=env or base_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, cwd=cwd, env=env)
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        return result

    def pid(self, name: str) -> int | None:
        try:
            return int((self.dir / "tmp" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def events(self, name: str, event: str) -> list[dict[str, object]]:
        path = self.dir / "tmp" / f"{name}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == event]

    def started_at(self, name: str) -> float:
        return float((self.dir / "starts" / name).read_text().strip())

    def listening_at(self, name: str) -> float:
        (event,) = self.events(name, "listening")
        return float(str(event["time"]))


@pytest.fixture
def project(tmp_path, test_id):
    proj = Project(tmp_path, test_id)
    yield proj
    if proj.tables:
        proj.run("-c", str(proj.path), "down")


def run_tty(
    args: list[str], cwd: Path, env: dict[str, str], *, columns: int | None = 120
) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a new pseudo-terminal; its exit code and output."""
    master, slave = os.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode("utf-8", errors="replace")


# -- help ------------------------------------------------------------------------------


def test_help_shows_commands_and_examples(tmp_path):
    result = subprocess.run(
        [SCRIPT, "--help"], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0
    out = result.stdout
    assert "examples:" in out
    for command in ("up", "down", "restart", "status", "logs", "exec"):
        assert command in out
    assert "daemon-controller exec -- " in out
    assert "exit codes" in out
    assert "\x1b[" not in out


def test_python_dash_m_runs_the_same_command(project):
    project.echo("db")
    result = subprocess.run(
        [sys.executable, "-m", "daemon_controller", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout
    status = subprocess.run(
        [sys.executable, "-m", "daemon_controller", "-c", str(project.path), "status", "--json"],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["name"] == "db"
    assert row["state"] == "stopped"


# -- up / status / logs / down ---------------------------------------------------------


def test_up_starts_all_and_second_up_says_already_running(project):
    project.echo("db").echo("web")
    first = project.ok("up")
    pids = {name: project.pid(name) for name in ("db", "web")}
    for name, pid in pids.items():
        assert alive(pid), name
        assert re.search(
            rf"^ok {name}: started \(PID {pid}\) in [0-9.]+ s$", first.stdout, re.MULTILINE
        )
    second = project.ok("up")
    for name, pid in pids.items():
        assert f"ok {name}: already running (PID {pid})" in second.stdout
        assert project.pid(name) == pid
    assert "started" not in second.stdout
    # one start each: one "listening" event per daemon
    assert len(project.events("db", "listening")) == 1
    assert len(project.events("web", "listening")) == 1


def test_up_named_daemon_starts_only_it_and_what_it_needs(project):
    project.echo("db").echo("web", after=["db"]).echo("other")
    result = project.ok("up", "web")
    assert alive(project.pid("db"))
    assert alive(project.pid("web"))
    assert project.pid("other") is None
    assert "other" not in result.stdout


def test_status_table_and_json(project):
    project.echo("db").echo("web", after=["db"])
    project.ok("up")
    pids = {name: project.pid(name) for name in ("db", "web")}

    table = project.ok("status").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "PID", "UPTIME", "PING"]
    rows = [line.split(None, 4) for line in table[1:]]
    assert [r[0] for r in rows] == ["db", "web"]
    for name, state, pid, uptime, ping in rows:
        assert state == "running"
        assert pid == str(pids[name])
        assert re.fullmatch(r"\d+m\d\ds", uptime)
        assert ping == f"ok (tcp://127.0.0.1:{project.ports[name]})"

    data = json.loads(project.ok("status", "--json").stdout)
    assert [row["name"] for row in data] == ["db", "web"]
    for row in data:
        assert row["state"] == "running"
        assert row["pid"] == pids[row["name"]]
        assert isinstance(row["uptime"], int | float)
        assert 0 <= row["uptime"] < 120
        assert row["ping"] == "ok"
        assert row["ping_target"] == f"tcp://127.0.0.1:{project.ports[row['name']]}"

    only = json.loads(project.ok("status", "--json", "db").stdout)
    assert [row["name"] for row in only] == ["db"]

    project.ok("down")
    data = json.loads(project.ok("status", "--json").stdout)
    for row in data:
        assert row["state"] == "stopped"
        assert row["pid"] is None
        assert row["uptime"] is None
        assert row["ping"] == "no answer"
    table = project.ok("status").stdout.splitlines()
    for line in table[1:]:
        name, state, pid, uptime, _ping = line.split(None, 4)
        assert (state, pid, uptime) == ("stopped", "-", "-")


def test_logs_shows_the_tail_of_the_log(project):
    project.echo("db", "--log-message", "first-marker")
    project.ok("up")
    wanted = (project.dir / "log" / "db.log").read_text().splitlines()[-2:]
    assert len(wanted) == 2
    result = project.ok("logs", "db", "-n", "2")
    assert result.stdout.splitlines() == wanted
    everything = project.ok("logs", "db").stdout
    assert "first-marker" in everything


def test_logs_zero_lines_shows_nothing(project):
    project.echo("db")
    project.ok("up")
    assert (project.dir / "log" / "db.log").read_text().strip()
    assert project.ok("logs", "db", "-n", "0").stdout == ""


def test_logs_of_unknown_daemon_is_a_usage_error(project):
    project.echo("db")
    result = project.run("logs", "nosuch")
    assert result.returncode == 2
    assert "nosuch" in result.stderr


def test_down_stops_all_and_second_down_says_not_running(project):
    project.echo("db").echo("web")
    project.ok("up")
    pids = {name: project.pid(name) for name in ("db", "web")}
    result = project.ok("down")
    for name, pid in pids.items():
        assert re.search(rf"^ok {name}: stopped \(PID {pid}\)", result.stdout, re.MULTILINE)
        wait_for(lambda pid=pid: not alive(pid), what=f"{name} to exit")
        assert project.pid(name) is None
    again = project.ok("down")
    assert "ok db: not running" in again.stdout
    assert "ok web: not running" in again.stdout


def test_down_stops_in_reverse_after_order(project):
    def stop(name: str, delay: str) -> str:
        return f"sleep {delay}; echo {name} >> order.txt; kill $(cat tmp/{name}.pid)"

    # Were the stops concurrent, db (no delay) would write its line first.
    project.echo("db", stop=stop("db", "0"))
    project.echo("web", stop=stop("web", "0.5"), after=["db"])
    project.echo("worker", stop=stop("worker", "0.5"), after=["web"])
    project.ok("up")
    pids = [project.pid(n) for n in ("db", "web", "worker")]
    assert all(alive(pid) for pid in pids)
    project.ok("down")
    assert (project.dir / "order.txt").read_text().split() == ["worker", "web", "db"]
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), what=f"PID {pid} to exit")


def test_down_named_daemon_leaves_the_others(project):
    project.echo("db").echo("web", after=["db"])
    project.ok("up")
    db = project.pid("db")
    project.ok("down", "web")
    assert project.pid("web") is None
    assert alive(db)


def test_up_starts_dependencies_first(project):
    # db is slow to listen: started concurrently, web would start long before db listens.
    project.echo("db", "--wait-before-listen", "0.5", timed=True)
    project.echo("web", timed=True, after=["db"])
    project.ok("up")
    assert project.started_at("web") > project.listening_at("db")
    lines = [line.split(":")[0] for line in project.ok("up").stdout.splitlines()]
    assert lines == ["ok db", "ok web"]


@pytest.mark.slow
def test_independent_daemons_start_concurrently(project):
    project.echo("a", "--wait-before-listen", "1.5", timed=True)
    project.echo("b", "--wait-before-listen", "1.5", timed=True)
    project.ok("up")
    # Concurrent: each start command ran before the other daemon listened.
    # One after the other, the second start would come after the first listened.
    assert project.started_at("a") < project.listening_at("b")
    assert project.started_at("b") < project.listening_at("a")
    first_start = min(project.started_at("a"), project.started_at("b"))
    last_listen = max(project.listening_at("a"), project.listening_at("b"))
    assert last_listen - first_start < 2.5  # one after the other takes >= 3.0 s


def test_restart_replaces_the_processes(project):
    project.echo("db").echo("web", after=["db"])
    project.ok("up")
    old = {name: project.pid(name) for name in ("db", "web")}
    result = project.ok("restart")
    for name, pid in old.items():
        new = project.pid(name)
        assert new is not None
        assert new != pid
        assert alive(new)
        assert f"ok {name}: restarted (PID {new})" in result.stdout
        wait_for(lambda pid=pid: not alive(pid), what=f"old {name} to exit")


# -- failures and exit codes -----------------------------------------------------------


def test_failed_start_exits_1_and_shows_the_daemons_output(project):
    project.echo("bad", "--before-daemonize-message", "boom-marker", "--exit-before-daemonize", "3")
    project.echo("web", after=["bad"])
    result = project.run("up")
    assert result.returncode == 1, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "FAILED bad" in output
    assert "boom-marker" in output
    assert "status 3" in output
    assert "Traceback" not in output
    # what starts after the failed daemon was not started
    assert project.pid("web") is None
    assert project.events("web", "listening") == []
    assert "web" not in output


def test_config_error_exits_2_and_names_file_daemon_and_key(project):
    project.echo("db", colour="red")
    result = project.run("up")
    assert result.returncode == 2
    assert str(project.path) in result.stderr
    assert "'db'" in result.stderr
    assert "'colour'" in result.stderr
    assert "unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert project.pid("db") is None


def test_invalid_toml_exits_2(project):
    project.path.write_text('[daemons.db]\nstart = "unterminated\n')
    result = project.run("status")
    assert result.returncode == 2
    assert str(project.path) in result.stderr
    assert "TOML" in result.stderr


def test_daemon_without_pid_file_is_a_config_error_not_a_traceback(project):
    project.echo("db")
    del project.tables["db"]["pid"]
    project.write()
    result = project.run("up")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "'db'" in result.stderr
    assert "pid" in result.stderr


def test_no_config_found_exits_2(tmp_path):
    ancestors = [tmp_path, *tmp_path.parents]
    if any((d / "daemons.toml").exists() or (d / "pyproject.toml").exists() for d in ancestors):
        pytest.skip("an ancestor of tmp_path holds a daemons file")
    result = subprocess.run(
        [SCRIPT, "status"],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert "daemons.toml" in result.stderr
    assert "-c" in result.stderr


def test_unknown_daemon_name_exits_2(project):
    project.echo("db")
    result = project.run("up", "nosuch")
    assert result.returncode == 2
    assert "nosuch" in result.stderr
    assert project.pid("db") is None


def test_usage_errors_exit_2(project):
    project.echo("db")
    no_command = project.run("nosuchcommand")
    assert no_command.returncode == 2
    dashes = project.run("up", "--", "echo", "hi")
    assert dashes.returncode == 2
    assert "exec" in dashes.stderr
    assert project.pid("db") is None
    empty_exec = project.run("exec", "--")
    assert empty_exec.returncode == 2
    assert "exec needs a command" in empty_exec.stderr
    assert project.pid("db") is None


# -- finding the file ------------------------------------------------------------------


def test_config_option_from_another_directory(project):
    project.echo("db")
    elsewhere = project.root / "elsewhere"
    elsewhere.mkdir()
    project.ok("-c", str(project.path), "up", cwd=elsewhere)
    pid = project.pid("db")  # the relative PID path is relative to the file
    assert alive(pid)
    assert not (elsewhere / "tmp").exists()
    status = json.loads(project.ok("--config", str(project.path), "status", "--json").stdout)
    assert status[0]["pid"] == pid
    project.ok("-c", str(project.path), "down", cwd=elsewhere)
    wait_for(lambda: not alive(pid), what="db to exit")


def test_config_found_in_a_parent_directory(project):
    project.echo("db")
    sub = project.dir / "src" / "deep"
    sub.mkdir(parents=True)
    project.ok("up", cwd=sub)
    assert alive(project.pid("db"))
    project.ok("down", cwd=sub)
    assert project.pid("db") is None


def test_pyproject_toml_is_used(project):
    project.echo("db")
    pyproject = project.dir / "pyproject.toml"
    text = project.path.read_text().replace("[daemons.", "[tool.daemon-controller.daemons.")
    pyproject.write_text('[project]\nname = "demo"\n\n' + text)
    project.path.unlink()
    project.ok("up")
    pid = project.pid("db")
    assert alive(pid)
    project.ok("down")
    wait_for(lambda: not alive(pid), what="db to exit")
    project.path = pyproject  # for the fixture's clean-up


# -- exec ------------------------------------------------------------------------------


SEEN = (
    "import pathlib, sys; "
    "pathlib.Path('seen.txt').write_text(pathlib.Path('tmp/db.pid').read_text()); "
    "sys.exit(7)"
)


def test_exec_passes_the_exit_code_through_and_stops_what_it_started(project):
    project.echo("db").echo("web", after=["db"])
    result = project.run("exec", "--", sys.executable, "-c", SEEN)
    assert result.returncode == 7, (result.stdout, result.stderr)
    pid_during = int((project.dir / "seen.txt").read_text())  # the command ran with db up
    assert "ok db: started" in result.stdout
    assert "ok web: stopped" in result.stdout
    assert "ok db: stopped" in result.stdout
    assert result.stdout.index("ok web: stopped") < result.stdout.index("ok db: stopped")
    assert project.pid("db") is None
    assert project.pid("web") is None
    wait_for(lambda: not alive(pid_during), what="db to exit")


def test_exec_zero_exit_and_command_output(project):
    project.echo("db")
    result = project.run("exec", "db", "--", sys.executable, "-c", "print('from-the-command')")
    assert result.returncode == 0
    assert "from-the-command" in result.stdout
    assert project.pid("db") is None


def test_exec_keep_leaves_the_daemons_running(project):
    project.echo("db").echo("web")
    project.ok("exec", "--keep", "--", sys.executable, "-c", "pass")
    pids = [project.pid("db"), project.pid("web")]
    assert all(alive(pid) for pid in pids)
    project.ok("down")
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), what=f"PID {pid} to exit")


def test_exec_leaves_an_already_running_daemon_running(project):
    project.echo("db").echo("web", after=["db"])
    project.ok("up", "db")
    db = project.pid("db")
    result = project.run("exec", "--", sys.executable, "-c", SEEN)
    assert result.returncode == 7
    assert f"ok db: already running (PID {db})" in result.stdout
    assert "ok web: started" in result.stdout
    assert "ok web: stopped" in result.stdout
    assert "db: stopped" not in result.stdout
    assert project.pid("db") == db
    assert alive(db)
    assert project.pid("web") is None


def test_exec_with_a_failing_daemon_does_not_run_the_command(project):
    project.echo("db")
    project.echo(
        "bad", "--exit-before-daemonize", "4", "--before-daemonize-message", "boom", after=["db"]
    )
    result = project.run("exec", "--", sys.executable, "-c", "open('ran.txt', 'w').close()")
    assert result.returncode == 1
    assert "boom" in result.stdout + result.stderr
    assert not (project.dir / "ran.txt").exists()
    # db was started for the command, so it is stopped again
    assert "ok db: started" in result.stdout
    assert "ok db: stopped" in result.stdout
    assert project.pid("db") is None


def test_exec_of_a_missing_program_exits_127_and_stops_the_daemons(project):
    project.echo("db")
    result = project.run("exec", "--", "/nonexistent/program")
    assert result.returncode == 127
    assert "/nonexistent/program" in result.stdout + result.stderr
    assert project.pid("db") is None


# -- output: terminals, colours, logging -----------------------------------------------


def test_plain_output_when_not_a_terminal(project):
    project.echo("db").echo("web", "--wait-before-listen", "0.4", after=["db"])
    env = base_env()  # NO_COLOR unset: no colours only because stdout is a pipe
    outputs = [
        project.ok("up", env=env),
        project.ok("status", env=env),
        project.ok("down", env=env),
    ]
    for result in outputs:
        assert "\x1b[" not in result.stdout
        assert "\x1b[" not in result.stderr
        assert "\r" not in result.stdout
    assert outputs[0].stdout.splitlines()[0].startswith("ok db: started")


def test_terminal_gets_colours_and_a_live_status_line(project):
    project.echo("db").echo("web", "--wait-before-listen", "1", after=["db"])
    code, output = run_tty([SCRIPT, "up"], project.dir, base_env())
    assert code == 0, output
    assert "\x1b[32mok\x1b[0m db: started" in output
    assert "\x1b[32mok\x1b[0m web: started" in output
    # the live line: who, elapsed time, last log line, redrawn in place
    assert re.search(r"\r\x1b\[Kstarting web \(\d+\.\d s\) \| web: \[echo_server \d+\]", output)
    code, output = run_tty([SCRIPT, "status"], project.dir, base_env())
    assert code == 0
    assert "\x1b[32mrunning" in output


def test_terminal_with_no_color_has_no_colours(project):
    project.echo("db").echo("web", "--wait-before-listen", "0.5", after=["db"])
    env = base_env(NO_COLOR="1")
    for command in ("up", "status", "down"):
        code, output = run_tty([SCRIPT, command], project.dir, env)
        assert code == 0, output
        assert not COLOUR.search(output), output
        assert "db" in output
        assert "running" in output or "ok db: " in output


def test_terminal_without_a_size_still_shows_the_last_log_line(project):
    # A pseudo-terminal nobody sized (script(1) under CI, docker -t) reports 0 columns.
    project.echo("web", "--wait-before-listen", "1")
    code, output = run_tty([SCRIPT, "up"], project.dir, base_env(), columns=None)
    assert code == 0, output
    assert re.search(r"starting web \(\d+\.\d s\) \| web: \[echo_server", output), output


def test_verbose_logs_debug_on_stderr(project):
    project.echo("db")
    result = project.ok("-v", "up")
    assert "Starting daemon 'db'" in result.stderr
    quiet = project.ok("down")
    assert "Stopping daemon" not in quiet.stderr
    assert quiet.stderr == ""


RUNNING = "import pathlib, time; pathlib.Path('running').touch(); time.sleep(60)"


def test_keyboard_interrupt_during_exec_still_stops_the_daemons(project):
    project.echo("db")
    proc = subprocess.Popen(
        [SCRIPT, "exec", "--", sys.executable, "-c", RUNNING],
        cwd=project.dir,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: alive(project.pid("db")), timeout=20, what="db to start")
        pid = project.pid("db")
        wait_for((project.dir / "running").exists, timeout=20, what="the command")
        os.killpg(proc.pid, 2)  # Ctrl-C goes to the whole foreground group
        _out, _err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        wait_for(lambda: not alive(pid), what="db to exit")
        assert project.pid("db") is None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()


# -- read_tail: the log reader shared by the CLI and the pytest plugin ----------------


def test_read_tail_reads_the_end_or_what_came_after_an_offset(tmp_path):
    """read_tail gives the last `limit` bytes, or what follows `since` (capped the same way)."""
    log = tmp_path / "log"
    log.write_bytes(b"0123456789")
    assert read_tail(log) == "0123456789"
    assert read_tail(log, limit=4) == "6789"
    assert read_tail(log, limit=0) == ""
    assert read_tail(log, since=7) == "789"
    assert read_tail(log, since=10) == ""
    assert read_tail(log, since=2, limit=3) == "789"  # the newest of what is new
    assert read_tail(log, since=50) == "0123456789"  # truncated since: all of it is new
    log.write_bytes("é".encode() * 3)
    assert read_tail(log, limit=3) == "\ufffdé"  # a cut character is replaced, not an error
    with pytest.raises(ValueError, match="0 or more"):
        read_tail(log, limit=-1)


def test_read_tail_reads_regular_files_only_and_never_blocks(tmp_path):
    """A missing file, a directory, a device or a FIFO gives None at once (a FIFO never hangs)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(read_tail(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert results == [None]
    assert read_tail(tmp_path / "missing") is None
    assert read_tail(tmp_path) is None
    assert read_tail("/dev/zero") is None
    target = tmp_path / "real"
    target.write_text("via a link")
    (tmp_path / "link").symlink_to(target)
    assert read_tail(tmp_path / "link") == "via a link"
