"""Daemons with a port and a run directory for the tests, and removing what they leave behind.

A daemon with ``run_dir()`` keeps its run directory, its prepared templates,
its lock file and the side files beside it (``.port``, ``.prepared``...) in
the per-user runtime directory, outside the test's ``tmp_path``.
:func:`forget` removes all of them; :func:`placed_echo` builds an echo daemon
whose files are all under ``{run_dir}`` and whose port is chosen at start.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from echo_server import echo_command
from helpers import MARKER

from daemon_controller import Daemon
from daemon_controller._files import DaemonFiles


def placed_echo(name: str, cwd: Path, test_id: str, *args: str, log_file: bool = True) -> Daemon:
    """An echo daemon with ``port()`` and ``run_dir()``: PID and log files in its run directory.

    ``cwd`` is part of what keys its runtime files, so tests never meet each
    other's. Without ``log_file``, the daemon logs nowhere: its errors are lost.
    """
    logging = ("--log-file", "{run_dir}/echo.log") if log_file else ()
    command = echo_command(
        "--port", "{port}", "--pid-file", "{run_dir}/echo.pid", *logging, *args
    )  # fmt: skip
    daemon = (
        Daemon(name)
        .port()
        .run_dir()
        .start_with(command)
        .ping_tcp("127.0.0.1", "{port}")
        .pid("{run_dir}/echo.pid")
        .cwd(cwd)
        .start_timeout(20)
        .start_abort_timeout(3)
        .env({MARKER: test_id})
    )
    return daemon.log("{run_dir}/echo.log" if log_file else cwd / f"{name}-silent.log")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def forget(daemon: Daemon) -> None:
    """Remove the daemon's run directory, templates, lock and side files (it must be stopped)."""
    config = daemon.resolved().config
    leftovers: list[Path] = []
    if config.pid_file is not None:
        files = DaemonFiles.of(config.pid_file, config.lock_file)
        leftovers += [files.pid, files.lock, files.users, files.owner, files.failure]
        leftovers += [files.port, files.prepared]
    for path in (config.log_file, config.run_dir):
        if isinstance(path, Path):
            leftovers.append(path)
    if isinstance(config.run_dir, Path):
        leftovers += config.run_dir.parent.glob(f".{config.run_dir.name}.*")
    template = config.prepare.template if config.prepare is not None else None
    if template is not None:
        leftovers += template.parent.glob(f"{template.name}*")
    for path in leftovers:
        _remove(path)


#: The preparation of :func:`prepared_echo`: count the run, seed a data directory.
PREPARE = (
    'echo "$$" >> "$COUNTER" && mkdir -p {run_dir}/data && chmod 750 {run_dir}/data'
    ' && cp "$SEED" {run_dir}/data/seed.txt && chmod 640 {run_dir}/data/seed.txt'
)


def prepared_echo(name: str, cwd: Path, test_id: str, *, hardlinks: bool = False) -> Daemon:
    """A :func:`placed_echo` whose run directory starts as a copy of a prepared template.

    The preparation appends a line to ``cwd/counter`` each time it runs and
    copies ``cwd/seed.txt`` (an input) to ``{run_dir}/data/seed.txt``.
    """
    seed = cwd / "seed.txt"
    if not seed.exists():
        seed.write_text("seed 1\n")
    return (
        placed_echo(name, cwd, test_id)
        .env({"COUNTER": str(cwd / "counter"), "SEED": str(seed)})
        .prepare(PREPARE, inputs=[seed], hardlinks=hardlinks)
    )
