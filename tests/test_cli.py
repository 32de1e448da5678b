"""The ``daemon-controller`` command line, with real daemons.

Every test writes a ``daemons.toml`` in ``tmp_path`` declaring echo-server
daemons (``tests/echo_server.py``, free ports, PID and log files relative to
the file, ``DC_TEST_ID`` in their ``env`` so the sweeper finds leftovers) and
runs the command: ``up`` / ``down`` / ``restart`` / ``status`` (table and
``--json``) / ``logs`` / ``exec``, the ``after`` order for starting and
stopping, concurrent starts, failures reported as they happen and the daemons
skipped because of them, exit codes (0, 1 with the daemon's error output, 2 for
usage and configuration errors), config lookup (``-c``, parent directories),
``--help`` and ``--version``, ``-v``, colours and the live status line on a
terminal (a real pseudo-terminal) and plain output elsewhere, control
characters escaped.

Most tests call :func:`daemon_controller._cli.run` in this process with
in-memory streams (the daemons, PID files and sockets are real); a few run
the installed ``daemon-controller`` script and ``python -m daemon_controller``
as subprocesses: what only a separate process shows (standard output of
``exec`` redirected to a file, Ctrl-C and SIGTERM). The last section tests
``daemon_controller._files.read_tail``, which reads the logs for the CLI and
the pytest plugin.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from echo_server import ECHO_SERVER, free_port
from helpers import gone

from daemon_controller import _cli
from daemon_controller._files import read_tail

REPO = Path(__file__).resolve().parent.parent
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def console_script() -> str:
    """The installed ``daemon-controller`` script; fails (never skips) when it is missing."""
    sibling = Path(sys.executable).parent / "daemon-controller"
    found = str(sibling) if sibling.exists() else shutil.which("daemon-controller")
    assert found is not None, (
        "the daemon-controller console script is not installed next to "
        f"{sys.executable} nor on PATH: run `pip install -e .` in {REPO}"
    )
    return found


def alive(pid: int | None) -> bool:
    return pid is not None and not gone(pid)


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


def subprocess_env(**changes: str) -> dict[str, str]:
    """This environment for a child CLI, able to import the package even when not installed."""
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "DC_TEST_ID"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(changes)
    return env


class Stream(io.StringIO):
    """An in-memory stream that notes when (``time.time()``) each piece was written."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.writes.append((time.time(), s))
        return super().write(s)

    def written_at(self, text: str) -> float:
        return next(when for when, piece in self.writes if text in piece)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


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
        self.last_streams: tuple[Stream, Stream] | None = None

    def echo(
        self,
        name: str,
        *args: str,
        timed: bool = False,
        prelude: str = "",
        files: str | None = None,
        **keys: object,
    ) -> Project:
        """Declare an echo-server daemon ``name``, its files named ``files`` (default: ``name``).

        ``timed`` logs its start time to starts/; ``prelude`` is shell code run
        by its start command first.
        """
        port = free_port()
        self.ports[name] = port
        files = files or name
        argv = [
            sys.executable,
            str(ECHO_SERVER),
            "--port",
            str(port),
            "--pid-file",
            f"tmp/{files}.pid",
            "--log-file",
            f"log/{files}.log",
            "--record",
            f"tmp/{files}.jsonl",
            *args,
        ]
        start: object = argv
        if timed:
            (self.dir / "starts").mkdir(exist_ok=True)
            prelude += f"date +%s.%N > starts/{files}; "
        if prelude:
            start = f"{prelude}exec {shlex.join(argv)}"
        table: dict[str, object] = {
            "start": start,
            "ping": f"tcp://127.0.0.1:{port}",
            "pid": f"tmp/{files}.pid",
            "log": f"log/{files}.log",
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
            f"[daemons.{json.dumps(name)}]\n"
            + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
            + "\n"
            for name, table in self.tables.items()
        )
        self.path.write_text(text, encoding="utf-8")
        return self

    def run(self, *args: str, cwd: Path | None = None) -> Result:
        """``daemon-controller ARGS`` in this process, in ``cwd`` (default: the project)."""
        stdout, stderr = Stream(), Stream()
        self.last_streams = (stdout, stderr)
        with contextlib.chdir(cwd or self.dir):
            code = _cli.run(list(args), stdout, stderr)
        return Result(code, stdout.getvalue(), stderr.getvalue())

    def ok(self, *args: str, cwd: Path | None = None) -> Result:
        result = self.run(*args, cwd=cwd)
        assert result.returncode == 0, result
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

    def recorded(self, name: str, event: str) -> list[dict[str, object]]:
        """The daemon's ``event`` records, once there is one.

        The echo server writes its "listening" record just after listen(): a
        start can return before the line is in the file.
        """
        wait_for(lambda: self.events(name, event), what=f"{name}'s {event!r} record")
        return self.events(name, event)

    def started_at(self, name: str) -> float:
        return float((self.dir / "starts" / name).read_text().strip())

    def listening_at(self, name: str) -> float:
        (event,) = self.recorded(name, "listening")
        return float(str(event["time"]))


