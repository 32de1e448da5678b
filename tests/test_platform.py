"""The platform boundary: each platform module refuses to run on the other platform.

``_platform`` dispatches to ``_posix`` or ``_windows``; the other module must
refuse (``NotImplementedError``) rather than act, since a Windows code path
running on POSIX could signal a real process. Also the signal names and the
PIDs the platform layer never signals.
"""

from __future__ import annotations

import inspect
import signal
import sys

import pytest
from helpers import assert_not_signalled, sleeper, stop_process

from daemon_controller import _platform
from daemon_controller._platform import _posix, _windows

#: Every function the Windows module defines, found when the tests are collected.
_WINDOWS_FUNCTIONS = sorted(
    name
    for name, obj in inspect.getmembers(_windows, inspect.isfunction)
    if obj.__module__ == _windows.__name__ and not name.startswith("_")
)


def _windows_arguments(function, pid: int, fd: int) -> dict:
    """Harmless arguments by parameter name; a real process and file if it ever acted."""
    by_name = {
        "pid": pid,
        "signum": int(signal.SIGTERM),
        "value": "CTRL_BREAK_EVENT",
        "timeout": 0.1,
        "fd": fd,
        "handle": 0,
        "shared": True,
        "blocking": False,
        "group": False,
    }
    by_type = {"int": pid, "str": "nobody", "float": 0.1, "bool": False}
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in by_name:
            arguments[name] = by_name[name]
        elif parameter.default is not inspect.Parameter.empty:
            continue
        elif str(parameter.annotation) in by_type:  # a str: the module's annotations are lazy
            arguments[name] = by_type[str(parameter.annotation)]
        else:
            pytest.fail(f"no test argument for parameter {name!r} of {function.__name__}")
    return arguments


def test_windows_module_defines_every_platform_function():
    exported = {n for n in _platform.__all__ if inspect.isfunction(getattr(_platform, n))}
    assert exported
    assert exported <= set(_WINDOWS_FUNCTIONS)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the Windows module on POSIX")
@pytest.mark.parametrize("name", _WINDOWS_FUNCTIONS)
def test_windows_module_refuses_to_run_on_posix(test_id, tmp_path, name):
    # gem: n/a (POSIX only); a Windows code path running here could signal a real process.
    target = sleeper(test_id)
    function = getattr(_windows, name)
    with (tmp_path / "lockable").open("w+b") as f:
        try:
            with pytest.raises(NotImplementedError):
                function(**_windows_arguments(function, target.pid, f.fileno()))
            assert_not_signalled(target)
        finally:
            stop_process(target)


@pytest.mark.skipif(sys.platform != "win32", reason="Windows machine needed")
def test_posix_module_refuses_on_windows():  # pragma: win32 cover
    with pytest.raises(NotImplementedError):
        _posix.parse_signal("TERM")


@pytest.mark.parametrize("value", ["TERM", "SIGTERM", "term", 15])
def test_parse_signal_accepts_names_and_numbers(value):
    if sys.platform == "win32":
        pytest.skip("POSIX signal names")
    assert _platform.parse_signal(value) == 15


@pytest.mark.parametrize("pid", [0, 1, -1, -5])
def test_never_signals_pid_0_1_or_negative(pid):
    if sys.platform == "win32":
        pytest.skip("POSIX")
    with pytest.raises(ValueError, match="refusing"):
        _platform.send_signal(pid, 0)
    with pytest.raises(ValueError, match="refusing"):
        _platform.force_kill(pid)
