"""The immutable ``Daemon`` builder and the ``DaemonController`` keyword form.

Every builder method returns a new ``Daemon`` and sets the Ruby gem's option
in ``.config``; the gem's defaults; relative paths made absolute when set;
invalid values rejected with the daemon's name; the keyword constructor
building the same object as the fluent one. What an incomplete daemon does is
in ``test_incomplete_daemons.py``, the probes in ``test_probes.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import signal
from pathlib import Path

import pytest

from daemon_controller import (
    CallablePing,
    CommandPing,
    Daemon,
    DaemonController,
    HttpPing,
    TcpPing,
    UnixPing,
)

NAME = "Spec test daemon"


def _before() -> None:
    pass


def _start_fn() -> list[str]:
    return ["true"]


def _ping_fn() -> bool:
    return True


# -- immutability --------------------------------------------------------------------------


# (method name, args): each call changes the config away from a fresh Daemon's.
BUILDER_CALLS = [
    ("start_with", ("run-me --daemon",)),
    ("stop_with", ("stop-me",)),
    ("restart_with", (["restart-me", "now"],)),
    ("ping_tcp", ("127.0.0.1", 4321)),
    ("ping_unix", ("/tmp/some.sock",)),
    ("ping_http", ("http://127.0.0.1:4321/health",)),
    ("ping_command", ("true",)),
    ("ping", (_ping_fn,)),
    ("ping_log", ("Ready to accept",)),
    ("notify", ()),
    ("pid", ("/tmp/some.pid",)),
    ("log", ("/tmp/some.log",)),
    ("lock", ("/tmp/some.lock",)),
    ("before_start", (_before,)),
    ("start_timeout", (5,)),
    ("start_abort_timeout", (3,)),
    ("stop_timeout", (4,)),
    ("log_activity_timeout", (2,)),
    ("ping_interval", (0.5,)),
    ("stop_signal", ("INT",)),
    ("dont_stop_if_pid_file_invalid", ()),
    ("foreground", ()),
    ("keep_fds", (0, 1)),
    ("env", ({"A": "1"},)),
    ("cwd", ("/tmp",)),
    ("logger", (logging.getLogger("spec.other"),)),
]


@pytest.mark.parametrize(("method", "args"), BUILDER_CALLS, ids=[c[0] for c in BUILDER_CALLS])
def test_builder_method_returns_a_new_daemon_and_leaves_the_receiver(method, args):
    base = Daemon(NAME).pid("/tmp/base.pid").start_timeout(7)
    before = dataclasses.replace(base.config)
    new = getattr(base, method)(*args)
    assert isinstance(new, Daemon)
    assert new is not base
    assert new.config is not base.config
    assert base.config == before
    assert new.config != base.config
    assert new.name == base.name
    # The untouched options are carried over.
    if method != "start_timeout":
        assert new.config.start_timeout == 7
    if method != "pid":
        assert new.config.pid_file == Path("/tmp/base.pid")


def test_one_base_specialised_two_ways(tmp_path):
    base = Daemon(NAME).ping_tcp("127.0.0.1", 6379).pid(tmp_path / "redis.pid")
    snapshot = base.config
    test = base.start_with(["redis-server", "test.conf"]).log(tmp_path / "test.log")
    prod = base.start_with("redis-server prod.conf").log(tmp_path / "prod.log").start_timeout(60)
    assert base.config == snapshot
    assert base.config.start_command is None
    assert test.config.start_command == ("redis-server", "test.conf")
    assert prod.config.start_command == "redis-server prod.conf"
    assert test.config.log_file == tmp_path / "test.log"
    assert prod.config.log_file == tmp_path / "prod.log"
    assert test.config.start_timeout == 30
    assert prod.config.start_timeout == 60
    assert test.config.ping == prod.config.ping == TcpPing("127.0.0.1", 6379)


def test_daemon_and_config_are_frozen():
    d = Daemon(NAME).start_timeout(5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.config.start_timeout = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.config = dataclasses.replace(d.config)  # type: ignore[misc]
    assert d.name == NAME
    assert d.config.start_timeout == 5


def test_equal_descriptions_compare_equal():
    a = Daemon(NAME).start_with("x").pid("/tmp/a.pid")
    b = Daemon(NAME).start_with("x").pid("/tmp/a.pid")
    assert a == b
    assert a != b.pid("/tmp/b.pid")
    assert a.identifier == NAME


# -- options -----------------------------------------------------------------------------------


def test_defaults_are_the_gems():
    cfg = Daemon(NAME).config
    assert cfg.start_timeout == 30
    assert cfg.start_abort_timeout == 10
    assert cfg.stop_timeout == 30
    assert cfg.log_activity_timeout == 10
    assert cfg.ping_interval == 0.1
    assert cfg.stop_signal == "TERM"
    assert cfg.dont_stop_if_pid_file_invalid is False
    assert cfg.foreground is False
    assert cfg.keep_fds == ()
    assert cfg.env == ()
    for name in (
        "start_command",
        "stop_command",
        "restart_command",
        "ping",
        "pid_file",
        "log_file",
        "lock_file",
        "before_start",
        "cwd",
    ):
        assert getattr(cfg, name) is None, name
    assert cfg.logger is logging.getLogger("daemon_controller")


def test_default_lock_file_is_pid_file_plus_lock(tmp_path):
    d = Daemon(NAME)
    with pytest.raises(ValueError, match="pid"):
        d._target()
    d = d.pid(tmp_path / "x.pid")
    assert d.config.lock_file is None
    assert d._target().files.lock == tmp_path / "x.pid.lock"
    d = d.lock(tmp_path / "elsewhere.lck")
    assert d._target().files.lock == tmp_path / "elsewhere.lck"


def test_default_lock_file_is_really_used(echo):
    d = echo()
    d.start()
    try:
        assert Path(str(echo.pid_file) + ".lock").exists()
    finally:
        d.stop()


def _with_fileno():
    class HasFileno:
        def fileno(self) -> int:
            return 2

    return HasFileno()


def _logger():
    return logging.getLogger("spec.custom")


# (builder call, Ruby option field, expected value)
OPTION_CASES = [
    (lambda d: d.start_with("daemon --fork"), "start_command", "daemon --fork"),
    (lambda d: d.start_with(["daemon", "--fork"]), "start_command", ("daemon", "--fork")),
    (lambda d: d.start_with(("daemon",)), "start_command", ("daemon",)),
    (lambda d: d.start_with(_start_fn), "start_command", _start_fn),
    (lambda d: d.stop_with("kill it"), "stop_command", "kill it"),
    (lambda d: d.stop_with(["kill", "it"]), "stop_command", ("kill", "it")),
    (lambda d: d.restart_with("again"), "restart_command", "again"),
    (lambda d: d.restart_with(["again", "now"]), "restart_command", ("again", "now")),
    (lambda d: d.ping_tcp("localhost", 1234), "ping", TcpPing("localhost", 1234)),
    (lambda d: d.ping_unix("/run/x.sock"), "ping", UnixPing(Path("/run/x.sock"))),
    (
        lambda d: d.ping_http("http://localhost:8080/up"),
        "ping",
        HttpPing("http://localhost:8080/up"),
    ),
    (lambda d: d.ping_command("test -e /x"), "ping", CommandPing("test -e /x")),
    (lambda d: d.ping_command(["test", "-e"]), "ping", CommandPing(("test", "-e"))),
    (lambda d: d.ping(_ping_fn), "ping", CallablePing(_ping_fn)),
    (lambda d: d.pid("/var/run/x.pid"), "pid_file", Path("/var/run/x.pid")),
    (lambda d: d.log("/var/log/x.log"), "log_file", Path("/var/log/x.log")),
    (lambda d: d.lock("/var/lock/x"), "lock_file", Path("/var/lock/x")),
    (lambda d: d.before_start(_before), "before_start", _before),
    (lambda d: d.start_timeout(25), "start_timeout", 25.0),
    (lambda d: d.start_abort_timeout(0), "start_abort_timeout", 0.0),
    (lambda d: d.stop_timeout(2.5), "stop_timeout", 2.5),
    (lambda d: d.log_activity_timeout(3), "log_activity_timeout", 3.0),
    (lambda d: d.ping_interval(0.02), "ping_interval", 0.02),
    (lambda d: d.stop_signal("INT"), "stop_signal", "INT"),
    (lambda d: d.stop_signal("SIGQUIT"), "stop_signal", "SIGQUIT"),
    (lambda d: d.stop_signal(signal.SIGUSR1), "stop_signal", signal.SIGUSR1),
    (lambda d: d.dont_stop_if_pid_file_invalid(), "dont_stop_if_pid_file_invalid", True),
    (
        lambda d: d.dont_stop_if_pid_file_invalid().dont_stop_if_pid_file_invalid(False),
        "dont_stop_if_pid_file_invalid",
        False,
    ),
    (lambda d: d.foreground(), "foreground", True),
    (lambda d: d.ping_log("Ready to accept"), "ping_log", re.compile("Ready to accept")),
    (
        lambda d: d.ping_log(re.compile(r"ready\b", re.IGNORECASE)),
        "ping_log",
        re.compile(r"ready\b", re.IGNORECASE),
    ),
    (lambda d: d.notify(), "notify", True),
    (lambda d: d.notify().notify(False), "notify", False),
    (lambda d: d.keep_fds(0, 1), "keep_fds", (0, 1)),
    (lambda d: d.keep_fds(_with_fileno(), 5), "keep_fds", (2, 5)),
    (lambda d: d.env({"A": "1"}), "env", (("A", "1"),)),
    (lambda d: d.env({"A": "1"}).env(B="2"), "env", (("A", "1"), ("B", "2"))),
    (lambda d: d.env({"A": "1"}).env({"A": "3"}), "env", (("A", "3"),)),
    (lambda d: d.cwd("/srv"), "cwd", Path("/srv")),
    (lambda d: d.logger(_logger()), "logger", _logger()),
]


@pytest.mark.parametrize(("call", "field", "expected"), OPTION_CASES)
def test_builder_sets_its_option(call, field, expected):
    d = call(Daemon(NAME))
    value = getattr(d.config, field)
    assert value == expected
    assert type(value) is type(expected)


def test_readiness_methods_combine_and_each_keeps_its_own_field():
    # A log line or a notify message does not replace the ping: all must hold.
    d = Daemon(NAME).ping_tcp("localhost", 1234).ping_log("ready").notify()
    assert d.config.ping == TcpPing("localhost", 1234)
    assert d.config.readiness == ("notify", "log", "ping")
    assert d.ping_http("http://localhost:1/").config.ping_log == re.compile("ready")
    assert Daemon(NAME).config.readiness == ()
    assert "notify" in repr(d)
    assert "ping_log='ready'" in repr(d)


def test_a_notify_daemon_gets_default_files_like_a_foreground_one():
    d = Daemon(NAME).start_with(["srv", "--supervised"]).notify().resolved()
    assert d.config.pid_file is not None
    assert d.config.log_file is not None
    assert d.config.pid_file.parent == d.config.log_file.parent
    assert Daemon(NAME).start_with("srv").ping_log("x").resolved().config.pid_file is None


def test_a_start_needs_some_readiness_check():
    d = Daemon(NAME).start_with("srv").pid("/tmp/x.pid").log("/tmp/x.log")
    with pytest.raises(ValueError, match=r"ping_log\(...\) or notify\(\)"):
        d.start()


def test_keep_fds_with_a_real_file_object(tmp_path):
    with (tmp_path / "kept").open("w") as f:
        d = Daemon(NAME).keep_fds(f, f.fileno())
        assert d.config.keep_fds == (f.fileno(), f.fileno())


def test_relative_paths_become_absolute_when_set(tmp_path, monkeypatch):
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    d = Daemon(NAME).pid("run/d.pid").log("d.log").lock("d.lock").cwd(".").ping_unix("d.sock")
    monkeypatch.chdir(second)
    cfg = d.config
    assert cfg.pid_file == first / "run" / "d.pid"
    assert cfg.log_file == first / "d.log"
    assert cfg.lock_file == first / "d.lock"
    assert cfg.cwd == first
    assert cfg.ping == UnixPing(first / "d.sock")
    for path in (cfg.pid_file, cfg.log_file, cfg.lock_file, cfg.cwd):
        assert path.is_absolute()
    # Same for the keyword form.
    monkeypatch.chdir(first)
    k = DaemonController(
        identifier=NAME,
        start_command="true",
        ping_command=("unix", "k.sock"),
        pid_file="k.pid",
        log_file="k.log",
        lock_file="k.lock",
        cwd=".",
    )
    monkeypatch.chdir(second)
    assert k.config.pid_file == first / "k.pid"
    assert k.config.log_file == first / "k.log"
    assert k.config.lock_file == first / "k.lock"
    assert k.config.cwd == first
    assert k.config.ping == UnixPing(first / "k.sock")


INVALID_CALLS = [
    pytest.param(lambda d: d.start_timeout(-1), id="negative-start-timeout"),
    pytest.param(lambda d: d.start_timeout(0), id="zero-start-timeout"),
    pytest.param(lambda d: d.start_timeout(math.nan), id="nan-start-timeout"),
    pytest.param(lambda d: d.start_timeout("30"), id="str-start-timeout"),
    pytest.param(lambda d: d.start_timeout(True), id="bool-start-timeout"),
    pytest.param(lambda d: d.stop_timeout(-0.5), id="negative-stop-timeout"),
    pytest.param(lambda d: d.stop_timeout(math.nan), id="nan-stop-timeout"),
    pytest.param(lambda d: d.start_abort_timeout(-1), id="negative-abort-timeout"),
    pytest.param(lambda d: d.start_abort_timeout("1"), id="str-abort-timeout"),
    pytest.param(lambda d: d.log_activity_timeout(-3), id="negative-log-activity"),
    pytest.param(lambda d: d.log_activity_timeout(None), id="none-log-activity"),
    pytest.param(lambda d: d.ping_interval(0), id="zero-ping-interval"),
    pytest.param(lambda d: d.ping_interval(math.nan), id="nan-ping-interval"),
    pytest.param(lambda d: d.start_with(""), id="empty-start-str"),
    pytest.param(lambda d: d.start_with("   "), id="blank-start-str"),
    pytest.param(lambda d: d.start_with([]), id="empty-start-argv"),
    pytest.param(lambda d: d.start_with(["ok", 3]), id="non-str-argv"),
    pytest.param(lambda d: d.start_with(b"bytes"), id="bytes-start"),
    pytest.param(lambda d: d.start_with(42), id="int-start"),
    pytest.param(lambda d: d.stop_with(""), id="empty-stop"),
    pytest.param(lambda d: d.restart_with([]), id="empty-restart"),
    pytest.param(lambda d: d.ping_command(""), id="empty-ping-command"),
    pytest.param(lambda d: d.ping_tcp("127.0.0.1", 0), id="port-0"),
    pytest.param(lambda d: d.ping_tcp("127.0.0.1", 65536), id="port-65536"),
    pytest.param(lambda d: d.ping_tcp("127.0.0.1", "80"), id="port-str"),
    pytest.param(lambda d: d.ping_http("ftp://127.0.0.1/"), id="url-ftp"),
    pytest.param(lambda d: d.ping_http("not a url"), id="url-garbage"),
    pytest.param(lambda d: d.ping_http("http://"), id="url-no-host"),
    pytest.param(lambda d: d.ping(42), id="ping-not-callable"),
    pytest.param(lambda d: d.ping_log("(unclosed"), id="ping-log-invalid-regex"),
    pytest.param(lambda d: d.ping_log(""), id="ping-log-empty"),
    pytest.param(lambda d: d.ping_log(b"bytes"), id="ping-log-bytes"),
    pytest.param(lambda d: d.before_start("echo hi"), id="before-start-not-callable"),
    pytest.param(lambda d: d.stop_signal("NOSUCHSIGNAL"), id="unknown-signal"),
    pytest.param(lambda d: d.stop_signal(9999), id="unknown-signal-number"),
    pytest.param(lambda d: d.keep_fds("x"), id="keep-fds-str"),
    pytest.param(lambda d: d.keep_fds(-1), id="keep-fds-negative"),
    pytest.param(lambda d: d.keep_fds(1.5), id="keep-fds-float"),
    pytest.param(lambda d: d.env({"A": 1}), id="env-int-value"),
]


@pytest.mark.parametrize("call", INVALID_CALLS)
def test_invalid_values_are_rejected_naming_the_daemon(call):
    d = Daemon(NAME)
    with pytest.raises((ValueError, TypeError)) as info:
        call(d)
    assert NAME in str(info.value)


def test_a_daemon_needs_a_name():
    for bad in ("", "   "):
        with pytest.raises(ValueError):
            Daemon(bad)


# -- the keyword constructor -------------------------------------------------------------------


def test_keyword_constructor_builds_the_same_daemon_as_the_builder(tmp_path):
    logger = logging.getLogger("spec.keywords")
    fluent = (
        Daemon(NAME)
        .start_with(["server", "--daemon"])
        .stop_with("server --stop")
        .restart_with(["server", "--restart"])
        .ping_tcp("localhost", 1234)
        .pid(tmp_path / "s.pid")
        .log(tmp_path / "s.log")
        .lock(tmp_path / "s.lock")
        .before_start(_before)
        .start_timeout(25)
        .start_abort_timeout(3)
        .stop_timeout(7)
        .log_activity_timeout(4)
        .ping_interval(0.2)
        .stop_signal("INT")
        .dont_stop_if_pid_file_invalid()
        .foreground()
        .keep_fds(0, 2)
        .env({"MODE": "test"})
        .cwd(tmp_path)
        .logger(logger)
    )
    keywords = DaemonController(
        identifier=NAME,
        start_command=["server", "--daemon"],
        stop_command="server --stop",
        restart_command=["server", "--restart"],
        ping_command=("tcp", "localhost", 1234),
        pid_file=tmp_path / "s.pid",
        log_file=str(tmp_path / "s.log"),
        lock_file=tmp_path / "s.lock",
        before_start=_before,
        start_timeout=25,
        start_abort_timeout=3,
        stop_timeout=7,
        log_file_activity_timeout=4,
        ping_interval=0.2,
        stop_graceful_signal="INT",
        dont_stop_if_pid_file_invalid=True,
        daemonize_for_me=True,
        keep_ios=[0, 2],
        env={"MODE": "test"},
        cwd=tmp_path,
        logger=logger,
    )
    assert isinstance(keywords, Daemon)
    assert keywords == fluent


def test_keyword_constructor_minimal_equals_builder_defaults(tmp_path):
    keywords = DaemonController(
        identifier=NAME,
        start_command="server",
        ping_command=("tcp", "localhost", 1234),
        pid_file=tmp_path / "s.pid",
        log_file=tmp_path / "s.log",
        start_timeout=25,
    )
    fluent = (
        Daemon(NAME)
        .start_with("server")
        .ping_tcp("localhost", 1234)
        .pid(tmp_path / "s.pid")
        .log(tmp_path / "s.log")
        .start_timeout(25)
    )
    assert keywords == fluent


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (("tcp", "localhost", 1234), TcpPing("localhost", 1234)),
        (["tcp", "127.0.0.1", 80], TcpPing("127.0.0.1", 80)),
        (("unix", "/run/s.sock"), UnixPing(Path("/run/s.sock"))),
        ("curl -f http://localhost/", CommandPing("curl -f http://localhost/")),
        (["check", "--quiet"], CommandPing(("check", "--quiet"))),
        (_ping_fn, CallablePing(_ping_fn)),
    ],
    ids=["tcp-tuple", "tcp-list", "unix", "command-str", "command-argv", "callable"],
)
def test_keyword_ping_command_forms(tmp_path, option, expected):
    d = DaemonController(
        identifier=NAME,
        start_command="server",
        ping_command=option,
        pid_file=tmp_path / "s.pid",
        log_file=tmp_path / "s.log",
    )
    assert d.config.ping == expected


def test_keyword_ping_command_invalid(tmp_path):
    with pytest.raises((TypeError, ValueError)) as info:
        DaemonController(
            identifier=NAME,
            start_command="server",
            ping_command=42,
            pid_file=tmp_path / "s.pid",
            log_file=tmp_path / "s.log",
        )
    assert NAME in str(info.value)
    with pytest.raises((TypeError, ValueError)) as info:
        DaemonController(
            identifier=NAME,
            start_command="server",
            ping_command=("tcp", "localhost", 0),
            pid_file=tmp_path / "s.pid",
            log_file=tmp_path / "s.log",
        )
    assert NAME in str(info.value)


@pytest.mark.parametrize(
    "missing", ["identifier", "start_command", "ping_command", "pid_file", "log_file"]
)
def test_keyword_constructor_missing_mandatory_keyword(tmp_path, missing):
    options = {
        "identifier": NAME,
        "start_command": "server",
        "ping_command": ("tcp", "localhost", 1234),
        "pid_file": tmp_path / "s.pid",
        "log_file": tmp_path / "s.log",
    }
    del options[missing]
    with pytest.raises(TypeError, match=missing):
        DaemonController(**options)


def test_keyword_constructor_rejects_positional_arguments(tmp_path):
    with pytest.raises(TypeError):
        DaemonController(NAME, "server", ("tcp", "localhost", 1), "a.pid", "a.log")  # type: ignore[misc]