@pytest.fixture
def project(tmp_path, test_id, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    proj = Project(tmp_path, test_id)
    yield proj
    if proj.tables:
        proj.run("-c", str(proj.path), "down")


@dataclass
class Terminal:
    """A pseudo-terminal: ``stream`` writes to its terminal side; ``text()`` is what showed."""

    stream: io.TextIOWrapper
    chunks: list[bytes]

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


@contextlib.contextmanager
def terminal(columns: int | None = 120):
    """A new pseudo-terminal (``columns`` wide; ``None``: never sized, it says 0)."""
    master, slave = os.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # a full terminal buffer would block the writer
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    tty = Terminal(open(slave, "w", encoding="utf-8"), chunks)  # noqa: SIM115 - closed below
    try:
        yield tty
    finally:
        tty.stream.write("<<end>>\n")
        tty.stream.flush()
        wait_for(lambda: b"<<end>>" in b"".join(chunks), what="the terminal to be read")
        tty.stream.close()
        reader.join(timeout=10)
        os.close(master)


def run_on_terminal(project: Project, *args: str, columns: int | None = 120) -> tuple[int, str]:
    """``daemon-controller ARGS`` in this process, stdout and stderr on a pseudo-terminal."""
    with terminal(columns) as tty, contextlib.chdir(project.dir):
        code = _cli.run(list(args), tty.stream, tty.stream)
    return code, tty.text().replace("<<end>>\r\n", "")


# -- help and version --------------------------------------------------------------------


def test_help_shows_commands_and_examples(project):
    """--help lists every command and the examples on stdout, without colours, exit 0."""
    result = project.ok("--help")
    assert "examples:" in result.stdout
    for command in ("up", "down", "restart", "status", "logs", "exec"):
        assert command in result.stdout
    assert "daemon-controller exec -- " in result.stdout
    assert "exit codes" in result.stdout
    assert "\x1b[" not in result.stdout
    assert result.stderr == ""


def test_help_gives_every_command_a_description_and_every_option_a_text(project):
    """Each command has a line in --help and a description in its own --help;
    -c and -v say what they do; exec's usage shows where its command goes."""
    listing = project.ok("--help").stdout
    for command in ("up", "down", "restart", "status", "logs", "exec"):
        assert re.search(rf"^    {command} +\w.{{10,}}$", listing, re.MULTILINE), command
        own = project.ok(command, "--help").stdout
        body = own.split("\n\n")[1]  # after the usage: the description
        assert not body.lstrip().startswith(("positional arguments", "options")), (command, own)
        for option in ("-c FILE, --config FILE", "-v, --verbose"):
            lines = own.splitlines()
            (at,) = [i for i, x in enumerate(lines) if x.strip().startswith(option)]
            text = lines[at].strip().removeprefix(option).strip() or lines[at + 1].strip()
            assert text, (command, option, own)
            assert not text.startswith("-"), (command, option, own)
    usage = project.ok("exec", "--help").stdout.splitlines()[0]
    assert usage.startswith("usage: daemon-controller exec ")
    assert usage.rstrip().endswith("-- COMMAND [ARG ...]")


def test_version_prints_the_installed_version(project):
    """--version prints "daemon-controller VERSION" on stdout and exits 0."""
    try:
        expected = metadata.version("daemon-controller")
    except metadata.PackageNotFoundError:  # a source tree on sys.path
        expected = "(version unknown: not installed)"
    result = project.ok("--version")
    assert result.stdout == f"daemon-controller {expected}\n"
    assert result.stderr == ""


def test_run_leaves_no_global_state_behind(project):
    """run() installs no signal handler and leaves logging as it found it, even with -v."""
    project.echo("db")
    library = logging.getLogger("daemon_controller")
    before = (
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
        list(logging.getLogger().handlers),
        list(library.handlers),
        library.level,
    )
    result = project.ok("-v", "up")
    assert "Starting daemon 'db'" in result.stderr  # the handler was there during the call
    project.ok("down")
    after = (
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
        list(logging.getLogger().handlers),
        list(library.handlers),
        library.level,
    )
    assert after == before


# -- up / status / logs / down ---------------------------------------------------------


def test_up_starts_all_and_second_up_says_already_running(project):
    """up starts every daemon once and reports each PID; a second up starts nothing."""
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
    assert len(project.recorded("db", "listening")) == 1
    assert len(project.recorded("web", "listening")) == 1


def test_up_named_daemon_starts_only_it_and_what_it_needs(project):
    """up NAME starts NAME and what it starts after, nothing else."""
    project.echo("db").echo("web", after=["db"]).echo("other")
    result = project.ok("up", "web")
    assert alive(project.pid("db"))
    assert alive(project.pid("web"))
    assert project.pid("other") is None
    assert "other" not in result.stdout


def test_status_table_and_json(project):
    """status shows name, state, PID, uptime and ping as a table or JSON, running or not."""
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
    # the columns line up
    assert len({line.index("running") for line in table[1:]}) == 1

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
    """logs NAME -n N prints the log's last N lines."""
    project.echo("db", "--log-message", "first-marker")
    project.ok("up")
    wanted = (project.dir / "log" / "db.log").read_text().splitlines()[-2:]
    assert len(wanted) == 2
    result = project.ok("logs", "db", "-n", "2")
    assert result.stdout.splitlines() == wanted
    everything = project.ok("logs", "db").stdout
    assert "first-marker" in everything


def test_logs_zero_lines_shows_nothing(project):
    """logs -n 0 prints nothing."""
    project.echo("db")
    project.ok("up")
    assert (project.dir / "log" / "db.log").read_text().strip()
    assert project.ok("logs", "db", "-n", "0").stdout == ""


def test_logs_before_the_first_start_and_of_a_fifo(project):
    """logs says when there is no log yet, and fails (1) rather than hang on a FIFO."""
    project.echo("db")
    result = project.ok("logs", "db")
    assert "no log yet" in result.stdout
    os.mkfifo(project.dir / "log" / "db.log")
    result = project.run("logs", "db")
    assert result.returncode == 1
    assert "cannot read" in result.stdout


def test_logs_of_unknown_daemon_is_a_usage_error(project):
    """logs of an undeclared daemon exits 2 and names it."""
    project.echo("db")
    result = project.run("logs", "nosuch")
    assert result.returncode == 2
    assert "nosuch" in result.stderr


def test_down_stops_all_and_second_down_says_not_running(project):
    """down stops every daemon; a second down says each is not running."""
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
    """down stops a daemon only after what starts after it has stopped."""

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


def test_down_leaves_what_a_daemon_that_failed_to_stop_needs(project):
    """When a daemon fails to stop, down keeps what it starts after running, says so, exits 1."""
    project.echo("db")
    project.echo("web", stop="exit 3", after=["db"])
    project.ok("up")
    db, web = project.pid("db"), project.pid("web")
    try:
        result = project.run("down")
        assert result.returncode == 1, result
        assert "FAILED web" in result.stdout
        assert "skipped db: web starts after it and failed to stop" in result.stdout
        assert alive(db)
        assert alive(web)
    finally:
        project.tables["web"].pop("stop")  # the fixture's down can stop it now
        project.write()


def test_down_named_daemon_leaves_the_others(project):
    """down NAME stops only NAME."""
    project.echo("db").echo("web", after=["db"])
    project.ok("up")
    db = project.pid("db")
    project.ok("down", "web")
    assert project.pid("web") is None
    assert alive(db)


def test_up_starts_dependencies_first(project):
    """A daemon starts only once what it starts after answers its ping."""
    # db is slow to listen: started concurrently, web would start long before db listens.
    project.echo("db", "--wait-before-listen", "0.5", timed=True)
    project.echo("web", timed=True, after=["db"])
    project.ok("up")
    assert project.started_at("web") > project.listening_at("db")
    lines = [line.split(":")[0] for line in project.ok("up").stdout.splitlines()]
    assert lines == ["ok db", "ok web"]


@pytest.mark.slow
def test_independent_daemons_start_concurrently(project):
    """Daemons that do not depend on each other start at the same time."""
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
    """restart gives every daemon a new process and reports the new PID."""
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
    """A failed start exits 1 with the daemon's output; what starts after it is not started."""
    project.echo("bad", "--before-daemonize-message", "boom-marker", "--exit-before-daemonize", "3")
    project.echo("web", after=["bad"])
    result = project.run("up")
    assert result.returncode == 1, result
    assert "FAILED bad" in result.output
    assert "boom-marker" in result.output
    assert "status 3" in result.output
    assert "Traceback" not in result.output
    assert project.pid("web") is None
    assert project.events("web", "listening") == []
    assert "skipped web: it starts after bad, which failed to start" in result.output


@pytest.mark.slow
def test_up_reports_a_failure_at_once_and_says_what_it_skips(project):
    """A daemon that fails at once is reported at once, not when a slow sibling is up;
    each daemon that needs it (directly or not) is skipped naming the failure; exit 1."""
    project.echo("slow", "--wait-before-listen", "3")
    project.echo("db", start="exit 127")
    project.echo("app", after=["db"])
    project.echo("web", after=["app"])
    result = project.run("up")
    assert result.returncode == 1, result
    stdout, _ = project.last_streams
    assert stdout.written_at("FAILED db") < project.listening_at("slow") - 1
    assert "127" in result.output
    assert "skipped app: it starts after db, which failed to start" in result.stdout
    assert (
        "skipped web: it starts after app, which was skipped (db failed to start)" in result.stdout
    )
    assert re.search(r"^ok slow: started", result.stdout, re.MULTILINE)
    assert alive(project.pid("slow"))
    assert project.pid("app") is None
    assert project.pid("web") is None


def test_config_error_exits_2_and_names_file_daemon_and_key(project):
    """An unknown key exits 2, naming the file, the daemon and the key, without a traceback."""
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
    """A file that is not TOML exits 2 and names the file."""
    project.path.write_text('[daemons.db]\nstart = "unterminated\n')
    result = project.run("status")
    assert result.returncode == 2
    assert str(project.path) in result.stderr
    assert "TOML" in result.stderr


def test_daemon_without_pid_file_is_a_config_error_not_a_traceback(project):
    """A daemon missing its 'pid' key is a configuration error (2), not a crash."""
    project.echo("db")
    del project.tables["db"]["pid"]
    project.write()
    result = project.run("up")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "'db'" in result.stderr
    assert "pid" in result.stderr
    project.tables.clear()  # nothing to clean up, and down would fail the same way


def test_no_config_found_exits_2(project, tmp_path):
    """Without a daemons file here or above, exit 2 and suggest -c."""
    ancestors = [tmp_path, *tmp_path.parents]
    if any((d / "daemons.toml").exists() or (d / "pyproject.toml").exists() for d in ancestors):
        pytest.skip("an ancestor of tmp_path holds a daemons file")
    result = project.run("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "daemons.toml" in result.stderr
    assert "-c" in result.stderr


def test_unknown_daemon_name_exits_2(project):
    """up with an undeclared name exits 2, names it, and starts nothing."""
    project.echo("db")
    result = project.run("up", "nosuch")
    assert result.returncode == 2
    assert "nosuch" in result.stderr
    assert project.pid("db") is None


def test_usage_errors_exit_2(project):
    """An unknown command, '--' without exec and exec without a command exit 2."""
    project.echo("db")
    no_command = project.run("nosuchcommand")
    assert no_command.returncode == 2
    assert "invalid choice" in no_command.stderr
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
    """-c FILE works from anywhere; relative paths in it are relative to the file."""
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
    """Without -c, daemons.toml is found in a parent of the current directory."""
    project.echo("db")
    sub = project.dir / "src" / "deep"
    sub.mkdir(parents=True)
    project.ok("up", cwd=sub)
    assert alive(project.pid("db"))
    project.ok("down", cwd=sub)
    assert project.pid("db") is None


def test_pyproject_toml_is_used(project):
    """[tool.daemon-controller.daemons.NAME] in pyproject.toml works like daemons.toml."""
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
    """exec runs the command with the daemons up, exits with its code, then stops them
    in reverse order; its own messages go to stderr."""
    project.echo("db").echo("web", after=["db"])
    result = project.run("exec", "--", sys.executable, "-c", SEEN)
    assert result.returncode == 7, result
    pid_during = int((project.dir / "seen.txt").read_text())  # the command ran with db up
    assert result.stdout == ""
    assert "ok db: started" in result.stderr
    assert "ok web: stopped" in result.stderr
    assert "ok db: stopped" in result.stderr
    assert result.stderr.index("ok web: stopped") < result.stderr.index("ok db: stopped")
    assert project.pid("db") is None
    assert project.pid("web") is None
    wait_for(lambda: not alive(pid_during), what="db to exit")


def test_exec_zero_exit_and_command_output(project, capfd):
    """The command's output reaches the process's own stdout; exec exits 0 with it."""
    project.echo("db")
    result = project.run("exec", "db", "--", sys.executable, "-c", "print('from-the-command')")
    assert result.returncode == 0
    assert "from-the-command" in capfd.readouterr().out
    assert project.pid("db") is None


def test_exec_keep_leaves_the_daemons_running(project):
    """exec --keep leaves the daemons it started running."""
    project.echo("db").echo("web")
    project.ok("exec", "--keep", "--", sys.executable, "-c", "pass")
    pids = [project.pid("db"), project.pid("web")]
    assert all(alive(pid) for pid in pids)
    project.ok("down")
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), what=f"PID {pid} to exit")


