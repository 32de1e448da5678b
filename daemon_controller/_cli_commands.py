"""The command line's commands: up, down, restart, status, logs, exec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from ._cli_output import (
    FAILED,
    FAILED_TAG,
    OK,
    OK_TAG,
    Output,
    Painted,
    Usage,
    signal_of,
    visible,
)
from ._cli_plan import backward_plan, forward_plan, run_plan
from ._errors import AlreadyStarted, DaemonError
from ._files import read_tail

if TYPE_CHECKING:
    from . import _toml
    from ._daemon import Daemon
    from ._scoped import Running

#: How long ``exec`` waits for its command to exit after Ctrl-C or SIGTERM
#: before killing it (seconds): long enough for a test run to tear down.
COMMAND_GRACE = 10.0


def _start_one(_name: str, daemon: Daemon) -> str | None:
    if daemon.is_running():
        status = daemon.status()
        if status.running and status.answering is False:
            # Alive but deaf: a hung daemon, or a stranger on a recycled PID.
            msg = f"running (PID {status.pid}) but not answering {status.ping}"
            raise DaemonError(daemon.name, msg)
        return f"already running (PID {status.pid or daemon.read_pid()})"
    started = time.monotonic()
    try:
        daemon.start()
    except AlreadyStarted as err:  # somebody else started it meanwhile: fine
        return f"already running (PID {err.pid})"
    return f"started (PID {daemon.read_pid()}) in {time.monotonic() - started:.2f} s"


def _stop_one(_name: str, daemon: Daemon) -> str | None:
    pid = daemon.read_pid()
    if pid is None:
        return "not running"
    started = time.monotonic()
    daemon.stop()
    return f"stopped (PID {pid}) in {time.monotonic() - started:.2f} s"


def _restart_one(_name: str, daemon: Daemon) -> str | None:
    started = time.monotonic()
    daemon.restart()
    return f"restarted (PID {daemon.read_pid()}) in {time.monotonic() - started:.2f} s"


def _needed(project: _toml.Project, names: list[str]) -> list[str]:
    """``names`` and what they start after (all daemons when empty), in start order."""
    return [n for wave in project.order(names or None) for n in wave]


def _only(project: _toml.Project, names: list[str]) -> list[str]:
    """``names`` alone (all daemons when empty), in start order."""
    return [n for n in _needed(project, names) if not names or n in names]


def cmd_up(out: Output, project: _toml.Project, names: list[str]) -> int:
    """Start what is not running, in ``after`` order, independent daemons at once."""
    plan = forward_plan(project, _needed(project, names), "starting", "start")
    return run_plan(out, project, plan, _start_one)


def cmd_down(out: Output, project: _toml.Project, names: list[str]) -> int:
    """Stop, in reverse ``after`` order."""
    plan = backward_plan(project, _only(project, names), "stopping", "stop")
    return run_plan(out, project, plan, _stop_one)


def cmd_restart(out: Output, project: _toml.Project, names: list[str]) -> int:
    """Restart, in ``after`` order."""
    plan = forward_plan(project, _only(project, names), "restarting", "restart")
    return run_plan(out, project, plan, _restart_one)


def _describe(name: str, daemon: Daemon) -> dict[str, Any]:
    status = daemon.status(timeout=1.0)
    answer = {True: "ok", False: "no answer", None: None}[status.answering]
    return {
        "name": name,
        "state": status.state,
        "pid": status.pid,
        "uptime": None if status.uptime is None else round(status.uptime, 1),
        "ping": answer,
        "ping_target": status.ping,
        "port": status.port,
        "run_dir": None if status.run_dir is None else str(status.run_dir),
        "readiness": list(status.readiness),  # "notify", "log", "ping": how a start waits
        "notify_status": status.notify_status,  # the last STATUS= the daemon sent
    }


def _ping_cell(row: dict[str, Any]) -> str:
    """The PING column: the ping's answer, or how a daemon without one says it is ready."""
    if row["ping"]:
        return f"{row['ping']} ({row['ping_target']})"
    told = [method for method in row["readiness"] if method != "ping"]
    if not told:
        return "-"
    said = f": {row['notify_status']}" if row["notify_status"] else ""
    return f"told by {' and '.join(told)}{said}"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cmd_status(out: Output, project: _toml.Project, names: list[str], *, as_json: bool) -> int:
    """A table (or JSON) of every daemon: state, PID, uptime, port (if any) and ping."""
    needed = _needed(project, names)
    rows = [_describe(name, project.daemons[name]) for name in needed]
    if as_json:
        out.block(json.dumps(rows, indent=2), indent="")  # JSON escapes control characters
        return OK
    ports = any(project.daemons[name].config.port is not None for name in needed)
    table = [["NAME", "STATE", "PID", "UPTIME", *(["PORT"] if ports else []), "PING"]]
    for row in rows:
        port = [str(row["port"] or "-")] if ports else []
        table.append(
            [
                row["name"],
                row["state"],
                str(row["pid"] or "-"),
                _uptime(row["uptime"]),
                *port,
                _ping_cell(row),
            ]
        )
    # Width as shown: a name with control characters is wider once escaped.
    table = [[visible(cell) for cell in r] for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, r in enumerate(table):
        parts: list[str | Painted] = []
        for column, (cell, width) in enumerate(zip(r, widths, strict=True)):
            if column == 1 and i > 0:
                state = Painted(cell, "32" if cell == "running" else "33")
                parts += [state, " " * (width - len(cell)), "  "]
            else:
                parts += [cell.ljust(width), "  "]
        parts[-2:] = [str(parts[-2]).rstrip()]  # no padding after the last column
        out.line(*parts)
    return OK


def cmd_logs(out: Output, project: _toml.Project, name: str, lines: int) -> int:
    """The last lines of a daemon's log file."""
    if name not in project.daemons:
        known = ", ".join(sorted(project.daemons))
        raise Usage(f"no daemon named {name!r} (declared: {known})")
    log = project.daemons[name].resolved().config.log_file
    if log is None:
        raise Usage(f"daemon {name!r} has no log file ('log' key)")
    text = read_tail(log, limit=256 * 1024)
    if text is None:
        if not os.path.lexists(log):
            out.line(f"(no log yet at {log})")
            return OK
        out.line(f"cannot read {log}: not a readable regular file")
        return FAILED
    shown = text.split("\n")
    if shown and shown[-1] == "":
        shown.pop()  # the final newline ends the last line; it does not start another
    for line in shown[-lines:] if lines > 0 else []:
        out.line(line.removesuffix("\r"))
    return OK


def cmd_exec(
    out: Output, project: _toml.Project, names: list[str], command: list[str], *, keep: bool
) -> int:
    """Run ``command`` with the daemons up; stop the ones this started unless ``keep``.

    Each daemon is entered as a ``running()`` block, so two ``exec`` runs at
    once share the daemons: the one that started a daemon does not stop it
    while the other's command still uses it; the last one out does. ``out``
    should be standard error: standard output belongs to the command.
    """
    if not command:
        raise Usage("exec needs a command after '--', e.g.: daemon-controller exec -- pytest")
    plan = forward_plan(project, _needed(project, names), "starting", "start")
    blocks: list[Running] = []
    lock = threading.Lock()

    def enter(_name: str, daemon: Daemon) -> str | None:
        running_before = daemon.read_pid()
        block = daemon.running(stop=False if keep else None)
        started = time.monotonic()
        block.__enter__()
        with lock:
            blocks.append(block)
        if running_before is not None:
            return f"already running (PID {running_before})"
        return f"started (PID {daemon.read_pid()}) in {time.monotonic() - started:.2f} s"

    try:
        status = run_plan(out, project, plan, enter, keep_going=False)
        if status != OK:
            return status
        # <NAME>_PORT and <NAME>_RUN_DIR: the command needs no port of its own.
        env = {**os.environ, **project.environment(_needed(project, names))}
        return _run_command(out, command, env)
    finally:
        _leave_all(out, blocks)


def _run_command(out: Output, command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` on our own standard streams, in ``env``; its exit code, shell-style.

    On Ctrl-C (which the command received too, from the terminal) or SIGTERM
    (passed on to it), the command gets :data:`COMMAND_GRACE` seconds to exit,
    so that a test run can tear its fixtures down, before it is killed.
    """
    try:
        proc = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        out.line(FAILED_TAG, f" cannot run {command[0]!r}: not found")
        return 127
    except OSError as err:  # not executable, not a program: what a shell calls 126
        out.line(FAILED_TAG, f" cannot run {command[0]!r}: {err.strerror or err}")
        return 126
    try:
        code = proc.wait()
    except KeyboardInterrupt as interrupt:
        signum = signal_of(interrupt)
        if signum != signal.SIGINT:
            proc.send_signal(signum)
        try:
            proc.wait(timeout=COMMAND_GRACE)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # or a second Ctrl-C
            proc.kill()
            proc.wait()
        raise
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as shells say


def _leave_all(out: Output, blocks: list[Running]) -> None:
    """Leave the blocks in reverse order, reporting what that stopped."""
    for block in reversed(blocks):
        pid = block.daemon.read_pid()
        try:
            block.__exit__(None, None, None)
        except DaemonError as err:
            out.line(FAILED_TAG, f" {block.daemon.name}: {type(err).__name__}")
            out.block(str(err))
            continue
        if pid is not None and block.daemon.read_pid() is None:
            out.line(OK_TAG, f" {block.daemon.name}: stopped (PID {pid})")
