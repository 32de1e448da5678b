"""Declaring daemons in TOML: ``daemons.toml`` and ``pyproject.toml``.

Covers ``daemon_controller.load()`` / ``load_project()`` (every key and the
``Daemon`` it builds, paths relative to the file), ``ConfigError`` for every
kind of invalid input (naming the file, the daemon and the key), ``find()``
(current directory, parents, ``daemons.toml`` before ``pyproject.toml``) and
``Project.order()``. Files are real files in ``tmp_path``; two tests start a
daemon declared in TOML to show the loaded description really works.
"""

from __future__ import annotations

import json
import pickle
import socket
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from echo_server import ECHO_SERVER
from helpers import MARKER, free_port, gone

import daemon_controller
from daemon_controller import (
    CommandPing,
    ConfigError,
    Daemon,
    HttpPing,
    TcpPing,
    UnixPing,
    load,
)
from daemon_controller._toml import Project, find, load_project

BASE = 'start = "true"\nping = "true"\n'
MINIMAL = BASE + 'pid = "run/d.pid"\nlog = "run/d.log"\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def daemons_toml(directory: Path, body: str) -> Path:
    return write(directory / "daemons.toml", body)


def with_files(options: str) -> str:
    """Add the pid and log keys a daemon needs unless it runs in the foreground."""
    text = textwrap.dedent(options)
    keys = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
    if keys & {"foreground"}:
        return text
    return text + "".join(f'{key} = "run/web.{key}"\n' for key in ("pid", "log") if key not in keys)


def load_one(directory: Path, options: str, name: str = "web") -> Daemon:
    path = daemons_toml(directory, f"[daemons.{name}]\n" + with_files(options))
    daemons = load(path)
    assert list(daemons) == [name]
    return daemons[name]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


# -- loading ------------------------------------------------------------------------


def test_daemons_toml_loads_named_daemons(tmp_path):
    path = daemons_toml(
        tmp_path,
        """
        [daemons.search]
        start = "redis-server config/redis.conf"
        ping = "tcp://127.0.0.1:6390"
        pid = "tmp/redis.pid"
        log = "log/redis.log"

        [daemons.db]
        start = ["postgres", "-D", "data"]
        ping = "tcp://localhost:5432"
        pid = "tmp/pg.pid"
        log = "log/pg.log"
        """,
    )
    daemons = daemon_controller.load(path)
    assert set(daemons) == {"search", "db"}
    search = daemons["search"]
    assert isinstance(search, Daemon)
    assert search.name == "search"
    assert search.config.start_command == "redis-server config/redis.conf"
    assert daemons["db"].name == "db"
    assert daemons["db"].config.start_command == ("postgres", "-D", "data")
    assert search.config.ping == TcpPing("127.0.0.1", 6390)
    assert search.config.pid_file == tmp_path / "tmp" / "redis.pid"
    assert search.config.log_file == tmp_path / "log" / "redis.log"


def test_pyproject_toml_loads_its_tool_table(tmp_path):
    path = write(
        tmp_path / "pyproject.toml",
        """
        [project]
        name = "example"
        version = "1.0"

        [tool.ruff]
        line-length = 100

        [tool.daemon-controller.daemons.search]
        start = "redis-server config/redis.conf"
        ping = "tcp://127.0.0.1:6390"
        pid = "tmp/redis.pid"
        log = "log/redis.log"
        """,
    )
    daemons = load(path)
    assert list(daemons) == ["search"]
    assert daemons["search"].config.ping == TcpPing("127.0.0.1", 6390)
    assert daemons["search"].config.pid_file == tmp_path / "tmp" / "redis.pid"


def test_load_accepts_str_path_and_keeps_declaration_order(tmp_path):
    path = daemons_toml(
        tmp_path,
        "".join(f"[daemons.{n}]\n{MINIMAL}\n" for n in ("zeta", "alpha", "mid")),
    )
    assert list(load(str(path))) == ["zeta", "alpha", "mid"]


def test_relative_file_path_is_made_absolute_against_the_file(tmp_path, monkeypatch):
    daemons_toml(
        tmp_path / "proj",
        f"""
        [daemons.web]
        {BASE}
        pid = "tmp/web.pid"
        log = "tmp/web.log"
        """,
    )
    monkeypatch.chdir(tmp_path)
    web = load("proj/daemons.toml")["web"]
    assert web.config.pid_file == tmp_path / "proj" / "tmp" / "web.pid"
    assert web.config.pid_file.is_absolute()
    assert web.config.cwd == tmp_path / "proj"


