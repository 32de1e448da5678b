"""A daemon's run directory: made private, or started as a copy of a prepared template.

A daemon with ``run_dir()`` gets its directory made (0700, belonging to the
user its commands run as) before its start. With ``prepare()``, the
preparation (``initdb`` plus a schema, a dataset) runs once, under a lock of
its own, into a template directory named after a fingerprint of its inputs
(the command, the files it names, the user it runs as); every instance's run
directory starts as a copy of that template, so four test workers do not run
``initdb`` four times. Changing an input makes a new fingerprint, hence a new
template, and run directories copied from the old one are copied afresh at
their next start (their data is replaced: the inputs said so).

The copy clones files where the filesystem shares blocks (Btrfs, XFS), hard
links them when the daemon was declared never to write a file in place, and
copies the bytes otherwise. A run directory is replaced only while its
daemon is stopped (the caller holds the daemon's lock) and only if the
library made it: one it did not make and that is not empty is left alone,
with an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from . import _commands, _lock, _platform
from ._errors import StartError, hide_frames
from ._files import atomic_write
from ._options import RUN_DIR, command_text

if TYPE_CHECKING:
    import hashlib

    from ._options import DaemonConfig, Preparation, Target

#: pytest shows our errors without our frames (see ``_errors.hide_frames``).
__tracebackhide__ = hide_frames

_OPEN_SOURCE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_COPY = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 1 << 20


def _token() -> str:
    """A suffix for a temporary name beside the real one."""
    return os.urandom(4).hex()


def _remove_tree(path: Path) -> None:
    import shutil  # noqa: PLC0415 - import time is benchmarked; only prepare() needs it

    shutil.rmtree(path, ignore_errors=True)


# -- fingerprints -------------------------------------------------------------------------


def _hash_input(digest: hashlib._Hash, path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(str(child.relative_to(path)).encode() + b"\0")
                digest.update(child.read_bytes())
        return
    try:
        digest.update(path.read_bytes())
    except OSError as err:  # a missing input is part of the state too
        digest.update(f"unreadable: {err.strerror}".encode())


def fingerprint(preparation: Preparation, user: str | None) -> str:
    """What the template depends on: the command, the inputs' contents, the user.

    A function as command counts by its module, name and compiled body.
    """
    import hashlib  # noqa: PLC0415 - import time is benchmarked; only starts with prepare() need it

    digest = hashlib.sha256()
    command = preparation.command
    if callable(command):
        code = getattr(command, "__code__", None)
        name = f"{getattr(command, '__module__', '')}.{getattr(command, '__qualname__', '')}"
        digest.update(name.encode())
        if code is not None:
            digest.update(code.co_code + repr(code.co_consts).encode())
    else:
        digest.update(repr(command).encode())
    digest.update(f"\0user={user}\0".encode())
    for path in preparation.inputs:
        digest.update(str(path).encode() + b"\0")
        _hash_input(digest, path)
    return digest.hexdigest()[:16]


# -- copies -------------------------------------------------------------------------------


class _Copier:
    """How files are copied; each way is given up after the filesystem refuses it once."""

    __slots__ = ("clone", "link")

    def __init__(self, *, link: bool) -> None:
        self.link = link
        self.clone = True

    def file(self, source: str, target: str, info: os.stat_result) -> None:
        if self.link:
            try:
                os.link(source, target)  # a regular file: no symlink to follow
            except OSError:
                self.link = False  # another filesystem, or links not allowed: copy
            else:
                return
        src = os.open(source, _OPEN_SOURCE)
        try:
            dst = os.open(target, _OPEN_COPY, 0o600)
            try:
                if not (self.clone and _platform.clone_file(src, dst)):
                    self.clone = False
                    _copy_bytes(src, dst, info.st_size)
                if hasattr(os, "fchmod"):
                    os.fchmod(dst, stat.S_IMODE(info.st_mode))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        _platform.keep_owner(target, info)

    def tree(self, source: str, target: str) -> None:
        """Copy the contents of directory ``source`` into the existing ``target``.

        On str paths with ``os`` calls: a PostgreSQL template has about a
        thousand files, and every microsecond per file is a millisecond.
        """
        with os.scandir(source) as entries:
            for entry in entries:
                into = os.path.join(target, entry.name)  # noqa: PTH118 - see above
                info = entry.stat(follow_symlinks=False)
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), into)  # noqa: PTH115, PTH211 - see above
                    _platform.keep_owner(into, info)
                elif entry.is_dir(follow_symlinks=False):
                    os.mkdir(into, 0o700)  # noqa: PTH102 - see above
                    self.tree(entry.path, into)
                    os.chmod(into, stat.S_IMODE(info.st_mode))  # noqa: PTH101 - see above
                    _platform.keep_owner(into, info)
                elif entry.is_file(follow_symlinks=False):
                    self.file(entry.path, into, info)
                # Sockets, FIFOs and devices are not copied: a daemon makes them anew.


def _copy_bytes(source: int, target: int, size: int) -> None:
    """Copy ``source`` to ``target``: ``size`` bytes, or more if it grew meanwhile."""
    copy_range = getattr(os, "copy_file_range", None)  # in the kernel, no trip through us
    left = size
    while True:
        if copy_range is not None:
            try:
                copied = copy_range(source, target, max(left, _CHUNK))
            except OSError:
                copy_range = None  # not for these files: read and write
            else:
                left -= copied
                if copied == 0 or left == 0:
                    return
                continue
        chunk = os.read(source, _CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]


def copy_tree(source: Path, target: Path, *, hardlinks: bool = False) -> None:
    """Copy the directory ``source`` to ``target`` (which must not exist), 0700.

    Modes are kept; as root, owners too. Files are cloned where the
    filesystem can, hard-linked with ``hardlinks`` (falling back to a copy
    across filesystems), copied otherwise.
    """
    target.mkdir(mode=0o700)
    try:
        _Copier(link=hardlinks).tree(str(source), str(target))
        _platform.keep_owner(str(target), os.lstat(source))
    except BaseException:
        _remove_tree(target)
        raise


# -- the template -------------------------------------------------------------------------


def _base(name: str, preparation: Preparation) -> Path:
    base = preparation.template
    if base is None:  # pragma: no cover - Daemon.resolved() fills it in
        msg = f"Daemon '{name}': its preparation has no template directory"
        raise ValueError(msg)
    return base


def _template_lock(base: Path) -> Path:
    return base.with_name(f"{base.name}.lock")


def _prepare_into(name: str, config: DaemonConfig, preparation: Preparation, where: Path) -> None:
    """Run the preparation with ``{run_dir}`` standing for ``where``."""
    command = preparation.command
    if callable(command):
        command(where)
        return
    if isinstance(command, str):
        filled: str | tuple[str, ...] = command.replace(RUN_DIR, str(where))
    else:
        filled = tuple(part.replace(RUN_DIR, str(where)) for part in command)
    run_dir = config.run_dir
    cwd = config.cwd
    if isinstance(run_dir, Path) and cwd is not None and cwd.is_relative_to(run_dir):
        cwd = where  # the run directory is made from this template: it does not exist yet
    config.logger.info("Preparing daemon '%s': %s", name, command_text(filled))
    result = _commands.run(dataclasses.replace(config, cwd=cwd), filled, None)
    if result.returncode != 0:
        status, signame = (None, None)
        if result.returncode is not None:
            status, signame = _commands.describe_exit(result.returncode)
        msg = f"Daemon '{name}' failed to start: its preparation failed: {command_text(filled)}"
        raise StartError(name, msg, output=result.output, exit_status=status, signal=signame)


def template(name: str, config: DaemonConfig, preparation: Preparation, prints: str) -> Path:
    """The prepared template for fingerprint ``prints``, preparing it first if needed.

    Prepared at most once: under an exclusive lock, into a temporary
    directory renamed into place when complete. Templates of other
    fingerprints are removed then (no copy from them can be running: copies
    hold the lock shared).

    Raises:
        StartError: The preparation failed (its output is in the error).
    """
    base = _base(name, preparation)
    ready = base.with_name(f"{base.name}-{prints}")
    if ready.is_dir():
        return ready
    held = _lock.acquire(_template_lock(base), name, shared=False)
    assert held is not None  # noqa: S101 - a blocking acquire holds it
    try:
        if ready.is_dir():
            return ready  # prepared by whoever held the lock before us
        # Other fingerprints' templates, and what a preparation killed midway left.
        for pattern in (f"{base.name}-*", f"{base.name}.partial-*"):
            for old in base.parent.glob(pattern):
                if old.is_dir() and not old.is_symlink():
                    _remove_tree(old)
        partial = base.with_name(f"{base.name}.partial-{_token()}")
        partial.mkdir(mode=0o700)
        try:
            _platform.give(partial, _platform.user_ids(config.user))
            _prepare_into(name, config, preparation, partial)
            partial.rename(ready)
        except BaseException:
            _remove_tree(partial)
            raise
    finally:
        held.release()
    return ready


# -- the run directory --------------------------------------------------------------------


def _copy_template(
    name: str, config: DaemonConfig, preparation: Preparation, prints: str, into: Path
) -> None:
    """Copy the template for ``prints`` to ``into``, preparing it first if needed.

    The copy holds the template lock shared, so no preparation of other
    inputs removes the template meanwhile; one that did so just before is
    noticed, and the template prepared again.
    """
    lock = _template_lock(_base(name, preparation))
    while True:
        source = template(name, config, preparation, prints)
        held = _lock.acquire(lock, name, shared=True)
        try:
            if source.is_dir():
                config.logger.info("Daemon '%s': run directory copied from %s", name, source)
                copy_tree(source, into, hardlinks=preparation.hardlinks)
                return
        finally:
            if held is not None:
                held.release()


def _read_marker(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 256:  # noqa: PLR2004 - a fingerprint and a newline
            return path.read_text(encoding="ascii").strip()
    return None


def make_private(path: Path, user: str | None) -> None:
    """Create ``path`` (and missing parents) 0700, belonging to ``user`` when we are root."""
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        _platform.give(path, _platform.user_ids(user))


def populate(target: Target, *, restart: bool = False) -> None:
    """Make the run directory ready for a start; the caller holds the daemon's lock.

    Without a preparation: the directory exists. With one: it is a copy of
    the current template (copied now unless it already was, and unless the
    preparation wants a ``fresh`` copy at each start that is not a ``restart``).

    Raises:
        StartError: The preparation failed, or the run directory holds
            something the library did not put there.
    """
    config = target.config
    run_dir, preparation = config.run_dir, config.prepare
    if not isinstance(run_dir, Path):  # pragma: no cover - Daemon.resolved() makes it a path
        return
    if preparation is None:
        make_private(run_dir, config.user)
        return
    prints = fingerprint(preparation, config.user)
    marker = target.files.prepared
    made_by_us = _read_marker(marker)
    if made_by_us == prints and run_dir.is_dir() and (restart or not preparation.fresh):
        return
    if made_by_us is None and run_dir.is_dir() and any(run_dir.iterdir()):
        msg = (
            f"Daemon '{target.name}' cannot be started: its run directory {str(run_dir)!r} "
            "was not copied from its prepared template and is not empty. Remove it, and "
            "the next start copies the template there."
        )
        raise StartError(target.name, msg, ran=False)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{run_dir.name}.new-*", f".{run_dir.name}.old-*"):
        for leftover in run_dir.parent.glob(pattern):  # of a copy interrupted midway
            _remove_tree(leftover)
    fresh = run_dir.with_name(f".{run_dir.name}.new-{_token()}")
    _copy_template(target.name, config, preparation, prints, fresh)
    old = run_dir.with_name(f".{run_dir.name}.old-{_token()}")
    if run_dir.is_dir():
        run_dir.rename(old)
    fresh.rename(run_dir)
    atomic_write(marker, f"{prints}\n".encode())
    _remove_tree(old)