def test_exec_leaves_an_already_running_daemon_running(project):
    """exec stops only what it started: a daemon up before it stays up."""
    project.echo("db").echo("web", after=["db"])
    project.ok("up", "db")
    db = project.pid("db")
    result = project.run("exec", "--", sys.executable, "-c", SEEN)
    assert result.returncode == 7
    assert f"ok db: already running (PID {db})" in result.stderr
    assert "ok web: started" in result.stderr
    assert "ok web: stopped" in result.stderr
    assert "db: stopped" not in result.stderr
    assert project.pid("db") == db
    assert alive(db)
    assert project.pid("web") is None


def test_exec_with_a_failing_daemon_does_not_run_the_command(project):
    """When a daemon fails, exec does not run the command, stops what it started, exits 1."""
    project.echo("db")
    project.echo(
        "bad", "--exit-before-daemonize", "4", "--before-daemonize-message", "boom", after=["db"]
    )
    project.echo("web", after=["bad"])
    result = project.run("exec", "--", sys.executable, "-c", "open('ran.txt', 'w').close()")
    assert result.returncode == 1
    assert "boom" in result.stderr
    assert "skipped web: it starts after bad, which failed to start" in result.stderr
    assert not (project.dir / "ran.txt").exists()
    # db was started for the command, so it is stopped again
    assert "ok db: started" in result.stderr
    assert "ok db: stopped" in result.stderr
    assert project.pid("db") is None