@pytest.mark.parametrize(
    ("ping", "expected"),
    [
        ('"tcp://127.0.0.1:6390"', TcpPing("127.0.0.1", 6390)),
        ('"tcp://localhost:80/"', TcpPing("localhost", 80)),
        ('"tcp://[::1]:8080"', TcpPing("::1", 8080)),
        ('"unix:///run/app/app.sock"', UnixPing(Path("/run/app/app.sock"))),
        ('"http://127.0.0.1:8000/health"', HttpPing("http://127.0.0.1:8000/health")),
        ('"https://example.invalid/up"', HttpPing("https://example.invalid/up")),
        ('"redis-cli ping"', CommandPing("redis-cli ping")),
        ('["pg_isready", "-q"]', CommandPing(("pg_isready", "-q"))),
    ],
)
def test_ping_forms(tmp_path, ping, expected):
    web = load_one(tmp_path, f'start = "x"\nping = {ping}\n')
    if isinstance(expected, CommandPing):
        # A ping command runs in the file's directory, like the other commands.
        expected = CommandPing(expected.command, cwd=tmp_path)
    assert web.config.ping == expected


def test_relative_unix_socket_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    web = load_one(tmp_path, 'start = "x"\nping = "unix://run/app.sock"\n')
    assert web.config.ping == UnixPing(tmp_path / "run" / "app.sock")


def test_files_and_cwd_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    web = load_one(
        tmp_path,
        f"""
        {BASE}
        pid = "tmp/web.pid"
        log = "log/web.log"
        lock = "tmp/web.lock"
        cwd = "app"
        """,
    )
    cfg = web.config
    assert cfg.pid_file == tmp_path / "tmp" / "web.pid"
    assert cfg.log_file == tmp_path / "log" / "web.log"
    assert cfg.lock_file == tmp_path / "tmp" / "web.lock"
    assert web._target().files.lock == tmp_path / "tmp" / "web.lock"
    assert cfg.cwd == tmp_path / "app"


def test_absolute_paths_stay_absolute(tmp_path):
    web = load_one(
        tmp_path,
        f"""
        {BASE}
        pid = "/var/run/web.pid"
        log = "/var/log/web.log"
        cwd = "/srv"
        """,
    )
    assert web.config.pid_file == Path("/var/run/web.pid")
    assert web.config.cwd == Path("/srv")


def test_commands_run_in_the_files_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    web = load_one(tmp_path, MINIMAL)
    assert web.config.cwd == tmp_path


def test_every_option_is_applied(tmp_path):
    web = load_one(
        tmp_path,
        """
        start = ["bin/server", "--port", "8000"]
        stop = "bin/server --stop"
        restart = ["bin/server", "--reload"]
        ping = "tcp://127.0.0.1:8000"
        pid = "web.pid"
        log = "web.log"
        start_timeout = 5
        start_abort_timeout = 1.5
        stop_timeout = 2.5
        log_activity_timeout = 3
        ping_interval = 0.25
        stop_signal = "INT"
        dont_stop_if_pid_file_invalid = true
        foreground = true
        user = "nobody"
        env = { RAILS_ENV = "test", EMPTY = "" }
        """,
    )
    cfg = web.config
    assert cfg.start_command == ("bin/server", "--port", "8000")
    assert cfg.stop_command == "bin/server --stop"
    assert cfg.restart_command == ("bin/server", "--reload")
    assert cfg.start_timeout == 5.0
    assert isinstance(cfg.start_timeout, float)
    assert cfg.start_abort_timeout == 1.5
    assert cfg.stop_timeout == 2.5
    assert cfg.log_activity_timeout == 3.0
    assert cfg.ping_interval == 0.25
    assert cfg.stop_signal == "INT"
    assert cfg.dont_stop_if_pid_file_invalid is True
    assert cfg.foreground is True
    assert cfg.user == "nobody"
    assert dict(cfg.env) == {"RAILS_ENV": "test", "EMPTY": ""}


