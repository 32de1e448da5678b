"""Everything that differs between operating systems, behind one interface.

Only this package looks at ``sys.platform`` (a check type checkers understand),
and only once: here, to choose the implementation. Both implementations
import everywhere; each tells the type checker which platform it is for.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from ._windows import (
        DEFAULT_STOP_SIGNAL,
        HAS_NOTIFY,
        PASSTHROUGH_LOG_PATHS,
        SHELL_HAS_EXEC,
        ExitHandle,
        FileWatch,
        NotifySocket,
        detach_kwargs,
        exit_handle,
        force_kill,
        give_to_user,
        group_alive,
        leads_group,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        unlock_fd,
        user_environment,
        wait_exit,
        watch_files,
    )
else:
    # POSIX; file events (inotify) and the notify socket live in modules of their own.
    from ._inotify import FileWatch, watch_files
    from ._notifysock import NotifySocket
    from ._posix import (
        DEFAULT_STOP_SIGNAL,
        HAS_NOTIFY,
        PASSTHROUGH_LOG_PATHS,
        SHELL_HAS_EXEC,
        ExitHandle,
        detach_kwargs,
        exit_handle,
        force_kill,
        give_to_user,
        group_alive,
        leads_group,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        unlock_fd,
        user_environment,
        wait_exit,
    )

__all__ = [
    "DEFAULT_STOP_SIGNAL",
    "HAS_NOTIFY",
    "PASSTHROUGH_LOG_PATHS",
    "SHELL_HAS_EXEC",
    "ExitHandle",
    "FileWatch",
    "NotifySocket",
    "detach_kwargs",
    "exit_handle",
    "force_kill",
    "give_to_user",
    "group_alive",
    "leads_group",
    "lock_fd",
    "parse_signal",
    "runtime_dir",
    "send_signal",
    "signal_name",
    "unlock_fd",
    "user_environment",
    "wait_exit",
    "watch_files",
]