def test_exec_of_a_missing_program_exits_127_and_stops_the_daemons(project):
    """A command that does not exist exits 127, and the daemons are stopped."""
    project.echo("db")
    result = project.run("exec", "--", "/nonexistent/program")
    assert result.returncode == 127
    assert "/nonexistent/program" in result.stderr
    assert project.pid("db") is None


def test_exec_of_a_file_that_is_not_a_program_exits_126(project):
    """A command that cannot be executed (no execute permission) exits 126, as in a shell,
    with a message instead of a traceback; the daemons are stopped."""
    project.echo("db")
    data = project.dir / "data.txt"
    data.write_text("not a program\n")
    result = project.run("exec", "--", str(data))
    assert result.returncode == 126, result
    assert f"cannot run {str(data)!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert project.pid("db") is None


def test_exec_of_a_command_killed_by_a_signal_exits_128_plus_the_signal(project):
    """A command killed by signal N makes exec exit 128 + N, as a shell does."""
    project.echo("db")
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = project.run("exec", "--", sys.executable, "-c", kill_self)
    assert result.returncode == 128 + signal.SIGKILL
    assert project.pid("db") is None


# -- output: terminals, colours, logging, control characters ---------------------------


def test_plain_output_when_not_a_terminal(project):
    """Output that is not a terminal has no colours and no live status line."""
    project.echo("db").echo("web", "--wait-before-listen", "0.4", after=["db"])
    # NO_COLOR is unset: no colours only because the output is not a terminal
    outputs = [project.ok("up"), project.ok("status"), project.ok("down")]
    for result in outputs:
        assert "\x1b[" not in result.output
        assert "\r" not in result.stdout
    assert outputs[0].stdout.splitlines()[0].startswith("ok db: started")