def test_defaults_when_options_are_absent(tmp_path):
    cfg = load_one(tmp_path, MINIMAL).config
    builder = Daemon("web").config
    assert cfg.start_timeout == builder.start_timeout
    assert cfg.stop_timeout == builder.stop_timeout
    assert cfg.foreground is False
    assert cfg.dont_stop_if_pid_file_invalid is False
    assert cfg.user is None
    assert cfg.env == ()
    assert cfg.lock_file is None
    assert cfg.stop_command is None


def test_pid_and_log_are_required_unless_foreground(tmp_path):
    for key in ("pid", "log"):
        other = "log" if key == "pid" else "pid"
        path = daemons_toml(tmp_path, f'[daemons.web]\n{BASE}{other} = "x"\n')
        with pytest.raises(ConfigError) as info:
            load(path)
        assert (info.value.daemon, info.value.key) == ("web", key)
        assert "unless foreground = true or notify = true" in str(info.value)
    path = daemons_toml(tmp_path, f"[daemons.web]\n{BASE}foreground = true\n")
    assert load(path)["web"].resolved().config.pid_file is not None


def test_readiness_keys_ping_log_and_notify(tmp_path):
    # One name each: the builder's. A notify daemon needs neither pid nor log;
    # a log line combines with a ping (both must hold).
    queue = load_one(
        tmp_path, 'start = ["redis-server", "--supervised", "systemd"]\nnotify = true\n'
    )
    assert queue.config.notify is True
    assert queue.config.readiness == ("notify",)
    assert queue.resolved().config.pid_file is not None
    cache = load_one(
        tmp_path,
        """
        start = ["memcached", "-vv"]
        foreground = true
        ping_log = "server listening"
        ping = "tcp://127.0.0.1:11311"
        """,
    )
    assert cache.config.ping_log is not None
    assert cache.config.ping_log.pattern == "server listening"
    assert cache.config.readiness == ("log", "ping")


def test_a_notify_daemon_declared_in_toml_starts(tmp_path, test_id):
    port = free_port()
    start = [
        sys.executable,
        str(ECHO_SERVER),
        "--port",
        str(port),
        "--foreground",
        "--notify-ready",
    ]
    path = daemons_toml(
        tmp_path,
        f"""
        [daemons.echo]
        start = {json.dumps(start)}
        notify = true
        env = {{ {MARKER} = "{test_id}" }}
        """,
    )
    daemon = load(path)["echo"]
    try:
        daemon.start()
        assert answers(port)
        assert daemon.status().notify_status == "Listening"
    finally:
        daemon.stop()


def test_stop_signal_as_number_and_flags_false(tmp_path):
    cfg = load_one(
        tmp_path,
        f"""
        {MINIMAL}
        stop_signal = 2
        foreground = false
        dont_stop_if_pid_file_invalid = false
        """,
    ).config
    assert cfg.stop_signal == 2
    assert cfg.foreground is False
    assert cfg.dont_stop_if_pid_file_invalid is False


