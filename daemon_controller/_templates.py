"""The placeholders ``{port}`` and ``{run_dir}``: where they may appear, and filling them in.

A description can name what is known only later: ``{run_dir}``, the daemon's
own directory, known once the description is resolved (it is keyed like the
default PID file), and ``{port}``, known once a start has chosen it. Both may
appear in the start, stop and restart commands (str or argv), in ``env``
values and in the ping (``ping_tcp(host, "{port}")``, ``tcp://host:{port}``
in daemons.toml, HTTP URLs, ping commands, unix-socket paths); ``{run_dir}``
also at the start of the PID, log and lock paths and of ``cwd``. Only these
two exact words are replaced, so other braces (a shell's ``${VAR}``, JSON in
an argument) are left alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ._errors import hide_frames
from ._options import PORT, RUN_DIR, Target, command_text
from ._probes import CommandPing, HttpPing, TcpPing, UnixPing

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ._options import Command, DaemonConfig, StartCommand
    from ._probes import Probe

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

T = TypeVar("T", bound=Target)


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each placeholder in ``values`` replaced by its value."""
    for placeholder, value in values.items():
        if placeholder in text:
            text = text.replace(placeholder, value)
    return text


def fill_command(command: Command, values: Mapping[str, str]) -> Command:
    """A command with its placeholders filled in, in the str or in every argument."""
    if isinstance(command, str):
        return fill(command, values)
    return tuple(fill(part, values) for part in command)


def fill_start(command: StartCommand, values: Mapping[str, str]) -> StartCommand:
    """Like :func:`fill_command`; a function returning the command is left as it is."""
    return command if callable(command) else fill_command(command, values)


def fill_path(path: Path | None, values: Mapping[str, str]) -> Path | None:
    """A path starting with ``{run_dir}``, made absolute under the run directory."""
    if path is None:
        return None
    text = str(path)
    return Path(fill(text, values)) if RUN_DIR in text else path


def fill_probe(probe: Probe | None, values: Mapping[str, str]) -> Probe | None:
    """The ping with its address (port, URL, socket path or command) filled in."""
    if isinstance(probe, TcpPing) and isinstance(probe.port, str):
        port = fill(probe.port, values)
        return TcpPing(fill(probe.host, values), int(port) if port.isdigit() else port)
    if isinstance(probe, HttpPing):
        return HttpPing(fill(probe.url, values))
    if isinstance(probe, UnixPing):
        return UnixPing(Path(fill(str(probe.path), values)))
    if isinstance(probe, CommandPing):
        return CommandPing(fill_command(probe.command, values), fill_path(probe.cwd, values))
    return probe


def fill_config(config: DaemonConfig, values: Mapping[str, str]) -> DaemonConfig:
    """Every option that may hold a placeholder, filled in."""
    start, stop, restart = config.start_command, config.stop_command, config.restart_command
    return dataclasses.replace(
        config,
        start_command=None if start is None else fill_start(start, values),
        stop_command=None if stop is None else fill_command(stop, values),
        restart_command=None if restart is None else fill_command(restart, values),
        ping=fill_probe(config.ping, values),
        env=tuple((key, fill(value, values)) for key, value in config.env),
        pid_file=fill_path(config.pid_file, values),
        log_file=fill_path(config.log_file, values),
        lock_file=fill_path(config.lock_file, values),
        cwd=fill_path(config.cwd, values),
    )


def _ping_text(probe: Probe | None) -> str:
    if isinstance(probe, TcpPing):
        return f"{probe.host} {probe.port}"
    if isinstance(probe, HttpPing):
        return probe.url
    if isinstance(probe, UnixPing):
        return str(probe.path)
    if isinstance(probe, CommandPing):
        return f"{command_text(probe.command)} {probe.cwd or ''}"
    return ""


def _texts(config: DaemonConfig) -> Iterator[tuple[str, str]]:
    """``(option, text)`` for every option a placeholder may appear in."""
    for option in ("start_command", "stop_command", "restart_command"):
        command = getattr(config, option)
        if command is not None and not callable(command):
            yield option, command_text(command)
    yield "ping", _ping_text(config.ping)
    for key, value in config.env:
        yield f"env {key}", value
    for option in ("pid_file", "log_file", "lock_file", "cwd"):
        path = getattr(config, option)
        if path is not None:
            yield option, str(path)


def check(name: str, config: DaemonConfig) -> None:
    """Every placeholder used is declared, and ``{port}`` is nowhere it cannot be.

    Raises:
        ValueError: ``{port}`` or ``{run_dir}`` is used without ``port()`` or
            ``run_dir()``; ``{port}`` names a file (the port is recorded beside
            the PID file, so that file cannot depend on it); or the
            preparation uses ``{port}`` (it runs before any port is chosen).
    """
    texts = dict(_texts(config))
    for option in ("pid_file", "log_file", "lock_file", "cwd"):
        if PORT in texts.get(option, ""):
            msg = f"Daemon '{name}': {option} cannot use {PORT} (the port is recorded beside it)"
            raise ValueError(msg)
    prepare = config.prepare
    prepare_text = "" if prepare is None or callable(prepare.command) else prepare.command
    if PORT in command_text(prepare_text):
        msg = f"Daemon '{name}': the preparation cannot use {PORT}: it runs before a start"
        raise ValueError(msg)
    for placeholder, declared, method in (
        (PORT, config.port, "port()"),
        (RUN_DIR, config.run_dir, "run_dir()"),
    ):
        users = [option for option, text in texts.items() if placeholder in text]
        if users and declared is None:
            msg = (
                f"Daemon '{name}': {', '.join(users)} use(s) {placeholder}, but the "
                f"daemon declares none; add .{method}"
            )
            raise ValueError(msg)


def bind_port(target: T, port: int | None) -> T:
    """``target`` as one start (or the daemon started with ``port``) sees it.

    ``{port}`` is filled in everywhere, and ``config.port`` is the number;
    a start target's command and ping too. ``None`` (no port known) leaves
    the target as it is.
    """
    if port is None:
        return target
    values = {PORT: str(port)}
    config = dataclasses.replace(fill_config(target.config, values), port=port)
    changes: dict[str, object] = {"config": config}
    command = getattr(target, "command", None)
    if command is not None:
        changes["command"] = fill_start(command, values)
        changes["probe"] = fill_probe(getattr(target, "probe", None), values)
    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]
