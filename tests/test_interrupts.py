"""Ctrl-C at the worst moment, twice, and a controller killed half-way through a start.

* An interrupt landing inside the lazy ``import tenacity`` of the first wait
  does not break the library for the rest of the process.
* A second Ctrl-C during the abort of an interrupted start does not cut the
  abort short: the daemon is stopped (SIGKILL at once, since somebody is in a
  hurry), then ``KeyboardInterrupt`` is raised.
* ``KeyboardInterrupt`` injected at every line of the lock and lease code
  (with ``sys.settrace``, in a child process) never leaves a lock or a lease
  held once it has been handled.
* A controller SIGKILLed between spawning a foreground program and writing
  its PID file leaves no untracked daemon: the next ``stop()`` or ``start()``
  stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adversary import finish, posix_only, script
from echo_server import echo_command, free_port
from helpers import MARKER, gone, marked, wait_until

from daemon_controller import Daemon

TESTS = Path(__file__).resolve().parent
#: A child interpreter sees the package we see, and the test helpers.
CHILD = {
    "cwd": TESTS,
    "env": {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
}


def run_child(code: str, *args: str, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter that sees this package and the test helpers."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        **CHILD,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- an interrupted import --------------------------------------------------------------------

_INTERRUPTED_IMPORT = """
import json, sys
from daemon_controller._waiting import Deadline, poll_until

before = set(sys.modules)


def as_in_a_fresh_process():
    for name in set(sys.modules) - before:
        del sys.modules[name]


def first_wait():
    return poll_until(lambda: True, deadline=Deadline(5), max_interval=0.01)


def counted(frame):
    # Lines of the import machinery itself are left out: an interrupt there is
    # the interpreter's business. Everything the import runs counts.
    return not frame.f_code.co_filename.startswith("<frozen importlib")


lines = 0
def count(frame, event, arg):
    global lines
    lines += event == "line" and counted(frame)
    return count
sys.settrace(count)
first_wait()
sys.settrace(None)

tries, broken = int(sys.argv[1]), []
for target in range(1, lines + 1, max(1, lines // tries)):
    as_in_a_fresh_process()
    seen = 0
    def interrupt(frame, event, arg):
        global seen
        if event == "line" and counted(frame):
            seen += 1
            if seen == target:
                raise KeyboardInterrupt
        return interrupt
    sys.settrace(interrupt)
    try:
        first_wait()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    try:
        assert first_wait() is True and first_wait() is True
    except BaseException as err:
        broken.append(f"line {target}: {err!r}")
print(json.dumps({"lines": lines, "broken": broken}))
"""


def test_interrupt_during_the_first_waits_import_does_not_break_later_waits():
    out = run_child(_INTERRUPTED_IMPORT, "40")
    assert out["lines"] > 1000  # the import ran, and was interrupted all over
    assert out["broken"] == []


# -- a second Ctrl-C during the abort ---------------------------------------------------------

_STUBBORN = """
import os, signal, sys, time
flags, daemonize = sys.argv[1], sys.argv[2] == "daemonize"
if daemonize:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
def on_term(signum, frame):
    with open(os.path.join(flags, "term"), "a") as f:
        f.write("TERM\\n")
signal.signal(signal.SIGTERM, on_term)  # noted, and ignored
with open(os.path.join(flags, "started"), "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(0.05)  # never listens
"""

_START_AND_BE_INTERRUPTED = """
import json, sys
from daemon_controller import Daemon
program, flags, mode, pid_file, log_file, port, test_id = sys.argv[1:8]
daemon = (
    Daemon("stubborn")
    .start_with([sys.executable, program, flags, mode])
    .ping_tcp("127.0.0.1", int(port))
    .pid(pid_file)
    .log(log_file)
    .start_timeout(60)
    .start_abort_timeout(60)
    .env({"DC_TEST_ID": test_id})
)
if mode == "foreground":
    daemon = daemon.foreground()
try:
    daemon.start()
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True, "running": daemon.is_running()}))
"""


@posix_only
@pytest.mark.parametrize("mode", ["foreground", "daemonize"])
def test_second_ctrl_c_does_not_cut_the_abort_short(tmp_path, test_id, mode):
    program = script(tmp_path, "stubborn.py", _STUBBORN)
    flags = tmp_path / "flags"
    flags.mkdir()
    pid_file, log_file = tmp_path / "d.pid", tmp_path / "d.log"
    controller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _START_AND_BE_INTERRUPTED,
            str(program),
            str(flags),
            mode,
            str(pid_file),
            str(log_file),
            str(free_port()),
            test_id,
        ],
        **CHILD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    daemon_pid = None
    try:
        assert wait_until((flags / "started").exists, timeout=20)
        daemon_pid = int((flags / "started").read_text())
        controller.send_signal(signal.SIGINT)  # Ctrl-C: the abort begins with SIGTERM...
        assert wait_until((flags / "term").exists, timeout=20)
        controller.send_signal(signal.SIGINT)  # ...which the daemon ignores: Ctrl-C again
        began = time.monotonic()
        out, err = controller.communicate(timeout=20)
        assert time.monotonic() - began < 6  # SIGKILL followed at once, not after 60 s
        assert json.loads(out) == {"interrupted": True, "running": False}, err
        assert wait_until(lambda: gone(daemon_pid), timeout=5)
        assert not pid_file.exists()
        assert marked(test_id) == []
    finally:
        finish(controller)
        for pid in [*marked(test_id), *([daemon_pid] if daemon_pid else [])]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# -- an interrupt at every line of the lock and lease code -----------------------------------

_EVERY_LINE = """
import fcntl, json, os, sys
from pathlib import Path
from daemon_controller import Daemon, _lock, _ownership, _scoped

