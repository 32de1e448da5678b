"""Running the user's commands: environment, argv or shell, spawning, waiting.

Output goes to files, never to pipes: a command that starts a daemon leaves the
daemon holding its stdout, and reading a pipe to EOF would wait for the daemon
to exit.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from . import _platform, _tracking
from ._errors import hide_frames
from ._files import read_span
from ._options import command_text

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._options import Command, DaemonConfig

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames


def environment(
    config: DaemonConfig, marker: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The environment for a command: ours, ``.env()``, the marker, then ``extra``.

    With ``.user()``, that user's login environment instead of ours (none of
    our sessions' or agents' variables; see ``_platform.user_environment``).
    ``extra`` (``NOTIFY_SOCKET`` of a start) comes last. ``None`` (inherit
    ours unchanged) when there is nothing to add.
    """
    if not config.env and marker is None and config.user is None and not extra:
        return None
    env = dict(os.environ)
    if config.user is not None:
        env = _platform.user_environment(config.user, env)
    env.update(config.env)
    if marker is not None:
        env[_tracking.MARKER] = marker
    env.update(extra or {})
    return env


def spawn_kwargs(config: DaemonConfig) -> dict[str, Any]:
    """Platform ``Popen`` arguments: a session of its own, and ``.user()``.

    Raises:
        OSError: The user does not exist or may not be switched to, so that
            the callers' spawn-failure paths report it like a failed exec.
    """
    try:
        return _platform.detach_kwargs(config.user)
    except (LookupError, PermissionError, NotImplementedError) as err:
        raise OSError(str(err)) from err


def popen_args(command: Command) -> tuple[str | Sequence[str], bool]:
    """``(args, shell)`` for ``Popen``: a str runs through the shell, a tuple does not."""
    return (command, True) if isinstance(command, str) else (list(command), False)


_SHELL_SYNTAX = re.compile(r"[;&|<>()`$\n{}*?\[\]~#]|^\s*\w+=")
_ALREADY_EXEC = re.compile(r"\s*exec(\s|$)")


def exec_in_shell(command: str) -> str:
    """``exec <command>`` for a simple shell command run in the foreground.

    dash (``/bin/sh`` on Debian) forks for ``sh -c "program args"``, so the
    PID we see would be the shell's, and stopping it would leave the program
    running. ``exec`` makes the shell become the program. Commands using shell
    syntax (pipes, ``&&``, redirections, variables, ``VAR=value`` prefixes)
    are left alone; their process group is signalled on stop instead. A
    command that already starts with ``exec`` is left as it is.
    """
    if _SHELL_SYNTAX.search(command) or _ALREADY_EXEC.match(command):
        return command
    return f"exec {command}"


def describe_exit(returncode: int) -> tuple[int | None, str | None]:
    """``(exit_status, signal_name)`` from a ``subprocess`` return code."""
    if returncode < 0:
        return None, _platform.signal_name(-returncode)
    return returncode, None


def read_output(handle: IO[bytes]) -> str:
    """What was written to a temporary output file, as text: its first and last 32 KiB.

    A command printing 200 MB must not make a 200 MB exception (nor a
    200 MB ``.failure`` record): the middle is left out, and a line says how
    much (see :func:`~daemon_controller._files.read_span`).
    """
    handle.flush()
    fd = handle.fileno()
    return read_span(fd, 0, os.fstat(fd).st_size)


@dataclass(slots=True)
class CommandResult:
    """How a stop or restart command ended.

    Attributes:
        returncode: As in ``subprocess``; ``None`` when we killed it after its timeout.
        output: Its stdout and stderr together.
    """

    returncode: int | None
    output: str


def run(config: DaemonConfig, command: Command, timeout: float | None) -> CommandResult:
    """Run a stop, restart or preparation command to completion, capturing its output.

    A command that cannot be executed is reported as a shell would report it
    (status 127). One still running after ``timeout`` seconds is killed with
    its process group; ``None`` waits as long as it runs.
    """
    args, shell = popen_args(command)
    import tempfile  # noqa: PLC0415 - import time, see _files.atomic_write

    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment(config),
                cwd=config.cwd,
                **spawn_kwargs(config),
            )
        except OSError as err:
            return CommandResult(127, f"cannot run {command_text(command)}: {err}")
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _platform.force_kill(proc.pid, group=True)
            proc.wait()
            returncode = None
        except BaseException:
            _platform.force_kill(proc.pid, group=True)
            proc.wait()
            raise
        return CommandResult(returncode, read_output(out))


def spawn(
    config: DaemonConfig,
    command: Command,
    *,
    stdout: IO[bytes] | int | None,
    marker: str,
    foreground: bool,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a start command (or a foreground program) in a session of its own.

    Args:
        config: For the environment, working directory, user and kept descriptors.
        command: What to run; a simple shell command run in the foreground is
            ``exec``-ed so that its PID is the program's.
        stdout: Where its stdout and stderr go; ``None``: to ours.
        marker: The environment marker its descendants are recognised by.
        foreground: The program may stay in the foreground (it is the daemon).
        extra_env: Variables set last (the notify socket of a start).

    Raises:
        OSError: It could not be executed.
    """
    args, shell = popen_args(command)
    if foreground and isinstance(args, str) and _platform.SHELL_HAS_EXEC:
        args = exec_in_shell(args)
    return subprocess.Popen(
        args,
        shell=shell,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        env=environment(config, marker, extra_env),
        cwd=config.cwd,
        close_fds=True,
        pass_fds=config.keep_fds,
        **spawn_kwargs(config),
    )
