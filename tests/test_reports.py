"""What a failed daemon start looks like in a pytest report.

The report shows the test's own line and the ``StartError`` with the daemon's
own output, named ``daemon_controller.StartError``, without the library's
internal frames (``--full-trace`` still shows them). A bug of ours — any other
exception — keeps every frame.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

pytest_plugins = ["pytester"]


def _suite(code: str) -> str:
    return textwrap.dedent(
        """
        import sys
        from daemon_controller import Daemon

        def broken(tmp_path):
            return (
                Daemon("reported")
                .start_with([sys.executable, "-c",
                             "import sys; print('bad directive on line 3', file=sys.stderr);"
                             " sys.exit(1)"])
                .ping_tcp("127.0.0.1", 9)
                .pid(tmp_path / "d.pid")
                .log(tmp_path / "d.log")
            )
        """
    ) + textwrap.dedent(code)


def test_a_failed_start_is_reported_without_library_frames(pytester: pytest.Pytester):
    pytester.makepyfile(
        _suite(
            """
            def test_uses_the_daemon(tmp_path):
                broken(tmp_path).start()
            """
        )
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "daemon_controller.StartError" in text
    assert "bad directive on line 3" in text
    assert "broken(tmp_path).start()" in text
    for internal in ("_start.py", "_actions.py", "poll_until", "_daemon.py"):
        assert internal not in text, internal


def test_full_trace_still_shows_the_library_frames(pytester: pytest.Pytester):
    pytester.makepyfile(
        _suite(
            """
            def test_uses_the_daemon(tmp_path):
                broken(tmp_path).start()
            """
        )
    )
    result = pytester.runpytest("-p", "no:randomly", "--full-trace")
    result.assert_outcomes(failed=1)
    assert "_start.py" in result.stdout.str()


def test_a_bug_of_ours_keeps_its_frames(pytester: pytest.Pytester):
    # An exception raised through the library that is not one of our errors
    # (here from a before_start hook) is shown with every frame.
    pytester.makepyfile(
        """
        from daemon_controller import Daemon

        def test_bad_hook(tmp_path):
            daemon = (
                Daemon("buggy")
                .start_with(["true"])
                .ping_tcp("127.0.0.1", 9)
                .before_start(lambda: 1 / 0)
                .pid(tmp_path / "d.pid")
                .log(tmp_path / "d.log")
            )
            daemon.start()
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert "ZeroDivisionError" in result.stdout.str()
    assert "_actions.py" in result.stdout.str()


def test_exceptions_name_the_public_module():
    import pickle  # noqa: PLC0415 - only here

    from daemon_controller import StartError, StartTimeout  # noqa: PLC0415 - only here

    assert StartError.__module__ == "daemon_controller"
    assert repr(StartError).endswith("daemon_controller.StartError'>")
    err = StartTimeout("x", "it timed out", timeout=2.0, output="out", log="log")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is StartTimeout
    assert (again.timeout, again.output, again.log) == (2.0, "out", "log")