def test_terminal_gets_colours_and_a_live_status_line(project, monkeypatch):
    """On a terminal: coloured results, and a live line with who, how long, last log line."""
    monkeypatch.setenv("TERM", "xterm-256color")
    project.echo("db").echo("web", "--wait-before-listen", "1", after=["db"])
    code, output = run_on_terminal(project, "up")
    assert code == 0, output
    assert "\x1b[32mok\x1b[0m db: started" in output
    assert "\x1b[32mok\x1b[0m web: started" in output
    # the live line: who, elapsed time, last log line, redrawn in place
    assert re.search(r"\r\x1b\[Kstarting web \(\d+\.\d s\) \| web: \[echo_server \d+\]", output)
    code, output = run_on_terminal(project, "status")
    assert code == 0
    assert "\x1b[32mrunning" in output


def test_terminal_with_no_color_has_no_colours(project, monkeypatch):
    """NO_COLOR turns colours off on a terminal too."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    project.echo("db").echo("web", "--wait-before-listen", "0.5", after=["db"])
    for command in ("up", "status", "down"):
        code, output = run_on_terminal(project, command)
        assert code == 0, output
        assert not COLOUR.search(output), output
        assert "db" in output
        assert "running" in output or "ok db: " in output


def test_terminal_without_a_size_still_shows_the_last_log_line(project, monkeypatch):
    """A terminal that reports 0 columns (script(1), docker -t) gets an 80-column live line."""
    monkeypatch.setenv("TERM", "xterm-256color")
    project.echo("web", "--wait-before-listen", "1")
    code, output = run_on_terminal(project, "up", columns=None)
    assert code == 0, output
    assert re.search(r"starting web \(\d+\.\d s\) \| web: \[echo_server", output), output


def test_verbose_logs_debug_on_stderr(project):
    """-v sends the library's debug log to stderr; without it stderr stays empty."""
    project.echo("db")
    result = project.ok("-v", "up")
    assert "Starting daemon 'db'" in result.stderr
    quiet = project.ok("down")
    assert "Stopping daemon" not in quiet.stderr
    assert quiet.stderr == ""


