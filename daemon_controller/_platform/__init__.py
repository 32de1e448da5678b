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
        UNIX_PATH_MAX,
        ExitHandle,
        FileWatch,
        NotifySocket,
        boot_id,
        clone_file,
        detach_kwargs,
        exit_handle,
        files_as,
        force_kill,
        give,
        group_alive,
        keep_owner,
        last_pid,
        leads_group,
        leads_session,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        start_stamp,
        unlock_fd,
        user_environment,
        user_ids,
        user_runtime_dir,
        wait_exit,
        watch_files,
    )
else:
    # POSIX; file events (inotify), the notify socket and another user's files
    # live in modules of their own.
    from ._inotify import FileWatch, watch_files
    from ._notifysock import NotifySocket
    from ._posix import (
        DEFAULT_STOP_SIGNAL,
        HAS_NOTIFY,
        PASSTHROUGH_LOG_PATHS,
        SHELL_HAS_EXEC,
        UNIX_PATH_MAX,
        ExitHandle,
        boot_id,
        detach_kwargs,
        exit_handle,
        force_kill,
        group_alive,
        last_pid,
        leads_group,
        leads_session,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        start_stamp,
        unlock_fd,
        wait_exit,
    )
    from ._posix_users import (
        clone_file,
        files_as,
        give,
        keep_owner,
        user_environment,
        user_ids,
        user_runtime_dir,
    )

__all__ = [
    "DEFAULT_STOP_SIGNAL",
    "HAS_NOTIFY",
    "PASSTHROUGH_LOG_PATHS",
    "SHELL_HAS_EXEC",
    "UNIX_PATH_MAX",
    "ExitHandle",
    "FileWatch",
    "NotifySocket",
    "boot_id",
    "clone_file",
    "detach_kwargs",
    "exit_handle",
    "files_as",
    "force_kill",
    "give",
    "group_alive",
    "keep_owner",
    "last_pid",
    "leads_group",
    "leads_session",
    "lock_fd",
    "parse_signal",
    "runtime_dir",
    "send_signal",
    "signal_name",
    "start_stamp",
    "unlock_fd",
    "user_environment",
    "user_ids",
    "user_runtime_dir",
    "wait_exit",
    "watch_files",
]
