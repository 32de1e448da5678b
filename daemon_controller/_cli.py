"""The ``daemon-controller`` command: a project's daemons, declared once in TOML.

:func:`run` is the whole command, writing to the streams it is given and
changing nothing global (tests call it in-process); :func:`main` is the
console script around it, which also turns SIGTERM into the same clean-up as
Ctrl-C.

Exit codes: 0 success, 1 a daemon failed (its error output is shown), 2 a usage
or configuration error; ``exec`` passes its command's exit code through.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from . import _config
from ._errors import AlreadyStarted, DaemonError
from ._files import read_tail

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from ._scoped import Running
    from ._spec import Daemon

EXAMPLES = """\
examples:
  daemon-controller up                 start every daemon that is not running
  daemon-controller up search          start 'search' (and what it starts after)
  daemon-controller status             a table: state, PID, uptime, ping
  daemon-controller status --json      the same, for machines
  daemon-controller logs search -n 50  the last 50 lines of its log
  daemon-controller exec -- pytest -x  run a command with the daemons up, then
                                       stop the ones it started
  daemon-controller down               stop them all, in reverse order

The daemons come from daemons.toml ([daemons.<name>] tables) or from
pyproject.toml ([tool.daemon-controller.daemons.<name>]) in this directory or
above it, or from -c FILE.

