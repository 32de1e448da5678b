"""The platform boundary: the implementation for this OS is chosen once, and only it runs.

``_platform`` re-exports ``_posix`` (with its pieces in ``_inotify`` and
``_notifysock``) or ``_windows``; nothing else imports either
(``test_architecture.py``), so a Windows code path, which could signal a real
process here, is never reached on POSIX. Also the signal names and the
PIDs the platform layer never signals.
"""

from __future__ import annotations

import inspect
import sys

import pytest

from daemon_controller import _platform
from daemon_controller._platform import _windows

#: Every function the Windows module defines, found when the tests are collected.
_WINDOWS_FUNCTIONS = sorted(
    name
    for name, obj in inspect.getmembers(_windows, inspect.isfunction)
    if obj.__module__ == _windows.__name__ and not name.startswith("_")
)


def test_windows_module_defines_every_platform_function():
    exported = {n for n in _platform.__all__ if inspect.isfunction(getattr(_platform, n))}
    assert exported
    assert exported <= set(_WINDOWS_FUNCTIONS)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the Windows module on POSIX")
@pytest.mark.parametrize("name", _WINDOWS_FUNCTIONS)
def test_no_windows_function_is_reachable_on_posix(name):
    # gem: n/a (POSIX only); a Windows code path running here could signal a real
    # process. The implementation is chosen once, in _platform/__init__, and
    # no other module imports _windows (tests/test_architecture.py).
    exported = getattr(_platform, name, None)
    assert exported is None or exported is not getattr(_windows, name)
    if exported is not None:
        posix = {
            f"daemon_controller._platform.{m}"
            for m in ("_posix", "_posix_users", "_inotify", "_notifysock")
        }
        assert exported.__module__ in posix


@pytest.mark.skipif(sys.platform != "win32", reason="Windows machine needed")
def test_the_windows_implementation_is_chosen_on_windows():  # pragma: win32 cover
    assert _platform.parse_signal is _windows.parse_signal


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