base, test_id = Path(sys.argv[1]), sys.argv[2]
flag = base / "up"
daemon = (
    Daemon("locks")
    .start_with(["sh", "-c", f"touch {flag} && exec sleep 60"])
    .foreground()
    .ping(flag.exists)
    .pid(base / "d.pid")
    .log(base / "d.log")
    .stop_timeout(5)
    .env({"DC_TEST_ID": test_id})
)
files = daemon._target().files
TRACED = {
    getattr(owner, name).__code__
    for owner, names in (
        (_lock, ("_open", "_cached_fd", "_make_room", "acquire")),
        (_lock.Held, ("release",)),
        (_lock.locked, ("__enter__", "enter", "_release", "__exit__")),
        (_ownership, ("lease", "last_out")),
        (_scoped.Running, ("__enter__", "_enter_locked", "__exit__", "_leave", "settle")),
    )
    for name in names
    if hasattr(owner, name)
}


def finalizing(frame):
    # An interrupt inside __del__ is swallowed by the interpreter ("Exception
    # ignored in"): that is where a lock dropped without release() is released,
    # and no caller could see an interrupt there.
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def held(path):
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def block():
    with daemon.running():
        pass


def start_stop():
    daemon.start()
    daemon.stop()


def query():
    daemon.is_running()


def clean_up():
    daemon.stop()
    if flag.exists():
        flag.unlink()


leaks, tries = [], 0
for scenario in (block, start_stop, query):
    target = 0
    while True:
        target += 1
        seen = 0
        def interrupt(frame, event, arg):
            global seen
            if frame.f_code in TRACED and not finalizing(frame):
                if event == "line":
                    seen += 1
                    if seen == target:
                        raise KeyboardInterrupt
                return interrupt
            return interrupt if event == "call" else None
        sys.settrace(interrupt)
        try:
            scenario()
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        # The interrupt has been handled here; nothing may be held any more.
        tries += interrupted
        where = f"{scenario.__name__}, line {target}"
        for path in (files.lock, files.users):
            if held(path):
                leaks.append(f"{where}: {path.name} still locked")
        if _lock.held():
            leaks.append(f"{where}: this thread believes it holds {_lock.held()}")
        clean_up()
        if not interrupted:
            break
print(json.dumps({"tries": tries, "leaks": leaks}))
"""


@posix_only
def test_interrupt_at_any_line_of_the_lock_and_lease_code_leaves_nothing_held(tmp_path, test_id):
    out = run_child(_EVERY_LINE, str(tmp_path), test_id, timeout=110)
    assert out["tries"] > 50
    assert out["leaks"] == []
    assert marked(test_id) == []


# -- a controller killed between the spawn and the PID file ----------------------------------

_START_AND_HANG = """
import sys
from daemon_controller import Daemon
from echo_server import echo_command
port, pid_file, log_file, test_id = sys.argv[1:5]
(
    Daemon("listener")
    .start_with(echo_command("--foreground", "--port", port))
    .foreground()
    .ping_command("false")  # never ready: the PID file is never written
    .pid(pid_file)
    .log(log_file)
    .start_timeout(60)
    .env({"DC_TEST_ID": test_id})
    .start()
)
"""


@posix_only
@pytest.mark.parametrize("then", ["stop", "start"])
def test_controller_killed_before_the_pid_file_leaves_no_untracked_daemon(
    tmp_path, test_id, port, then
):
    pid_file, log_file = tmp_path / "d.pid", tmp_path / "d.log"
    controller = subprocess.Popen(
        [sys.executable, "-c", _START_AND_HANG, str(port), str(pid_file), str(log_file), test_id],
        **CHILD,
    )
    daemon = (
        Daemon("listener")
        .start_with(echo_command("--foreground", "--port", str(port)))
        .foreground()
        .ping_tcp("127.0.0.1", port)
        .pid(pid_file)
        .log(log_file)
        .stop_timeout(5)
        .start_abort_timeout(5)
        .env({MARKER: test_id})
    )
    try:
        assert wait_until(lambda: daemon.config.ping.check(0.1), timeout=20)  # listening
        orphan = marked(test_id)
        assert len(orphan) == 1
        controller.kill()  # between the spawn and the PID file
        controller.wait(timeout=10)
        assert not pid_file.exists()
        assert daemon.is_running() is False
        if then == "stop":
            daemon.stop()
            assert wait_until(lambda: gone(orphan[0]), timeout=5)
        else:
            daemon.start()
            new = daemon.read_pid()
            assert new is not None
            assert new != orphan[0]
            assert gone(orphan[0])
            daemon.stop()
        assert marked(test_id) == []
    finally:
        finish(controller)
        for pid in marked(test_id):
            os.kill(pid, signal.SIGKILL)