exit codes: 0 success, 1 a daemon failed, 2 usage or configuration error;
exec exits with its command's code
"""

OK, FAILED, USAGE = 0, 1, 2

#: How long ``exec`` waits for its command to exit after Ctrl-C or SIGTERM
#: before killing it (seconds): long enough for a test run to tear down.
COMMAND_GRACE = 10.0

_LOGGER = "daemon_controller"


class _Usage(Exception):
    pass


# -- output ------------------------------------------------------------------------------

# Every C0 and C1 control character and DEL, shown as an escape: a daemon's
# name, its log or its error output must not move our cursor, recolour the
# terminal or set its title. Tabs are harmless and common in logs.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\t"}
_ESCAPES_KEEP_NEWLINES = _ESCAPES | {ord("\n"): "\n"}


def visible(text: str, *, newlines: bool = False) -> str:
    r"""``text`` with control characters escaped (``\x1b``, ``\r``), tabs kept.

    Args:
        text: Anything that came from outside: a name, a log line, an error.
        newlines: Keep line breaks (for a block of lines); else they are
            escaped too, so that one line stays one line.
    """
    return text.translate(_ESCAPES_KEEP_NEWLINES if newlines else _ESCAPES)


class Painted(NamedTuple):
    """A piece of a line shown in an ANSI colour (SGR ``code``) where colours are on."""

    text: str
    code: str


class Output:
    """One stream's messages: colours and a live status line only on a terminal.

    Everything written goes through :func:`visible`; only the colours this
    class adds itself reach the terminal as escape sequences.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.color = (
            self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        )
        self._lock = threading.Lock()
        self._status_shown = False

    def _render(self, part: str | Painted) -> str:
        if isinstance(part, Painted):
            text = visible(part.text)
            return f"\033[{part.code}m{text}\033[0m" if self.color else text
        return visible(part)

    def line(self, *parts: str | Painted) -> None:
        """One line (clearing any live status line); its parts are escaped."""
        text = "".join(map(self._render, parts))
        with self._lock:
            if self._status_shown:
                self.stream.write("\r\033[K")
                self._status_shown = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def block(self, text: str, indent: str = "    ") -> None:
        """A multi-line text (an error message, JSON), each line escaped and indented."""
        for piece in text.split("\n"):
            self.line(indent + piece.removesuffix("\r"))

    def status(self, text: str) -> None:
        """The live status line (terminals only; elsewhere nothing)."""
        if not self.tty:
            return
        width = max(20, self.width() - 1)
        with self._lock:
            self.stream.write("\r\033[K" + visible(text)[:width])
            self.stream.flush()
            self._status_shown = True

    def clear(self) -> None:
        """Remove the live status line."""
        with self._lock:
            if self._status_shown:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._status_shown = False

    def width(self) -> int:
        """The terminal's width in columns (80 when it does not say)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns or 80  # an unsized pseudo-terminal (script, docker -t) says 0


OK_TAG = Painted("ok", "32")
FAILED_TAG = Painted("FAILED", "31;1")
SKIPPED_TAG = Painted("skipped", "33")


def _last_log_line(daemon: Daemon) -> str:
    log = daemon.resolved().config.log_file
    text = None if log is None else read_tail(log, limit=4096)
    lines = (text or "").split("\n")  # not splitlines(): a "\r" stays in its line, escaped
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


@contextlib.contextmanager
def _live(out: Output, verb: str, active: Callable[[], dict[str, Daemon]]) -> Iterator[None]:
    """While the block runs, refresh a status line: who, how long, their last log line."""
    done = threading.Event()
    started = time.monotonic()

    def refresh() -> None:
        while not done.wait(0.1):
            daemons = active()
            if not daemons:
                continue
            last = ""
            for name, daemon in daemons.items():
                line = _last_log_line(daemon)
                if line:
                    last = f" | {name}: {line}"
            names = ", ".join(daemons)
            out.status(f"{verb} {names} ({time.monotonic() - started:.1f} s){last}")

    thread = threading.Thread(target=refresh, daemon=True) if out.tty else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread is not None:
            thread.join()
        out.clear()


# -- running an action on many daemons ---------------------------------------------------


class _Plan(NamedTuple):
    """What to do to which daemons, and in which order."""

    verb: str  # for the live line: "starting"
    infinitive: str  # for messages: "start"
    needs: dict[str, set[str]]  # each daemon: the daemons whose action must succeed first
    reverse: bool  # needs are the daemons that start after this one (stopping)


def _forward(project: _config.Project, names: list[str], verb: str, infinitive: str) -> _Plan:
    wanted = set(names)
    needs = {n: set(project.after.get(n, ())) & wanted for n in names}
    return _Plan(verb, infinitive, needs, reverse=False)


def _backward(project: _config.Project, names: list[str], verb: str, infinitive: str) -> _Plan:
    wanted = set(names)
    needs = {n: {m for m in wanted if n in project.after.get(m, ())} for n in names}
    return _Plan(verb, infinitive, needs, reverse=True)


class _Run:
    """One run of an action over a plan: what is pending, running, done and failed.

    Each daemon begins as soon as the daemons it needs succeeded; a result or
    a failure is printed the moment it comes; a daemon whose dependency failed
    is skipped, saying which one. With ``keep_going`` off (``exec``: the
    command will not run anyway), nothing new begins after the first failure.
    """

    def __init__(
        self,
        out: Output,
        project: _config.Project,
        plan: _Plan,
        action: Callable[[str, Daemon], str | None],
        *,
        keep_going: bool,
    ) -> None:
        self.out = out
        self.project = project
        self.plan = plan
        self.action = action
        self.keep_going = keep_going
        self.pending = set(plan.needs)
        self.succeeded: set[str] = set()
        self.roots: dict[str, list[str]] = {}  # failed or skipped -> the failures behind it
        self.running: dict[Future[str | None], str] = {}
        self.lock = threading.Lock()  # running is read by the live status line

    def active(self) -> dict[str, Daemon]:
        """The daemons being acted on now."""
        with self.lock:
            names = sorted(self.running.values())
        return {name: self.project.daemons[name] for name in names}

    def __call__(self) -> int:
        """Run everything; the exit code."""
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.pending)))
        with pool, _live(self.out, self.plan.verb, self.active):
            while self.pending or self.running:
                self._skip_blocked()
                for name in sorted(n for n in self.pending if self.plan.needs[n] <= self.succeeded):
                    self.pending.discard(name)
                    future = pool.submit(self.action, name, self.project.daemons[name])
                    with self.lock:
                        self.running[future] = name
                if not self.running:
                    break  # nothing left can begin (cannot happen: 'after' has no cycles)
                finished, _ = wait(self.running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=self.running.__getitem__):
                    self._report(future)
        return FAILED if self.roots else OK

    def _skip_blocked(self) -> None:
        """Skip every pending daemon that can no longer begin, saying why."""
        changed = True
        while changed:  # a skip can block what needs the skipped daemon
            changed = False
            for name in sorted(self.pending):
                failed = sorted(d for d in self.plan.needs[name] if d in self.roots)
                if failed:
                    dep = failed[0]
                    self._skip(name, self._reason(dep), self.roots[dep])
                    changed = True
                elif self.roots and not self.keep_going:
                    causes = sorted({r for rs in self.roots.values() for r in rs})
                    reason = f"{', '.join(causes)} failed to {self.plan.infinitive}"
                    self._skip(name, reason, causes)
                    changed = True

    def _skip(self, name: str, reason: str, causes: list[str]) -> None:
        self.pending.discard(name)
        self.roots[name] = causes
        self.out.line(SKIPPED_TAG, f" {name}: {reason}")

    def _reason(self, dep: str) -> str:
        """Why a daemon that needs ``dep`` is skipped."""
        roots = self.roots[dep]
        if dep in roots:
            what = f"failed to {self.plan.infinitive}"
        else:
            what = f"was skipped ({', '.join(roots)} failed to {self.plan.infinitive})"
        if self.plan.reverse:
            return f"{dep} starts after it and {what}"
        return f"it starts after {dep}, which {what}"

    def _report(self, future: Future[str | None]) -> None:
        with self.lock:
            name = self.running.pop(future)
        try:
            result = future.result()
        except DaemonError as err:
            self.roots[name] = [name]
            self.out.line(FAILED_TAG, f" {name}: {type(err).__name__}")
            self.out.block(str(err))
            return
        self.succeeded.add(name)
        if result:
            self.out.line(OK_TAG, f" {name}: {result}")


def _run_plan(
    out: Output,
    project: _config.Project,
    plan: _Plan,
    action: Callable[[str, Daemon], str | None],
    *,
    keep_going: bool = True,
) -> int:
    """Run ``action`` on every daemon of ``plan`` (see :class:`_Run`); the exit code."""
    return _Run(out, project, plan, action, keep_going=keep_going)()


def _start_one(_name: str, daemon: Daemon) -> str | None:
    if daemon.is_running():
        return f"already running (PID {daemon.read_pid()})"
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


def _needed(project: _config.Project, names: list[str]) -> list[str]:
    """``names`` and what they start after (all daemons when empty), in start order."""
    return [n for wave in project.order(names or None) for n in wave]


def _only(project: _config.Project, names: list[str]) -> list[str]:
    """``names`` alone (all daemons when empty), in start order."""
    return [n for n in _needed(project, names) if not names or n in names]


def cmd_up(out: Output, project: _config.Project, names: list[str]) -> int:
    """Start what is not running, in ``after`` order, independent daemons at once."""
    plan = _forward(project, _needed(project, names), "starting", "start")
    return _run_plan(out, project, plan, _start_one)


def cmd_down(out: Output, project: _config.Project, names: list[str]) -> int:
    """Stop, in reverse ``after`` order."""
    plan = _backward(project, _only(project, names), "stopping", "stop")
    return _run_plan(out, project, plan, _stop_one)


def cmd_restart(out: Output, project: _config.Project, names: list[str]) -> int:
    """Restart, in ``after`` order."""
    plan = _forward(project, _only(project, names), "restarting", "restart")
    return _run_plan(out, project, plan, _restart_one)


def _describe(name: str, daemon: Daemon) -> dict[str, Any]:
    import psutil  # noqa: PLC0415 - only the status command needs it here

    pid = daemon.read_pid()
    row: dict[str, Any] = {"name": name, "state": "stopped", "pid": None, "uptime": None}
    if pid is not None:
        row.update(state="running", pid=pid)
        with contextlib.suppress(psutil.Error):
            row["uptime"] = round(time.time() - psutil.Process(pid).create_time(), 1)
    probe = daemon.config.ping_command
    row["ping"] = None if probe is None else ("ok" if probe.check(1.0) else "no answer")
    row["ping_target"] = None if probe is None else probe.describe()
    return row


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cmd_status(out: Output, project: _config.Project, names: list[str], *, as_json: bool) -> int:
    """A table (or JSON) of every daemon: state, PID, uptime and ping."""
    rows = [_describe(name, project.daemons[name]) for name in _needed(project, names)]
    if as_json:
        out.block(json.dumps(rows, indent=2), indent="")  # JSON escapes control characters
        return OK
    table = [["NAME", "STATE", "PID", "UPTIME", "PING"]]
    for row in rows:
        ping = f"{row['ping']} ({row['ping_target']})" if row["ping"] else "-"
        table.append(
            [row["name"], row["state"], str(row["pid"] or "-"), _uptime(row["uptime"]), ping]
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


def cmd_logs(out: Output, project: _config.Project, name: str, lines: int) -> int:
    """The last lines of a daemon's log file."""
    if name not in project.daemons:
        known = ", ".join(sorted(project.daemons))
        raise _Usage(f"no daemon named {name!r} (declared: {known})")
    log = project.daemons[name].resolved().config.log_file
    if log is None:
        raise _Usage(f"daemon {name!r} has no log file ('log' key)")
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
    out: Output, project: _config.Project, names: list[str], command: list[str], *, keep: bool
) -> int:
    """Run ``command`` with the daemons up; stop the ones this started unless ``keep``.

    Each daemon is entered as a ``running()`` block, so two ``exec`` runs at
    once share the daemons: the one that started a daemon does not stop it
    while the other's command still uses it; the last one out does. ``out``
    should be standard error: standard output belongs to the command.
    """
    if not command:
        raise _Usage("exec needs a command after '--', e.g.: daemon-controller exec -- pytest")
    plan = _forward(project, _needed(project, names), "starting", "start")
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
        status = _run_plan(out, project, plan, enter, keep_going=False)
        if status != OK:
            return status
        return _run_command(out, command)
    finally:
        _leave_all(out, blocks)


