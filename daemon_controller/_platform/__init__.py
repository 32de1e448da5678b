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
        PASSTHROUGH_LOG_PATHS,
        SHELL_HAS_EXEC,
        ExitHandle,
        clone_file,
        detach_kwargs,
        exit_handle,
        force_kill,
        give,
        group_alive,
        keep_owner,
        leads_group,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        unlock_fd,
        user_environment,
        user_ids,
        user_runtime_dir,
        wait_exit,
    )
else:
    from ._posix import (
        DEFAULT_STOP_SIGNAL,
        PASSTHROUGH_LOG_PATHS,
        SHELL_HAS_EXEC,
        ExitHandle,
        clone_file,
        detach_kwargs,
        exit_handle,
        force_kill,
        give,
        group_alive,
        keep_owner,
        leads_group,
        lock_fd,
        parse_signal,
        runtime_dir,
        send_signal,
        signal_name,
        unlock_fd,
        user_environment,
        user_ids,
        user_runtime_dir,
        wait_exit,
    )

__all__ = [
    "DEFAULT_STOP_SIGNAL",
    "PASSTHROUGH_LOG_PATHS",
    "SHELL_HAS_EXEC",
    "ExitHandle",
    "clone_file",
    "detach_kwargs",
    "exit_handle",
    "force_kill",
    "give",
    "group_alive",
    "keep_owner",
    "leads_group",
    "lock_fd",
    "parse_signal",
    "runtime_dir",
    "send_signal",
    "signal_name",
    "unlock_fd",
    "user_environment",
    "user_ids",
    "user_runtime_dir",
    "wait_exit",
]