ESC_NAME = "db\x1b[2J\x1b]0;owned\x07"
NASTY_LINE = "\x1b[31mred\x1b[0m progress\r50%\x9b2J"


def test_control_characters_in_names_and_logs_are_escaped(project, monkeypatch):
    """A daemon name, a log line or a daemon's error output with escape sequences or \\r
    is printed with those characters escaped, also on a terminal."""
    monkeypatch.setenv("TERM", "xterm-256color")
    project.echo(ESC_NAME, "--log-message", NASTY_LINE, files="db")
    project.echo(
        "bad", "--before-daemonize-message", "fail\x1b[2Jed\rhere", "--exit-before-daemonize", "3"
    )
    results = [project.run("up"), project.ok("status"), project.ok("logs", ESC_NAME)]
    code, on_terminal = run_on_terminal(project, "logs", ESC_NAME)
    assert code == 0
    assert results[0].returncode == 1
    for text in [r.output for r in results]:
        assert "\x1b" not in text
        assert "\r" not in text
        assert "\x9b" not in text
    shown_name = r"db\x1b[2J\x1b]0;owned\x07"
    assert f"ok {shown_name}: started" in results[0].stdout
    assert r"fail\x1b[2Jed\rhere" in results[0].stdout
    (row,) = [line for line in results[1].stdout.splitlines() if line.startswith("db")]
    assert row.startswith(shown_name + "  running")
    assert r"\x1b[31mred\x1b[0m progress\r50%\x9b2J" in results[2].stdout
    assert "\x1b[31mred" not in on_terminal
    assert r"\x1b[31mred\x1b[0m progress\r50%" in on_terminal
    project.tables.pop("bad")


def test_control_characters_in_the_live_status_line_are_escaped(project, monkeypatch):
    """The live status line shows a daemon's last log line with its escapes made visible."""
    monkeypatch.setenv("TERM", "xterm-256color")
    # The start command logs the line, then waits: the line stays the last one meanwhile.
    project.echo("web", prelude=r"printf '\033]0;title\007x\rover\n' >> log/web.log; sleep 1; ")
    code, output = run_on_terminal(project, "up")
    assert code == 0, output
    assert r"| web: \x1b]0;title\x07x\rover" in output
    assert "\x1b]0;" not in output