def _run_command(out: Output, command: list[str]) -> int:
    """Run ``command`` on our own standard streams; its exit code, shell-style.

    On Ctrl-C (which the command received too, from the terminal) or SIGTERM
    (passed on to it), the command gets :data:`COMMAND_GRACE` seconds to exit,
    so that a test run can tear its fixtures down, before it is killed.
    """
    try:
        proc = subprocess.Popen(command)
    except FileNotFoundError:
        out.line(FAILED_TAG, f" cannot run {command[0]!r}: not found")
        return 127
    except OSError as err:  # not executable, not a program: what a shell calls 126
        out.line(FAILED_TAG, f" cannot run {command[0]!r}: {err.strerror or err}")
        return 126
    try:
        code = proc.wait()
    except KeyboardInterrupt as interrupt:
        signum = _signal_of(interrupt)
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


# -- the command line --------------------------------------------------------------------


def _version() -> str:
    from importlib import metadata  # noqa: PLC0415 - only --version needs it

    try:
        return metadata.version("daemon-controller")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "(version unknown: not installed)"


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that writes to the streams :func:`run` was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - ArgumentParser's own
        if sys.version_info >= (3, 14):
            kwargs.setdefault("color", False)  # it would look at sys.stdout, not our stream
        super().__init__(*args, **kwargs)
        self.out: IO[str] = sys.stdout
        self.err: IO[str] = sys.stderr

    def _print_message(self, message: str, file: Any = None) -> None:  # noqa: ANN401 - as in argparse
        if message:
            stream = self.err if file is sys.stderr else self.out
            stream.write(visible(message, newlines=True))
            stream.flush()


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:  # noqa: ANN401 - argparse's
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        del namespace, values, option_string
        parser._print_message(f"{parser.prog} {_version()}\n", None)  # noqa: SLF001 - our _Parser
        parser.exit()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = f"must be 0 or more, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