def test_ruby_option_name_as_a_key_is_refused_with_ours_suggested(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'foreground'"):
        load_one(tmp_path, f"{MINIMAL}daemonize_for_me = true\n")


def test_after_is_kept_in_the_project(tmp_path):
    path = daemons_toml(
        tmp_path,
        f"""
        [daemons.db]
        {MINIMAL}
        [daemons.web]
        {MINIMAL}
        after = ["db"]
        """,
    )
    project = load_project(path)
    assert isinstance(project, Project)
    assert project.path == path
    assert project.after == {"db": (), "web": ("db",)}
    assert set(project.daemons) == {"db", "web"}


# -- invalid input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "expected"),
    [
        (f'{MINIMAL}colour = "red"\n', "colour", "unknown key"),
        (f'{MINIMAL}start_timeout = "5"\n', "start_timeout", "expected a number"),
        ('start = [1, 2]\nping = "true"\n', "start", "expected a command"),
        ('start = []\nping = "true"\n', "start", "expected a command"),
        ('start = "  "\nping = "true"\n', "start", "expected a command"),
        ('start = 5\nping = "true"\n', "start", "expected a command"),
        (f"{MINIMAL}stop = [1]\n", "stop", "expected a command"),
        (f"{MINIMAL}start_timeout = -1\n", "start_timeout", "above 0"),
        (f"{MINIMAL}stop_timeout = -0.5\n", "stop_timeout", "above 0"),
        (f"{MINIMAL}start_timeout = true\n", "start_timeout", "expected a number"),
        (f"{MINIMAL}ping_interval = [1]\n", "ping_interval", "expected a number"),
        (f"{MINIMAL}env = {{ PORT = 8000 }}\n", "env", "table of strings"),
        (f'{MINIMAL}env = "PORT=8000"\n', "env", "table of strings"),
        ('ping = "true"\n', "start", "required"),
        ('start = "true"\n', "ping", "required"),
        ('start = "x"\nping = "tcp://localhost"\n', "ping", "tcp://HOST:PORT"),
        ('start = "x"\nping = "tcp://localhost:http"\n', "ping", "tcp://HOST:PORT"),
        ('start = "x"\nping = "tcp://:80"\n', "ping", "tcp://HOST:PORT"),
        ('start = "x"\nping = "tcp://localhost:70000"\n', "ping", "65535"),
        ('start = "x"\nping = "unix://"\n', "ping", "unix:///"),
        ('start = "x"\nping = "http://"\n', "ping", "URL"),
        ('start = "x"\nping = 8000\n', "ping", "string"),
        (f"{BASE}pid = 5\nlog = 'x'\n", "pid", "string"),
        (f'{BASE}log = ""\npid = "x"\n', "log", "string"),
        (f'{MINIMAL}foreground = "yes"\n', "foreground", "true or false"),
        (f"{MINIMAL}dont_stop_if_pid_file_invalid = 1\n", "dont_stop_if_pid_file_invalid", "true"),
        (f'{MINIMAL}stop_signal = "NOSUCHSIGNAL"\n', "stop_signal", "NOSUCHSIGNAL"),
        (f"{MINIMAL}stop_signal = 999\n", "stop_signal", "999"),
        (f"{MINIMAL}user = 0\n", "user", "string"),
        (f'{MINIMAL}after = "db"\n', "after", "list of daemon names"),
        (f'{MINIMAL}after = ["nosuch"]\n', "after", "nosuch"),
        (f'{MINIMAL}ping_log = "(unclosed"\n', "ping_log", "not valid"),
        (f"{MINIMAL}ping_log = 5\n", "ping_log", "string"),
        (f'{MINIMAL}notify = "yes"\n', "notify", "true or false"),
        ('start = "x"\nnotify = false\n', "ping", "unless ping_log or notify"),
        ('start = "x"\nping = "log:Ready"\n', "ping", "ping_log = '<regex>'"),
        ('start = "x"\nping = "notify"\n', "ping", "notify = true"),
        (f'{MINIMAL}ready_log = "Ready"\n', "ready_log", "did you mean 'ping_log'"),
        ('start = "x"\nping_log = "Ready"\npid = "p"\n', "log", "notify = true"),
    ],
)
def test_invalid_option_names_file_daemon_and_key(tmp_path, options, key, expected):
    path = daemons_toml(tmp_path, "[daemons.web]\n" + options)
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == path
    assert err.daemon == "web"
    assert err.key == key
    message = str(err)
    assert str(path) in message
    assert "'web'" in message
    assert f"'{key}'" in message
    assert expected in message


def test_unknown_key_lists_the_known_keys(tmp_path):
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}pidfile = 'x'\n")
    with pytest.raises(ConfigError, match=r"known keys: .*pid") as info:
        load(path)
    assert info.value.key == "pidfile"


def test_daemon_that_is_not_a_table(tmp_path):
    path = daemons_toml(tmp_path, '[daemons]\nweb = "redis-server"\n')
    with pytest.raises(ConfigError, match="must be a table") as info:
        load(path)
    assert info.value.daemon == "web"
    assert str(path) in str(info.value)


