"""Declaring a project's daemons in TOML: ``daemons.toml`` or ``pyproject.toml``.

::

    [daemons.search]                      # or [tool.daemon-controller.daemons.search]
    start = "redis-server config/redis.conf"
    ping = "tcp://127.0.0.1:6390"
    pid = "tmp/redis.pid"
    log = "log/redis.log"
    after = ["db"]                        # start after db; stop before it

    [daemons.cache]
    start = ["memcached", "-vv", "-p", "11311"]
    foreground = true
    ping_log = "server listening"         # a regex; with ping too, both must hold

    [daemons.queue]
    start = ["redis-server", "--port", "6391", "--supervised", "systemd"]
    notify = true                         # READY=1; no pid/log needed

Keys are the builder's options. A log line is ``ping_log``, the builder's
name, rather than a ``log:`` scheme of ``ping``: it combines with a ``ping``
(both must hold), and ``ping`` stays what can be asked at any time (by
``status``), which a line logged once cannot. Relative paths are relative to the file, and
commands run in the file's directory unless ``cwd`` says otherwise. Unknown
keys and wrong types are errors naming the file, the daemon and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import _instance
from ._daemon import Daemon
from ._errors import ConfigError, hide_frames
from ._options import PORT, RUN_DIR
from ._probes import CommandPing

if TYPE_CHECKING:
    from collections.abc import Callable

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

CONFIG_NAMES = ("daemons.toml", "pyproject.toml")
#: ``host:port`` or ``[v6]:port``: an address given where a command is expected.
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")


@dataclass(frozen=True)
class Project:
    """The daemons declared in one file, with their start order.

    Attributes:
        path: The file they came from.
        daemons: Each daemon by its name in the file.
        after: For each daemon, the daemons it starts after.
    """

    path: Path
    daemons: dict[str, Daemon]
    after: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def environment(self, names: list[str] | None = None) -> dict[str, str]:
        """What a command using the daemons needs: ``<NAME>_PORT`` and ``<NAME>_RUN_DIR``.

        For each daemon (of ``names``, or all) with a run directory, and for
        each running one with a port. ``NAME`` is the daemon's name
        upper-cased, every character other than a letter or digit made ``_``.
        """
        found: dict[str, str] = {}
        for name in names if names is not None else self.daemons:
            found.update(_instance.exports(name, self.daemons[name]))
        return found

    def order(self, names: list[str] | None = None) -> list[list[str]]:
        """The daemons to start, in waves: each wave after the ones before it.

        Args:
            names: Only these daemons and what they need (``after``); all if
                ``None``.

        Raises:
            ConfigError: An unknown name, or a cycle in ``after``.
        """
        wanted: set[str] = set()
        pending = list(self.daemons if names is None else names)
        while pending:
            name = pending.pop()
            if name not in self.daemons:
                known = ", ".join(sorted(self.daemons)) or "none"
                msg = f"no daemon named {name!r} (declared: {known})"
                raise ConfigError(self.path, msg)
            if name not in wanted:
                wanted.add(name)
                pending.extend(self.after.get(name, ()))
        waves: list[list[str]] = []
        done: set[str] = set()
        while len(done) < len(wanted):
            wave = sorted(
                name
                for name in wanted - done
                if all(dep in done for dep in self.after.get(name, ()))
            )
            if not wave:
                cycle = ", ".join(sorted(wanted - done))
                msg = f"the 'after' keys form a cycle among: {cycle}"
                raise ConfigError(self.path, msg)
            waves.append(wave)
            done.update(wave)
        return waves


def find(start: Path | None = None) -> Path | None:
    """``daemons.toml``, else a ``pyproject.toml`` declaring daemons, here or above."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "daemons.toml"
        if candidate.is_file():
            return candidate
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and _pyproject_table(candidate) is not None:
            return candidate
    return None


def _pyproject_table(path: Path) -> dict[str, Any] | None:
    import tomllib  # noqa: PLC0415 - 17 ms of import time, only for the CLI and load()

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return None
    tool = data.get("tool")
    table = tool.get("daemon-controller") if isinstance(tool, dict) else None
    return table if isinstance(table, dict) else None


def load(path: str | Path) -> dict[str, Daemon]:
    """Load the daemons declared in a ``daemons.toml`` or ``pyproject.toml``.

    Returns:
        Each declared daemon by its name, as a :class:`Daemon`.

    Raises:
        ConfigError: The file cannot be read or declares something invalid.
    """
    return load_project(path).daemons


