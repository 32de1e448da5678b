"""The exceptions: their hierarchy, their text, and their survival across pickling.

``DaemonError`` and its subclasses, the attributes a start or stop failure
carries (``identifier``, ``output``, ``log``, ``exit_status``, ``signal``,
``pid``, ``timeout``), the gem's summary in parentheses in ``str()``, and
pickling, both directly and through ``multiprocessing`` (a real failing start
in a pool worker, received in the parent: this is what ``multiprocessing``
users do, so these tests use it rather than the ``helpers.Child`` harness).
"""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
from echo_server import echo_command
from helpers import MARKER, free_port

from daemon_controller import (
    AlreadyStarted,
    ConnectError,
    Daemon,
    DaemonError,
    StartError,
    StartTimeout,
    StopError,
    StopTimeout,
)

NAME = "Echo test server"
ATTRIBUTES = (
    "identifier",
    "message",
    "output",
    "log",
    "exit_status",
    "signal",
    "pid",
    "timeout",
    "reason",
)

# -- hierarchy ---------------------------------------------------------------------------


def test_start_timeout_is_a_start_error_and_a_timeout_error():
    assert issubclass(StartTimeout, StartError)
    assert issubclass(StartTimeout, TimeoutError)
    err = StartTimeout(NAME, "too slow", timeout=2)
    with pytest.raises(StartError):
        raise err
    with pytest.raises(TimeoutError):
        raise err


def test_stop_timeout_is_a_stop_error_and_a_timeout_error():
    assert issubclass(StopTimeout, StopError)
    assert issubclass(StopTimeout, TimeoutError)
    err = StopTimeout(NAME, "too slow", timeout=2)
    with pytest.raises(StopError):
        raise err
    with pytest.raises(TimeoutError):
        raise err


@pytest.mark.parametrize(
    "cls",
    [AlreadyStarted, ConnectError, StartError, StartTimeout, StopError, StopTimeout],
)
def test_every_error_is_a_daemon_error(cls):
    assert issubclass(cls, DaemonError)
    assert issubclass(cls, Exception)


def test_plain_errors_are_not_timeouts():
    for cls in (DaemonError, AlreadyStarted, ConnectError, StartError, StopError):
        assert not issubclass(cls, TimeoutError), cls
    assert not issubclass(StartError, StopError)
    assert not issubclass(StopError, StartError)


# -- str() -------------------------------------------------------------------------------


def test_str_with_output_and_exit_status():
    err = StartError(
        NAME,
        f"Daemon '{NAME}' failed to start.",
        output="hello world\n",
        log="",
        exit_status=1,
    )
    text = str(err)
    assert text.splitlines()[0] == f"Daemon '{NAME}' failed to start."
    assert "hello world\n(exited with status 1)" in text
    assert "logs empty" not in text


def test_str_no_output_empty_log():
    err = StartError(NAME, f"Daemon '{NAME}' failed to start.", output="", log="", exit_status=1)
    text = str(err)
    assert NAME in text.splitlines()[0]
    assert "(logs empty; exited with status 1)" in text


def test_str_log_not_available():
    err = StartError(NAME, f"Daemon '{NAME}' failed to start.", output=None, log=None)
    text = str(err)
    assert NAME in text.splitlines()[0]
    assert "(logs not available)" in text


def test_str_start_timeout_with_empty_log():
    err = StartTimeout(NAME, f"Daemon '{NAME}' did not start.", timeout=5, output="", log="")
    text = str(err)
    assert NAME in text.splitlines()[0]
    assert "(logs empty; timed out)" in text


def test_str_terminated_by_signal():
    err = StartError(
        NAME,
        f"Daemon '{NAME}' failed to start.",
        output="dumping core\n",
        log="",
        signal="SIGXCPU",
    )
    text = str(err)
    assert NAME in text.splitlines()[0]
    assert "dumping core\n(terminated with signal SIGXCPU)" in text
    assert "exited with status" not in text


