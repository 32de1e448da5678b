"""A daemon instance's own things: default files, run directory, port, preparation, key.

:func:`resolve` turns a description into what the actions use: default PID
and log files for a program run in the foreground, the run directory for
``{run_dir}``, and where a preparation keeps its templates. Everything is
keyed like the default PID file (the daemon's name, its working directory,
its start command, and its instance key), so two projects never share, and
every process that describes the daemon the same way finds the same files.

:class:`Instances` holds the builder methods and queries for these (the
``Daemon`` facade inherits them): ``port()``, ``run_dir()``, ``prepare()``,
``instance()``, ``for_worker()``, ``read_port()`` and ``expand()``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from . import _actions, _options, _platform, _templates
from ._errors import DaemonError, hide_frames
from ._files import default_stem
from ._options import PORT, RUN_DIR, Preparation, absolute, command_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from ._daemon import Daemon
    from ._options import Command, DaemonConfig, PathArg, Target

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

#: The environment variable pytest-xdist gives each worker ("gw0", "gw1"...).
XDIST_WORKER = "PYTEST_XDIST_WORKER"


@functools.cache
def _runtime_dir(user: str | None = None) -> Path:
    # Made and checked once per process: every action's first call needs it.
    return _platform.runtime_dir() if user is None else _platform.user_runtime_dir(user)


def _runtime(name: str, user: str | None = None) -> Path:
    try:
        return _runtime_dir(user)
    except (OSError, NotImplementedError) as err:
        msg = f"Daemon '{name}': no runtime directory for its default files: {err}"
        raise DaemonError(name, msg) from err


def _stem(name: str, config: DaemonConfig, *, instance: bool = True) -> str:
    command = config.start_command
    if command is None or callable(command):
        key = getattr(command, "__qualname__", "")
    else:
        key = command_text(command)
    extra = (config.instance,) if instance and config.instance is not None else ()
    return default_stem(name, str(config.cwd or Path.cwd()), key, *extra)


def resolve(name: str, config: DaemonConfig) -> DaemonConfig:
    """``config`` with its defaults filled in, as the actions use it (see ``Daemon.resolved``).

    Raises:
        ValueError: A placeholder is used but not declared, or ``{port}`` is
            where it cannot be.
        DaemonError: The runtime directory is not safe to use.
    """
    _templates.check(name, config)
    needs_files = config.own_pid_file and (config.pid_file is None or config.log_file is None)
    preparation = config.prepare
    if not needs_files and config.run_dir is None:
        return config
    stem = _stem(name, config)
    changes: dict[str, Any] = {}
    if needs_files:
        base = _runtime(name)
        changes["pid_file"] = config.pid_file or base / f"{stem}.pid"
        changes["log_file"] = config.log_file or base / f"{stem}.log"
    run_dir = config.run_dir
    if run_dir == "auto":
        run_dir = _runtime(name, config.user) / f"{stem}.run"
    if run_dir is not None:
        changes["run_dir"] = run_dir
        if preparation is not None and preparation.template is None:
            shared = _stem(name, config, instance=False)  # one template for all instances
            template = _runtime(name, config.user) / f"{shared}.template"
            changes["prepare"] = dataclasses.replace(preparation, template=template)
    config = dataclasses.replace(config, **changes)
    if isinstance(run_dir, Path):
        config = _templates.fill_config(config, {RUN_DIR: str(run_dir)})
        pid_file = config.pid_file
        if config.lock_file is None and pid_file is not None and pid_file.is_relative_to(run_dir):
            # The lock and its side files stay outside, beside it: the run
            # directory is replaced by a fresh copy when its template changes.
            lock_file = run_dir.with_name(f"{run_dir.name}.lock")
            config = dataclasses.replace(config, lock_file=lock_file)
    return config


def _takes_daemon(function: Callable[..., object]) -> bool:
    import inspect  # noqa: PLC0415 - 20 ms of import time; only starts with before_start need it

    try:
        inspect.signature(function).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to look at (some builtins): call it as the gem does
        return False
    return True


def before_start_hook(daemon: Daemon) -> Callable[[DaemonConfig], object] | None:
    """``before_start`` as an attempt calls it: with the ``Daemon`` if it takes an argument."""
    function: Callable[..., object] | None = daemon.config.before_start
    if function is None:
        return None

    def hook(config: DaemonConfig) -> object:
        if _takes_daemon(function):
            return function(dataclasses.replace(daemon, config=config))
        return function()

    return hook


def _variable(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def exports(name: str, daemon: Daemon) -> dict[str, str]:
    """``<NAME>_PORT`` and ``<NAME>_RUN_DIR`` for a command that uses the daemon.

    ``NAME`` is ``name`` upper-cased, with every character other than a
    letter or a digit made ``_``; the port only while the daemon runs.
    """
    found: dict[str, str] = {}
    port = daemon.read_port()
    if port is not None:
        found[f"{_variable(name)}_PORT"] = str(port)
    run_dir = daemon.resolved().config.run_dir
    if isinstance(run_dir, Path):
        found[f"{_variable(name)}_RUN_DIR"] = str(run_dir)
    return found


def _shared_by_instances(config: DaemonConfig) -> list[str]:
    """What ``config`` fixes that every instance would share (so they could not be apart)."""
    shared = [
        f"{option}()"
        for option, path in (("pid", config.pid_file), ("log", config.log_file))
        if path is not None and not str(path).startswith(RUN_DIR)
    ]
    if config.lock_file is not None and not str(config.lock_file).startswith(RUN_DIR):
        shared.append("lock()")
    if isinstance(config.run_dir, Path):
        shared.append("run_dir(path)")
    if isinstance(config.port, int):
        shared.append("port(number)")
    return shared


class Instances:
    """The ``Daemon`` builder methods and queries for ports, run directories and instances."""

    __slots__ = ()

    if TYPE_CHECKING:
        name: str
        config: DaemonConfig

        def _with(self, **changes: Any) -> Self: ...  # noqa: ANN401 - config fields
        def _target(self) -> Target: ...
        def resolved(self) -> Daemon: ...

    def port(self, number: int | Literal["auto"] = "auto") -> Self:
        """The daemon's TCP port, for ``{port}`` in its commands, ``env`` values and ping.

        ``.port()`` chooses a free loopback port when the daemon starts (the
        one it had before, if that is still free), records it beside the
        lock file and fills it in; every process that uses the daemon reads
        it with :meth:`read_port`. If the daemon fails because something took
        the port before it could bind it, another is chosen, a few times.
        ``.port(6390)`` fixes it instead, so the same templates work.
        """
        if number != "auto" and (
            not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536  # noqa: PLR2004 - the TCP port range
        ):
            msg = f"Daemon '{self.name}': port() takes 'auto' or 1 to 65535, not {number!r}"
            raise ValueError(msg)
        return self._with(port=number)

    def run_dir(self, path: PathArg | Literal["auto"] = "auto") -> Self:
        """A directory of the daemon's own, for ``{run_dir}``: data, sockets, generated config.

        ``.run_dir()`` makes it private (0700) under the per-user runtime
        directory, keyed like the default PID file (per project, per
        instance). It is made before each start, belonging to ``user()``'s
        user when we are root. ``{run_dir}`` may start the ``pid()``,
        ``log()``, ``lock()``, ``cwd()`` and ``ping_unix()`` paths too; with
        the PID file inside, the lock file defaults to ``<run_dir>.lock``,
        beside it.
        ``.run_dir(path)`` uses that directory instead (made if missing, in
        a directory that exists).
        """
        value: Path | Literal["auto"] = "auto" if path == "auto" else absolute(path)
        return self._with(run_dir=value)

    def prepare(
        self,
        command: str | Sequence[str] | Callable[[Path], object],
        *,
        inputs: Iterable[PathArg] = (),
        hardlinks: bool = False,
        fresh: bool = False,
    ) -> Self:
        """Prepare the daemon's state once; each run directory starts as a copy of it.

        ``command`` runs once (under a lock, as ``user()``, in ``cwd()``)
        with ``{run_dir}`` standing for the template directory it fills:
        ``initdb -D {run_dir}/data``, a Redis dataset. A function is called
        with that directory. Each instance's run directory (``run_dir()``,
        implied) starts as a copy, and keeps its data from start to start
        unless ``fresh``. When the command or a file in ``inputs`` changes,
        the preparation runs again and run directories are copied afresh at
        their next start. Preparing and copying are not counted against
        ``start_timeout``.

        Args:
            command: A str (through the shell), an argv, or a function.
            inputs: Files or directories the preparation reads.
            hardlinks: Copy by hard links: only for daemons that never
                write a file in place (Redis replaces its dump file; never
                PostgreSQL). Otherwise files are cloned where the filesystem
                can (Btrfs, XFS), else copied.
            fresh: Copy the template at every start (not at a restart): a
                test suite starts from the prepared state each session.
        """
        what: Command | Callable[[Path], object]
        if callable(command):
            what = command
        else:
            what = _options.command(self.name, "the preparation", command)
        paths = tuple(absolute(path) for path in inputs)
        preparation = Preparation(what, paths, bool(hardlinks), bool(fresh))
        run_dir = self.config.run_dir or "auto"
        return self._with(prepare=preparation, run_dir=run_dir)

    def instance(self, key: str) -> Self:
        """This description as a separate instance named ``key``: its own files, directory, port.

        Call it on a complete description whose files are defaults or under
        ``{run_dir}`` and whose port is chosen (``port()``): anything fixed
        would be shared by all instances.

        Raises:
            ValueError: Something fixed would be shared (the message says what).
        """
        if not isinstance(key, str) or not key.strip():
            msg = f"Daemon '{self.name}': instance() takes a non-empty str, not {key!r}"
            raise ValueError(msg)
        shared = _shared_by_instances(self.config)
        if shared:
            msg = (
                f"Daemon '{self.name}': instance {key!r} would share what {', '.join(shared)} "
                "fix with every other instance; put files under '{run_dir}/', and use "
                ".run_dir() and .port() without arguments"
            )
            raise ValueError(msg)
        return self._with(instance=key)

    def for_worker(self, worker: str | None = None) -> Self:
        """This daemon's instance for a pytest-xdist worker: its own port and run directory.

        Args:
            worker: The worker's id (``"gw0"``); ``None`` reads it from
                ``PYTEST_XDIST_WORKER``. Outside xdist (no worker, or the
                controller ``"master"``) the daemon itself is returned: one
                instance.
        """
        worker = os.environ.get(XDIST_WORKER) if worker is None else worker
        if not worker or worker == "master":
            return self
        return self.instance(worker)

    def read_port(self) -> int | None:
        """The port of the running daemon (see :meth:`port`), or ``None`` if it is not running."""
        return _actions.read_port(self._target())

    def expand(self, text: str) -> str:
        """``text`` with ``{port}`` and ``{run_dir}`` filled in as for the running daemon.

        Handy for what clients need: ``expand("postgresql://127.0.0.1:{port}/postgres")``.

        Raises:
            DaemonError: ``text`` uses ``{port}`` and the daemon is not running.
        """
        values: dict[str, str] = {}
        run_dir = self.resolved().config.run_dir
        if isinstance(run_dir, Path):
            values[RUN_DIR] = str(run_dir)
        if PORT in text:
            port = self.read_port()
            if port is None:
                msg = f"Daemon '{self.name}' is not running: its port is not known"
                raise DaemonError(self.name, msg)
            values[PORT] = str(port)
        return _templates.fill(text, values)
