"""Exceptions raised by daemon_controller.

The hierarchy::

    DaemonError
    ├── AlreadyStarted
    ├── ConnectError
    ├── StartError ─┬ StartTimeout   (also a builtin TimeoutError)
    │               └ StartFailures  (several daemons started together failed)
    └── StopError  ── StopTimeout    (also a builtin TimeoutError)

    ValueError
    └── ConfigError                  (a daemons.toml that cannot be used)

Every exception carries the data it talks about as attributes (``identifier``,
``output``, ``log``, ``exit_status``, ``signal``, ``pid``) and builds its text in
``__str__`` from them, so a handler can inspect the failure without parsing the
message. All of them survive pickling (for multiprocessing and pytest-xdist).

The public classes say they are ``daemon_controller.StartError`` and so on
(where users import them from), not the private module they are defined in;
and our modules set ``__tracebackhide__`` to :func:`hide_frames`, so pytest
shows a failed start as the test's own line and the daemon's message, without
the library's internal frames (``--full-trace`` shows everything).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def hide_frames(excinfo: Any) -> bool:  # noqa: ANN401 - pytest's ExceptionInfo
    """Pytest's ``__tracebackhide__`` hook: hide our frames for our own errors only.

    A bug of ours (any other exception) keeps every frame visible.
    """
    return isinstance(getattr(excinfo, "value", None), DaemonError | ConfigError)


class DaemonError(Exception):
    """Base class of every error this library raises on purpose.

    Attributes:
        identifier: The daemon's human-readable name.
        message: The first line of the text: what went wrong.
    """

    __module__ = "daemon_controller"

    def __init__(self, identifier: str, message: str) -> None:
        super().__init__(identifier, message)
        self.identifier = identifier
        self.message = message

    def __str__(self) -> str:
        return self.message

    def _state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the attribute dict: keyword-only constructors and
        # subclasses with extra fields all round-trip the same way.
        return (_rebuild, (type(self), self._state()))


def _rebuild(cls: type[DaemonError], state: dict[str, Any]) -> DaemonError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("identifier"), state.get("message"))
    err.__dict__.update(state)
    return err


class AlreadyStarted(DaemonError):
    """``start()`` found the daemon already running.

    Attributes:
        pid: The PID of the running daemon, from its PID file.
    """

    __module__ = "daemon_controller"

    def __init__(self, identifier: str, pid: int) -> None:
        super().__init__(identifier, f"Daemon '{identifier}' is already running (PID {pid})")
        self.pid = pid


class ConnectError(DaemonError):
    """``connect()`` could not connect, even after making sure the daemon runs.

    The exception that the connect function raised last, if any, is chained as
    ``__cause__``.
    """

    __module__ = "daemon_controller"


class _CommandFailure(DaemonError):
    """Shared shape of start and stop failures: output, log lines, exit status."""

    def __init__(
        self,
        identifier: str,
        message: str,
        *,
        output: str | None = None,
        log: str | None = None,
        exit_status: int | None = None,
        signal: str | None = None,
        pid: int | None = None,
        reason: str | None = None,
        ran: bool = True,
    ) -> None:
        super().__init__(identifier, message)
        self.ran = ran
        self.output = output
        self.log = log
        self.exit_status = exit_status
        self.signal = signal
        self.pid = pid
        self.reason = reason

    def __str__(self) -> str:
        parts = [self.message]
        if not self.ran:
            return self.message  # refused before anything was run: no output to show
        body = [text.rstrip("\n") for text in (self.output, self.log) if text and text.strip()]
        parts.extend(body)
        summary: list[str] = []
        if not body:
            summary.append("logs not available" if self.log is None else "logs empty")
        if self.signal is not None:
            summary.append(f"terminated with signal {self.signal}")
        elif self.exit_status is not None:
            summary.append(f"exited with status {self.exit_status}")
        if self.reason:
            summary.append(self.reason)
        if summary:
            parts.append(f"({'; '.join(summary)})")
        return "\n".join(parts)


class StartError(_CommandFailure):
    """The daemon could not be started.

    Attributes:
        output: What the start command printed (stdout and stderr together), or
            ``None`` when it was not captured (its output went to our own
            terminal, or the library daemonized the program itself).
        log: The text the daemon appended to its log file during the start;
            ``""`` when there was none, ``None`` when the log is not a regular
            file (for example ``/dev/stderr``).
        exit_status: The start command's (or the daemon's) exit status, or
            ``None`` when it was killed by a signal or is unknown.
        signal: The name of the signal that killed it (``"SIGXCPU"``), or ``None``.
        pid: The daemon's PID when one was known.
        reason: A short phrase for the summary line (``"timed out"``).
        ran: ``False`` when the start was refused before anything was run.
    """

    __module__ = "daemon_controller"


class StartTimeout(StartError, TimeoutError):
    """The daemon did not become ready in time; whatever the start created was stopped.

    Attributes:
        timeout: The limit that ran out, in seconds.
    """

    __module__ = "daemon_controller"

    def __init__(self, identifier: str, message: str, *, timeout: float, **kwargs: Any) -> None:  # noqa: ANN401 - forwards the StartError fields
        kwargs.setdefault("reason", "timed out")
        super().__init__(identifier, message, **kwargs)
        self.timeout = timeout


class StartFailures(StartError):
    """Several daemons started together (``all_running()``, ``@requires``) failed.

    Raised only when two or more failed; a single failure is raised as itself.
    A ``StartError``, so ``except StartError`` handles one failure and several
    alike. The text names every failure, each with its own text (output and
    log lines included). Failures that are not ``DaemonError`` (a bug in a
    ``before_start`` function) are also chained as ``__cause__``, an
    exception group, to keep their tracebacks.

    Attributes:
        errors: Each failed daemon's name and what its start raised, in the
            order the daemons were given.
        total: How many daemons were started together.
    """

    def __init__(self, errors: dict[str, BaseException], total: int) -> None:
        names = ", ".join(f"'{name}'" for name in errors)
        message = f"{len(errors)} of {total} daemons failed to start: {names}"
        super().__init__(", ".join(errors), message)
        self.errors = errors
        self.total = total

    def __str__(self) -> str:
        parts = [self.message]
        for error in self.errors.values():
            text = (
                str(error) if isinstance(error, DaemonError) else f"{type(error).__name__}: {error}"
            )
            lines = text.splitlines() or [""]
            parts.append("- " + lines[0])
            parts.extend("  " + line if line else "" for line in lines[1:])
        return "\n".join(parts)


class StopError(_CommandFailure):
    """The daemon could not be stopped (the stop command failed, or we may not signal it)."""

    __module__ = "daemon_controller"


class StopTimeout(StopError, TimeoutError):
    """The daemon did not exit in time after the graceful stop; it was killed.

    Attributes:
        timeout: The limit that ran out, in seconds.
    """

    __module__ = "daemon_controller"

    def __init__(self, identifier: str, message: str, *, timeout: float, **kwargs: Any) -> None:  # noqa: ANN401 - forwards the StopError fields
        kwargs.setdefault("reason", "timed out")
        super().__init__(identifier, message, **kwargs)
        self.timeout = timeout


class ConfigError(ValueError):
    """A daemons file that cannot be used: says which file, daemon and key.

    Attributes:
        path: The file.
        daemon: The daemon's name, or ``None`` for a file-level problem.
        key: The key at fault, or ``None``.
        problem: What is wrong, in words.
    """

    __module__ = "daemon_controller"

    def __init__(
        self, path: Path, problem: str, *, daemon: str | None = None, key: str | None = None
    ) -> None:
        self.path = path
        self.daemon = daemon
        self.key = key
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path)
        if self.daemon is not None:
            where += f": daemon {self.daemon!r}"
        if self.key is not None:
            where += f", key {self.key!r}"
        return f"{where}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.path, self.problem, self.daemon, self.key))


def _rebuild_config_error(
    path: Path, problem: str, daemon: str | None, key: str | None
) -> ConfigError:
    return ConfigError(path, problem, daemon=daemon, key=key)