def test_str_with_new_log_lines():
    err = StopError(
        NAME,
        f"Daemon '{NAME}' could not be stopped.",
        output="",
        log="[echo] line one\n[echo] line two\n",
        exit_status=2,
    )
    text = str(err)
    assert "[echo] line one\n[echo] line two\n(exited with status 2)" in text


def test_str_of_already_started_and_connect_error_names_the_daemon():
    assert NAME in str(AlreadyStarted(NAME, 4321))
    assert "4321" in str(AlreadyStarted(NAME, 4321))
    assert AlreadyStarted(NAME, 4321).pid == 4321
    assert str(ConnectError(NAME, f"Daemon '{NAME}' cannot be reached")) == (
        f"Daemon '{NAME}' cannot be reached"
    )


# -- pickling ----------------------------------------------------------------------------


def _all_errors() -> list[DaemonError]:
    return [
        DaemonError(NAME, "plain"),
        AlreadyStarted(NAME, 4242),
        ConnectError(NAME, f"Daemon '{NAME}' is running but cannot be connected to"),
        StartError(
            NAME,
            f"Daemon '{NAME}' failed to start.",
            output="hello world\n",
            log="[echo] bad config\n",
            exit_status=1,
            pid=None,
        ),
        StartError(NAME, "killed", output=None, log=None, signal="SIGXCPU", pid=77),
        StartTimeout(NAME, "too slow", timeout=2.5, output="", log="", pid=99, reason="timed out"),
        StopError(NAME, "stop command failed", output="nope\n", exit_status=3, pid=12),
        StopTimeout(NAME, "killed after stop timeout", timeout=1.0, pid=13),
    ]


def _attrs(err: BaseException) -> dict[str, object]:
    return {name: getattr(err, name, "<absent>") for name in ATTRIBUTES}


@pytest.mark.parametrize("err", _all_errors(), ids=lambda e: type(e).__name__)
def test_pickle_round_trip(err):
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert _attrs(copy) == _attrs(err)
    assert str(copy) == str(err)
    assert copy.args == err.args


def _send_errors(queue) -> None:
    for err in _all_errors():
        queue.put(err)


def test_errors_cross_a_multiprocessing_queue():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_send_errors, args=(queue,))
    proc.start()
    try:
        received = [queue.get(timeout=60) for _ in _all_errors()]
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
        queue.close()
        queue.join_thread()
    assert proc.exitcode == 0
    for got, want in zip(received, _all_errors(), strict=True):
        assert type(got) is type(want)
        assert _attrs(got) == _attrs(want)
        assert str(got) == str(want)


def _failing_start(tmp: str, port: int, test_id: str) -> None:
    directory = Path(tmp)
    command = echo_command(
        "--port",
        str(port),
        "--pid-file",
        str(directory / "echo.pid"),
        "--log-file",
        str(directory / "echo.log"),
        "--before-daemonize-message",
        "hello world",
        "--exit-before-daemonize",
        "3",
    )
    (
        Daemon(NAME)
        .start_with(command)
        .ping_tcp("127.0.0.1", port)
        .pid(directory / "echo.pid")
        .log(directory / "echo.log")
        .start_timeout(15)
        .env({MARKER: test_id})
        .start()
    )


def test_real_start_error_raised_in_a_pool_worker_reaches_the_parent(tmp_path, test_id):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_failing_start, (str(tmp_path), free_port(), test_id))
        with pytest.raises(StartError) as info:
            result.get(timeout=60)
    err = info.value
    assert type(err) is StartError
    assert err.identifier == NAME
    assert err.exit_status == 3
    assert err.signal is None
    assert "hello world" in err.output
    assert err.log == ""
    text = str(err)
    assert NAME in text.splitlines()[0]
    assert "failing before daemonizing\n(exited with status 3)" in text
    assert not (tmp_path / "echo.pid").exists()
