"""The command line's output: escaped text, colours, the live status line."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import IO, TYPE_CHECKING, NamedTuple

from ._files import DaemonFiles, read_tail
from ._notify import read_status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._daemon import Daemon


#: Exit codes: success, a daemon failed, a usage or configuration error.
OK, FAILED, USAGE = 0, 1, 2


class Usage(Exception):
    """The command line was used wrongly: exit 2 with this message."""


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """Which signal raised ``interrupt``: the one ``main()``'s handler names, else SIGINT."""
    if interrupt.args and isinstance(interrupt.args[0], int):
        return interrupt.args[0]
    return int(signal.SIGINT)


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
    """What a starting daemon last said: its latest ``STATUS=`` (notify()), or its last log line."""
    config = daemon.resolved().config
    if config.notify and config.pid_file is not None:
        said = read_status(DaemonFiles.of(config.pid_file, config.lock_file).status, None)
        if said:
            return said.strip()
    log = config.log_file
    text = None if log is None else read_tail(log, limit=4096)
    lines = (text or "").split("\n")  # not splitlines(): a "\r" stays in its line, escaped
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


@contextlib.contextmanager
def live(out: Output, verb: str, active: Callable[[], dict[str, Daemon]]) -> Iterator[None]:
    """While the block runs, refresh a status line: who, how long, what they last said."""
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