_CONFIG_HELP = "the daemons file (default: daemons.toml or pyproject.toml here or above)"
_VERBOSE_HELP = "log what the library does, on standard error"


def _parser(stdout: IO[str], stderr: IO[str]) -> _Parser:
    parser = _Parser(
        prog="daemon-controller",
        description="Start, stop and check the daemons a project declares in daemons.toml.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("-c", "--config", metavar="FILE", help=_CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    # -c and -v are accepted after the command too: `daemon-controller up -v`.
    common = _Parser(add_help=False)
    common.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers: list[_Parser] = [parser]

    def command(name: str, text: str, **kwargs: Any) -> _Parser:  # noqa: ANN401 - add_parser's
        kwargs.setdefault("description", text[0].upper() + text[1:] + ".")
        p: _Parser = sub.add_parser(name, help=text, parents=[common], **kwargs)
        parsers.append(p)
        return p

    for name, text in (
        ("up", "start the daemons that are not running"),
        ("down", "stop the daemons, in reverse order"),
        ("restart", "restart the daemons"),
    ):
        command(name, text).add_argument(
            "names", nargs="*", metavar="NAME", help="only these daemons"
        )
    p = command("status", "show state, PID, uptime and ping of each daemon")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these daemons")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p = command("logs", "show the end of a daemon's log")
    p.add_argument("name", metavar="NAME", help="the daemon")
    p.add_argument("-n", "--lines", type=_count, default=20, help="how many lines (default 20)")
    p = command(
        "exec",
        "run a command with the daemons up",
        usage="%(prog)s [-h] [-c FILE] [-v] [--keep] [NAME ...] -- COMMAND [ARG ...]",
        description="Start the daemons, run COMMAND, pass its exit code through, and stop "
        "the daemons this started (unless --keep). Progress goes to standard error; "
        "standard output is the command's.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these daemons")
    p.add_argument("--keep", action="store_true", help="leave the daemons running afterwards")
    for each in parsers:
        each.out, each.err = stdout, stderr
    return parser


class _SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), newlines=True)