def test_cycle_in_after_is_rejected_when_loading(tmp_path):
    path = daemons_toml(
        tmp_path,
        f"""
        [daemons.a]
        {MINIMAL}
        after = ["b"]
        [daemons.b]
        {MINIMAL}
        after = ["a"]
        [daemons.c]
        {MINIMAL}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert "cycle" in message
    assert "after" in message
    assert "a, b" in message
    assert "c" not in message.rsplit(":", 1)[1]


def test_daemon_after_itself_is_a_cycle(tmp_path):
    path = daemons_toml(tmp_path, f'[daemons.a]\n{MINIMAL}after = ["a"]\n')
    with pytest.raises(ConfigError, match="cycle"):
        load(path)


def test_invalid_toml(tmp_path):
    path = daemons_toml(tmp_path, '[daemons.web]\nstart = "unterminated\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)
    assert info.value.path == path
    assert info.value.daemon is None
    assert str(path) in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "daemons.toml"
    path.write_bytes(b'[daemons.web]\nstart = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "daemons.toml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_pyproject_without_the_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"tool\.daemon-controller\.daemons") as info:
        load(path)
    assert str(path) in str(info.value)


def test_pyproject_with_a_tool_table_but_no_daemons(tmp_path):
    path = write(tmp_path / "pyproject.toml", '[tool.daemon-controller]\nfoo = "bar"\n')
    with pytest.raises(ConfigError, match=r"tool\.daemon-controller\.daemons"):
        load(path)


def test_pyproject_whose_tool_key_is_not_a_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", 'tool = "oops"\n')
    with pytest.raises(ConfigError, match=r"tool\.daemon-controller\.daemons") as info:
        load(path)
    assert info.value.path == path


def test_daemons_toml_without_daemons(tmp_path):
    path = daemons_toml(tmp_path, '[services.web]\nstart = "x"\n')
    with pytest.raises(ConfigError, match=r"daemons\.<name>"):
        load(path)


def test_unknown_top_level_key(tmp_path):
    path = daemons_toml(tmp_path, f"verbose = true\n[daemons.web]\n{MINIMAL}")
    with pytest.raises(ConfigError, match="verbose"):
        load(path)


def test_config_error_pickles(tmp_path):
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}start_timeout = -1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ConfigError
    assert (copy.path, copy.daemon, copy.key, copy.problem) == (
        info.value.path,
        info.value.daemon,
        info.value.key,
        info.value.problem,
    )
    assert str(copy) == str(info.value)
    file_level = ConfigError(path, "broken")
    copy = pickle.loads(pickle.dumps(file_level))
    assert copy.daemon is None
    assert copy.key is None
    assert str(copy) == f"{path}: broken"


# -- find() ---------------------------------------------------------------------------


def test_find_in_current_directory(tmp_path, monkeypatch):
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}")
    monkeypatch.chdir(tmp_path)
    assert find() == path.resolve()


def test_find_in_a_parent_directory(tmp_path, monkeypatch):
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}")
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find() == path.resolve()
    assert find(sub) == path.resolve()


def test_find_prefers_daemons_toml_over_pyproject(tmp_path, monkeypatch):
    write(tmp_path / "pyproject.toml", f"[tool.daemon-controller.daemons.web]\n{MINIMAL}")
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}")
    monkeypatch.chdir(tmp_path)
    assert find() == path.resolve()


def test_find_takes_a_pyproject_with_the_table(tmp_path, monkeypatch):
    path = write(tmp_path / "pyproject.toml", f"[tool.daemon-controller.daemons.web]\n{MINIMAL}")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert find() == path.resolve()


@pytest.mark.parametrize(
    "pyproject",
    ['[project]\nname = "sub"\n', "[project\n", 'tool = "oops"\n'],
    ids=["without-the-table", "unparsable", "tool-not-a-table"],
)
def test_find_skips_a_pyproject_that_declares_no_daemons(tmp_path, monkeypatch, pyproject):
    path = daemons_toml(tmp_path, f"[daemons.web]\n{MINIMAL}")
    sub = tmp_path / "sub"
    write(sub / "pyproject.toml", pyproject)
    monkeypatch.chdir(sub)
    assert find() == path.resolve()


def test_find_returns_none_when_nothing_declares_daemons(tmp_path, monkeypatch):
    ancestors = [tmp_path, *tmp_path.parents]
    if any((d / "daemons.toml").exists() or (d / "pyproject.toml").exists() for d in ancestors):
        pytest.skip("an ancestor of tmp_path holds a daemons file")
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    monkeypatch.chdir(tmp_path)
    assert find() is None
    assert find(tmp_path) is None


# -- Project.order() ------------------------------------------------------------------


def order_project(tmp_path: Path) -> Project:
    # a <- b, a <- c, (b, c) <- d; e independent
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    body = "".join(
        f"[daemons.{name}]\n{MINIMAL}after = {json.dumps(after)}\n\n"
        for name, after in deps.items()
    )
    return load_project(daemons_toml(tmp_path, body))


def test_order_gives_waves_respecting_after(tmp_path):
    assert order_project(tmp_path).order() == [["a", "e"], ["b", "c"], ["d"]]


def test_order_of_named_daemons_includes_their_dependencies(tmp_path):
    project = order_project(tmp_path)
    assert project.order(["d"]) == [["a"], ["b", "c"], ["d"]]
    assert project.order(["b"]) == [["a"], ["b"]]
    assert project.order(["e", "c"]) == [["a", "e"], ["c"]]
    assert project.order(["a"]) == [["a"]]


def test_order_rejects_an_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="no daemon named 'zz'"):
        order_project(tmp_path).order(["zz"])


def test_order_rejects_a_cycle_built_by_hand(tmp_path):
    project = Project(
        tmp_path / "daemons.toml",
        {"a": Daemon("a"), "b": Daemon("b")},
        {"a": ("b",), "b": ("a",)},
    )
    with pytest.raises(ConfigError, match="cycle"):
        project.order()


# -- a loaded daemon really runs ------------------------------------------------------


def test_loaded_daemon_starts_with_paths_relative_to_the_file(tmp_path, monkeypatch, test_id):
    port = free_port()
    proj = tmp_path / "proj"
    (proj / "tmp").mkdir(parents=True)
    (proj / "log").mkdir()
    start = [
        sys.executable,
        str(ECHO_SERVER),
        "--port",
        str(port),
        "--pid-file",
        "tmp/echo.pid",  # relative: works only if the command runs in proj/
        "--log-file",
        "log/echo.log",
    ]
    daemons_toml(
        proj,
        f"""
        [daemons.echo]
        start = {json.dumps(start)}
        ping = "tcp://127.0.0.1:{port}"
        pid = "tmp/echo.pid"
        log = "log/echo.log"
        start_timeout = 15
        stop_timeout = 10
        env = {{ DC_TEST_ID = "{test_id}" }}
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    echo = load(proj / "daemons.toml")["echo"]
    echo.start()
    pid = echo.read_pid()
    try:
        assert pid is not None
        assert (proj / "tmp" / "echo.pid").read_text().strip() == str(pid)
        assert answers(port)
        assert psutil.Process(pid).environ().get(MARKER) == test_id
        assert psutil.Process(pid).cwd() == str(proj)
    finally:
        echo.stop()
    assert gone(pid)
    assert not (proj / "tmp" / "echo.pid").exists()


def test_loaded_foreground_daemon_runs(tmp_path, test_id):
    port = free_port()
    start = [sys.executable, str(ECHO_SERVER), "--foreground", "--port", str(port)]
    path = daemons_toml(
        tmp_path,
        f"""
        [daemons.fg]
        start = {json.dumps(start)}
        ping = "tcp://127.0.0.1:{port}"
        pid = "fg.pid"
        log = "fg.log"
        foreground = true
        start_timeout = 15
        env = {{ DC_TEST_ID = "{test_id}" }}
        """,
    )
    fg = load(path)["fg"]
    fg.start()
    pid = fg.read_pid()
    try:
        assert pid is not None
        assert (tmp_path / "fg.pid").read_text().strip() == str(pid)
        assert answers(port)
    finally:
        fg.stop()
    assert gone(pid)


@pytest.mark.parametrize("address", ["127.0.0.1:6391", "localhost:80", "[::1]:6391"])
def test_an_address_without_a_scheme_is_refused(tmp_path, address):
    options = f'start = "true"\nping = "{address}"\npid = "d.pid"\nlog = "d.log"\n'
    with pytest.raises(ConfigError) as info:
        load(daemons_toml(tmp_path, f"[daemons.web]\n{options}"))
    assert f"tcp://{address}" in str(info.value)
    assert info.value.key == "ping"


def test_a_command_with_a_colon_is_still_a_command(tmp_path):
    daemon = load_one(tmp_path, 'ping = "redis-cli -p 6391 ping"\nstart = "true"\n')
    assert daemon.config.ping == CommandPing("redis-cli -p 6391 ping", cwd=tmp_path)
