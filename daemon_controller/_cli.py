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
import logging
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

from . import _toml
from ._cli_commands import (
    cmd_down,
    cmd_exec,
    cmd_logs,
    cmd_restart,
    cmd_status,
    cmd_up,
)
from ._cli_output import FAILED, USAGE, Output, Usage, signal_of, visible
from ._errors import ConfigError, DaemonError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


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

_LOGGER = "daemon_controller"


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
        except (Usage, ConfigError) as problem:
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
            return 128 + signal_of(interrupt)


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


def _project(args: argparse.Namespace, command: list[str]) -> _toml.Project:
    if args.command != "exec" and command:
        raise Usage(f"'--' only goes with exec, not {args.command}")
    path = args.config or _toml.find()
    if path is None:
        raise Usage(
            "no daemons.toml here or above (nor a pyproject.toml with "
            "[tool.daemon-controller.daemons.<name>]); use -c FILE"
        )
    return _toml.load_project(path)


def _dispatch(
    out: Output,
    err: Output,
    project: _toml.Project,
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