@contextlib.contextmanager
def _logging_to(stream: IO[str], *, verbose: bool) -> Iterator[None]:
    """Send the library's log records to ``stream`` for the block (debug ones with -v)."""
    logger = logging.getLogger(_LOGGER)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    level = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run(argv: Sequence[str], stdout: IO[str], stderr: IO[str]) -> int:
    """Run the command line ``argv`` (without the program name); returns the exit code.

    Writes to ``stdout`` and ``stderr`` only (the library's log records go to
    ``stderr`` during the call, through a handler removed afterwards), and
    installs no signal handler: a ``KeyboardInterrupt`` is the interruption.
    The command run by ``exec`` inherits the process's own file descriptors
    0, 1 and 2, not these streams.
    """
    args_in = list(argv)
    command: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, command = args_in[:cut], args_in[cut + 1 :]
    try:
        args = _parser(stdout, stderr).parse_args(args_in)
    except SystemExit as leave:  # --help, --version, or a usage error (already printed)
        return leave.code if isinstance(leave.code, int) else USAGE
    out = Output(stdout)
    err = Output(stderr)
    with _logging_to(stderr, verbose=args.verbose):
        try:
            project = _project(args, command)
            return _dispatch(out, err, project, args, command)
        except (_Usage, _config.ConfigError) as problem:
            err.block(f"daemon-controller: {problem}", indent="")
            return USAGE
        except ValueError as problem:  # an incomplete daemon: a configuration problem
            err.block(f"daemon-controller: {problem}", indent="")
            return USAGE
        except DaemonError as problem:
            err.block(f"daemon-controller: {problem}", indent="")
            return FAILED
        except KeyboardInterrupt as interrupt:
            err.line("daemon-controller: interrupted")
            return 128 + _signal_of(interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`run` on ``sys.argv``, with SIGTERM handled like Ctrl-C.

    A CI job that times out sends SIGTERM; raising ``KeyboardInterrupt`` for it
    (carrying the signal's number) lets ``exec`` pass it on to its command and
    stop the daemons it started. Ctrl-C keeps Python's own SIGINT handler,
    which raises ``KeyboardInterrupt`` (or stays ignored when the parent
    ignored SIGINT, as for a background job).
    """
    previous: Any = None
    with contextlib.suppress(ValueError):  # not the main thread (embedded use): no handler
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


def _signal_of(interrupt: KeyboardInterrupt) -> int:
    """Which signal raised ``interrupt``: the one :func:`_interrupt` names, else SIGINT."""
    if interrupt.args and isinstance(interrupt.args[0], int):
        return interrupt.args[0]
    return int(signal.SIGINT)


def _project(args: argparse.Namespace, command: list[str]) -> _config.Project:
    if args.command != "exec" and command:
        raise _Usage(f"'--' only goes with exec, not {args.command}")
    path = args.config or _config.find()
    if path is None:
        raise _Usage(
            "no daemons.toml here or above (nor a pyproject.toml with "
            "[tool.daemon-controller.daemons.<name>]); use -c FILE"
        )
    return _config.load_project(path)


def _dispatch(
    out: Output,
    err: Output,
    project: _config.Project,
    args: argparse.Namespace,
    command: list[str],
) -> int:
    if args.command == "up":
        return cmd_up(out, project, args.names)
    if args.command == "down":
        return cmd_down(out, project, args.names)
    if args.command == "restart":
        return cmd_restart(out, project, args.names)
    if args.command == "status":
        return cmd_status(out, project, args.names, as_json=args.json)
    if args.command == "logs":
        return cmd_logs(out, project, args.name, args.lines)
    return cmd_exec(err, project, args.names, command, keep=args.keep)