# -- as a separate process ---------------------------------------------------------------


def test_console_script_exec_leaves_stdout_to_the_command(project):
    """`daemon-controller exec -- cmd > out.json`: the file holds the command's output only;
    exec's progress goes to stderr."""
    project.echo("db")
    document = {"answer": 42}
    out_file = project.dir / "out.json"
    with out_file.open("w") as out:
        result = subprocess.run(
            [
                console_script(),
                "exec",
                "--",
                sys.executable,
                "-c",
                f"import json; print(json.dumps({document!r}))",
            ],
            cwd=project.dir,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(out_file.read_text()) == document
    assert "ok db: started" in result.stderr
    assert "ok db: stopped" in result.stderr
    assert project.pid("db") is None


def test_python_dash_m_runs_the_same_command(project):
    """`python -m daemon_controller` is the same command as the console script."""
    project.echo("db")
    command = [sys.executable, "-m", "daemon_controller"]
    run = {"capture_output": True, "text": True, "timeout": 30}
    result = subprocess.run([*command, "--help"], env=subprocess_env(), check=False, **run)
    assert result.returncode == 0
    assert "examples:" in result.stdout
    status = subprocess.run(
        [*command, "-c", str(project.path), "status", "--json"],
        cwd=project.root,
        env=subprocess_env(),
        check=False,
        **run,
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["name"] == "db"
    assert row["state"] == "stopped"


RUNNING = (
    "import pathlib, signal, sys, time\n"
    "def leave(signum, frame):\n"
    "    pathlib.Path('got-signal').write_text(str(signum))\n"
    "    sys.exit(5)\n"
    "signal.signal(signal.SIGINT, leave)\n"
    "signal.signal(signal.SIGTERM, leave)\n"
    "pathlib.Path('running').touch()\n"
    "time.sleep(60)\n"
)


@contextlib.contextmanager
def exec_in_background(project: Project):
    """The console script's ``exec`` of :data:`RUNNING`, in its own process group."""
    proc = subprocess.Popen(
        [console_script(), "exec", "--", sys.executable, "-c", RUNNING],
        cwd=project.dir,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: alive(project.pid("db")), timeout=20, what="db to start")
        wait_for((project.dir / "running").exists, timeout=20, what="the command")
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_keyboard_interrupt_during_exec_still_stops_the_daemons(project):
    """Ctrl-C during exec: the command exits on its own signal, the daemons are stopped, 130."""
    project.echo("db")
    with exec_in_background(project) as proc:
        pid = project.pid("db")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole foreground group
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
    assert (project.dir / "got-signal").read_text() == str(int(signal.SIGINT))
    wait_for(lambda: not alive(pid), what="db to exit")
    assert project.pid("db") is None


def test_sigterm_during_exec_is_passed_on_and_the_daemons_stopped(project):
    """SIGTERM to exec alone (a CI timeout): the command gets SIGTERM and time to finish,
    the daemons are stopped, and exec exits 128 + SIGTERM."""
    project.echo("db")
    with exec_in_background(project) as proc:
        pid = project.pid("db")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err
    assert (project.dir / "got-signal").read_text() == str(int(signal.SIGTERM))
    wait_for(lambda: not alive(pid), what="db to exit")
    assert project.pid("db") is None


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


def test_a_running_daemon_that_does_not_answer_is_not_ok(project):
    """status says 'not answering'; up reports it as a failure and exits 1."""
    project.echo("db")
    project.ok("up")
    pid = project.pid("db")
    # The same process, now expected to answer where nothing listens.
    project.tables["db"]["ping"] = f"tcp://127.0.0.1:{free_port()}"
    project.write()
    [row] = json.loads(project.ok("status", "--json").stdout)
    assert (row["state"], row["pid"], row["ping"]) == ("not answering", pid, "no answer")
    result = project.run("up")
    assert result.returncode == 1, result
    said = result.stdout + result.stderr
    assert f"running (PID {pid}) but not answering" in said
    assert "already running" not in said
    assert alive(pid)  # up reports it; it does not touch it
    project.ok("down")