def _read_table(path: Path) -> dict[str, Any]:
    """The table holding ``daemons``: the whole file, or ``[tool.daemon-controller]``."""
    import tomllib  # noqa: PLC0415 - see _pyproject_table

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(path, f"cannot read it: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(path, f"not UTF-8 text: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, f"not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(path, "not usable TOML: nested too deeply") from err
    prefix = ""
    table: object = data
    if path.name == "pyproject.toml":
        tool = data.get("tool")
        table = tool.get("daemon-controller") if isinstance(tool, dict) else None
        prefix = "tool.daemon-controller."
    if not isinstance(table, dict) or not isinstance(table.get("daemons"), dict):
        raise ConfigError(path, f"no [{prefix}daemons.<name>] tables")
    unknown = sorted(set(table) - {"daemons"})
    if unknown:
        msg = f"unknown key(s) {', '.join(unknown)} next to [{prefix}daemons]"
        raise ConfigError(path, msg)
    return table


def load_project(path: str | Path) -> Project:
    """Like :func:`load`, with the start order (``after``) as well."""
    path = Path(path).absolute()
    table = _read_table(path)
    daemons: dict[str, Daemon] = {}
    after: dict[str, tuple[str, ...]] = {}
    for name, options in table["daemons"].items():
        if not isinstance(options, dict):
            raise ConfigError(path, "must be a table", daemon=name)
        daemons[name], after[name] = _Reader(path, name).daemon(options)
    for name, deps in after.items():
        for dep in deps:
            if dep not in daemons:
                msg = f"names no declared daemon {dep!r}"
                raise ConfigError(path, msg, daemon=name, key="after")
    project = Project(path, daemons, after)
    project.order()  # rejects cycles now, not at the first 'up'
    return project


class _Reader:
    """Turns one ``[daemons.<name>]`` table into a :class:`Daemon`, checking each key."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.base = path.parent

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, problem, daemon=self.name, key=key)

    def text(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def command(self, key: str, value: object) -> str | list[str]:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        if isinstance(value, str) and value.strip():
            return value
        raise self.fail(key, f"expected a command (a string, or a list of strings), got {value!r}")

    def number(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, f"expected a number of seconds above 0, got {value!r}")
        return float(value)

    def flag(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def file(self, key: str, value: object) -> Path:
        text = self.text(key, value)
        return Path(text) if text.startswith(RUN_DIR) else self.base / text

    def port(self, key: str, value: object) -> int | Literal["auto"]:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise self.fail(key, f'expected "auto" or a port number, got {value!r}')

    def run_dir(self, key: str, value: object) -> Path | Literal["auto"]:
        text = self.text(key, value)
        return "auto" if text == "auto" else self.base / text

    def prepare(self, daemon: Daemon, key: str, value: object) -> Daemon:
        """``prepare = "command"`` (or a list), or a table: command, inputs, hardlinks, fresh."""
        options: dict[str, Any] = value if isinstance(value, dict) else {"command": value}
        unknown = sorted(set(options) - {"command", "inputs", "hardlinks", "fresh"})
        if unknown:
            known = "known: command, inputs, hardlinks, fresh"
            raise self.fail(key, f"unknown key(s) {', '.join(unknown)} ({known})")
        if "command" not in options:
            raise self.fail(key, "needs a 'command'")
        command = self.command(key, options["command"])
        inputs = options.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(v, str) for v in inputs):
            raise self.fail(key, f"expected 'inputs' to be a list of paths, got {inputs!r}")
        hardlinks = self.flag(key, options.get("hardlinks", False))
        fresh = self.flag(key, options.get("fresh", False))
        paths = [self.base / v for v in inputs]
        return daemon.prepare(command, inputs=paths, hardlinks=hardlinks, fresh=fresh)

    def signal(self, key: str, value: object) -> str | int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return self.text(key, value)

    def env(self, key: str, value: object) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail(key, f"expected a table of strings, got {value!r}")
        return dict(value)

    def after(self, key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of daemon names, got {value!r}")
        return tuple(value)

    def ping(self, daemon: Daemon, key: str, value: object) -> Daemon:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return self.in_base(daemon.ping_command(value))
        text = self.text(key, value)
        if text.startswith("log:") or text.strip() in {"notify", "notify://"}:
            how = "ping_log = '<regex>'" if text.startswith("log:") else "notify = true"
            msg = f"a log line or a notify message has its own key: write {how}"
            raise self.fail(key, msg)
        if text.startswith("tcp://"):
            host, _, port = text.removeprefix("tcp://").rstrip("/").rpartition(":")
            if not host or not (port.isdigit() or port == PORT):
                raise self.fail(key, f"expected tcp://HOST:PORT, got {text!r}")
            return daemon.ping_tcp(host.strip("[]"), port if port == PORT else int(port))
        if text.startswith("unix://"):
            socket_path = text.removeprefix("unix://")
            if not socket_path:
                raise self.fail(key, f"expected unix:///path/to/socket, got {text!r}")
            return daemon.ping_unix(self.file(key, socket_path))  # relative to the file
        if text.startswith(("http://", "https://")):
            return daemon.ping_http(text)
        if _ADDRESS.fullmatch(text.strip()):
            msg = (
                f"{text!r} looks like an address, but a string without a scheme is a "
                f"shell command; write 'tcp://{text.strip()}' to ping it"
            )
            raise self.fail(key, msg)
        return self.in_base(daemon.ping_command(text))

    def in_base(self, daemon: Daemon) -> Daemon:
        """A ping command runs in the file's directory, like the other commands."""
        probe = daemon.config.ping
        assert isinstance(probe, CommandPing)  # noqa: S101 - just set by ping_command()
        return daemon._with(ping=replace(probe, cwd=self.base))  # noqa: SLF001 - same package

    def daemon(self, options: dict[str, Any]) -> tuple[Daemon, tuple[str, ...]]:
        if "start" not in options:
            raise self.fail("start", "is required (a daemon needs a 'start' key)")
        if not {"ping", "ping_log"} & options.keys() and options.get("notify") is not True:
            msg = "is required unless ping_log or notify = true says when it is ready"
            raise self.fail("ping", msg)
        daemon = Daemon(self.name).cwd(self.base)
        deps: tuple[str, ...] = ()
        for key, value in options.items():
            if key == "after":
                deps = self.after(key, value)
                continue
            setter = _SETTERS.get(key)
            if setter is None:
                if key in _RUBY_NAMES:
                    raise self.fail(key, f"unknown key; did you mean {_RUBY_NAMES[key]!r}?")
                known = ", ".join(sorted([*_SETTERS, "after"]))
                raise self.fail(key, f"unknown key (known keys: {known})")
            try:
                daemon = setter(self, daemon, value)
            except (ValueError, TypeError) as err:
                if isinstance(err, ConfigError):
                    raise
                raise self.fail(key, str(err).removeprefix(f"Daemon '{self.name}': ")) from err
        self.require_files(daemon, options)
        return daemon, deps

    def require_files(self, daemon: Daemon, options: dict[str, Any]) -> None:
        """Only a program we run in the foreground, or a notify daemon, gets default files."""
        if daemon.config.own_pid_file:
            return
        for required in ("pid", "log"):
            if required not in options:
                raise self.fail(required, "is required unless foreground = true or notify = true")


_SETTERS: dict[str, Callable[[_Reader, Daemon, object], Daemon]] = {
    "start": lambda r, d, v: d.start_with(r.command("start", v)),
    "stop": lambda r, d, v: d.stop_with(r.command("stop", v)),
    "restart": lambda r, d, v: d.restart_with(r.command("restart", v)),
    "ping": lambda r, d, v: r.ping(d, "ping", v),
    "ping_log": lambda r, d, v: d.ping_log(r.text("ping_log", v)),
    "notify": lambda r, d, v: d.notify(r.flag("notify", v)),
    "pid": lambda r, d, v: d.pid(r.file("pid", v)),
    "log": lambda r, d, v: d.log(r.file("log", v)),
    "lock": lambda r, d, v: d.lock(r.file("lock", v)),
    "cwd": lambda r, d, v: d.cwd(r.file("cwd", v)),
    "start_timeout": lambda r, d, v: d.start_timeout(r.number("start_timeout", v)),
    "start_abort_timeout": lambda r, d, v: d.start_abort_timeout(
        r.number("start_abort_timeout", v)
    ),
    "stop_timeout": lambda r, d, v: d.stop_timeout(r.number("stop_timeout", v)),
    "log_activity_timeout": lambda r, d, v: d.log_activity_timeout(
        r.number("log_activity_timeout", v)
    ),
    "ping_interval": lambda r, d, v: d.ping_interval(r.number("ping_interval", v)),
    "stop_signal": lambda r, d, v: d.stop_signal(r.signal("stop_signal", v)),
    "foreground": lambda r, d, v: d.foreground(r.flag("foreground", v)),
    "dont_stop_if_pid_file_invalid": lambda r, d, v: d.dont_stop_if_pid_file_invalid(
        r.flag("dont_stop_if_pid_file_invalid", v)
    ),
    "user": lambda r, d, v: d.user(r.text("user", v)),
    "env": lambda r, d, v: d.env(r.env("env", v)),
    # A port, a run directory and a prepared state per instance.
    "port": lambda r, d, v: d.port(r.port("port", v)),
    "run_dir": lambda r, d, v: d.run_dir(r.run_dir("run_dir", v)),
    "prepare": lambda r, d, v: r.prepare(d, "prepare", v),
}

#: The Ruby gem's option names (and others' for ours), which are not keys here:
#: each option has one name, ours.
_RUBY_NAMES = {
    "daemonize_for_me": "foreground",
    "start_command": "start",
    "stop_command": "stop",
    "restart_command": "restart",
    "ping_command": "ping",
    "pid_file": "pid",
    "log_file": "log",
    "lock_file": "lock",
    "log_file_activity_timeout": "log_activity_timeout",
    "stop_graceful_signal": "stop_signal",
    # Other tools' names for a ready line: the option is ping_log everywhere here.
    "ready_log": "ping_log",
    "log_pattern": "ping_log",
}
