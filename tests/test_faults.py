"""The fault suite: many controllers, killed controllers, aborted starts.

* 16 processes x 20 rounds of ``connect()`` (echoing a byte) and random
  ``stop()`` on one daemon, with a monitor thread watching the process table:
  never two daemons alive at once, every connect succeeds, nothing left behind;
* a controller SIGKILLed while holding the lock (exclusively, inside a start's
  ``before_start``, or shared, inside a ``connect()`` function): the next
  controller proceeds within seconds;
* starts aborted at random moments by SIGINT (KeyboardInterrupt: nothing the
  start created may survive) or SIGKILL (no cleanup possible: the next
  ``stop()``/``start()`` must still work).

PID reuse and hostile files are in ``test_pidfile.py`` and
``test_hostile_files.py``. The figures printed here (rounds, daemons started,
processes left behind) show how hard the suite pushed; run with ``-s`` to see
them.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

import psutil
import pytest
from echo_server import ECHO_SERVER
from helpers import (
    INTERRUPTIBLE_START,
    MARKER,
    BeforeStart,
    count_starts,
    daemonized_pids,
    gone,
    kill_marked,
    marked,
    release_together,
    roundtrip,
)

if TYPE_CHECKING:
    from pathlib import Path

    from daemon_controller import Daemon

WORKERS = 16
ROUNDS = 20
STOP_PROBABILITY = 0.5


def faulty(echo, *extra: str) -> Daemon:
    """The echo daemon of this suite, with room for a loaded machine."""
    return echo(*extra).start_timeout(30).log_activity_timeout(30)


# -- 16 processes x 20 rounds ------------------------------------------------------------

_WORKER = """
import random
worker, rounds, stop_probability = int(args[0]), int(args[1]), float(args[2])
port = daemon.config.ping.port
rng = random.Random(worker)

def connect():
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise RuntimeError("the echo server did not echo")
    except BaseException:
        sock.close()
        raise
    return sock

stats = {"rounds": 0, "connects": 0, "stops": 0, "errors": []}
tell_parent("ready")
wait_for_parent()
for _ in range(rounds):
    stats["rounds"] += 1
    try:
        daemon.connect(connect).close()
        stats["connects"] += 1
    except Exception as err:
        stats["errors"].append(f"connect: {type(err).__name__}: {err}")
    if rng.random() < stop_probability:
        try:
            daemon.stop()
            stats["stops"] += 1
        except Exception as err:
            stats["errors"].append(f"stop: {type(err).__name__}: {err}")
tell_parent(stats)
"""


class _Monitor(threading.Thread):
    """Every ~5 ms: how many echo daemons of this test are alive (zombies ignored)?

    A daemon is an echo_server process with the test's marker that logged
    "daemonized" (the processes between the start command and the daemon, on
    their way through the double fork, are not daemons).
    """

    def __init__(self, test_id: str, log_file: Path) -> None:
        super().__init__(daemon=True)
        self.test_id = test_id
        self.log_file = log_file
        self.stop_event = threading.Event()
        self.max_daemons = 0
        self.max_processes = 0
        self.scans = 0
        self.worst: list[int] = []

    def _scan(self) -> None:
        echo_pids = set()
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if not any(str(ECHO_SERVER) in part for part in proc.info["cmdline"] or ()):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(MARKER) == self.test_id:
                    echo_pids.add(proc.pid)
            except psutil.Error:
                continue
        daemons = echo_pids & set(daemonized_pids(self.log_file))
        # Confirm: a daemon seen at the start of the scan may have exited since.
        daemons = {pid for pid in daemons if not gone(pid)}
        self.scans += 1
        self.max_processes = max(self.max_processes, len(echo_pids))
        if len(daemons) > self.max_daemons:
            self.max_daemons = len(daemons)
            self.worst = sorted(daemons)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self._scan()
            time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_many_processes_connecting_and_stopping_never_run_two_daemons(echo, test_id, child):
    # gem: the same lock discipline, but it trusts stale PID files and leaves aborted
    # starts running; any double start or stray daemon shows up here.
    daemon = faulty(echo)
    monitor = _Monitor(test_id, echo.log_file)
    workers = [
        child(_WORKER, str(n), str(ROUNDS), str(STOP_PROBABILITY), daemon=daemon)
        for n in range(WORKERS)
    ]
    started = time.monotonic()
    try:
        monitor.start()
        release_together(workers)
        results = [worker.finish(timeout=240) for worker in workers]
    finally:
        monitor.stop_event.set()
        monitor.join(timeout=30)
        for worker in workers:
            worker.kill()
        daemon.stop()
    elapsed = time.monotonic() - started
    left_behind = marked(test_id)
    rounds = sum(r["rounds"] for r in results)
    connects = sum(r["connects"] for r in results)
    stops = sum(r["stops"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    started_daemons = len(daemonized_pids(echo.log_file))
    print(
        f"\nfault suite: {WORKERS} processes x {ROUNDS} rounds = {rounds} rounds in "
        f"{elapsed:.1f} s; {connects} connects succeeded; {stops} stop() calls; "
        f"{started_daemons} daemons started; at most {monitor.max_daemons} daemon alive at "
        f"once ({monitor.scans} scans); {len(left_behind)} processes left behind"
    )
    assert errors == []
    assert rounds == WORKERS * ROUNDS
    assert connects == WORKERS * ROUNDS
    assert monitor.scans > 100
    assert monitor.max_daemons == 1, monitor.worst
    assert started_daemons >= 2  # the stops really made it start again
    assert left_behind == []


# -- a controller killed while holding the lock ------------------------------------------

_HOLD_LOCK = """
def hold():
    tell_parent("inside")
    time.sleep(60)

if args[0] == "start":
    daemon.before_start(hold).start()
else:
    daemon.connect(lambda: hold())
"""


@pytest.mark.parametrize("where", ["start", "connect"])
def test_controller_sigkilled_while_holding_the_lock(echo, tmp_path, test_id, child, where):
    # gem: the same (flock dies with its process); guards against a lock that outlives
    # its holder (a lock file created with O_EXCL, a lock kept by a leaked child).
    daemon = faulty(echo).before_start(BeforeStart(tmp_path / "starts.jsonl"))
    holder = child(_HOLD_LOCK, where, daemon=daemon)
    try:
        assert holder.message(timeout=30) == "inside"
        # The lock really is held: a start here has to wait.
        waiter_done = threading.Event()
        waiter = threading.Thread(target=lambda: (daemon.start(), waiter_done.set()))
        waiter.start()
        assert not waiter_done.wait(0.5)
        holder.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert waiter_done.wait(30)
        waiter.join(timeout=30)
        delay = time.monotonic() - killed
        print(f"\nSIGKILLed lock holder ({where}): the next start() returned {delay:.2f} s later")
        assert delay < 10
        assert daemon.is_running()
        assert roundtrip(echo.port) == b"hello daemon\n"
        assert len(daemonized_pids(echo.log_file)) == 1  # the killed one started nothing
        # Ours is the one start: the holder's before_start (or connect) never got further.
        assert count_starts(tmp_path / "starts.jsonl") == 1
    finally:
        daemon.stop()
    assert marked(test_id) == []


# -- starts aborted at random moments -----------------------------------------------------


def _settle(daemon: Daemon, test_id: str, port: int) -> None:
    """After a SIGKILLed start: let whatever it left behind finish on its own.

    Nobody is left to watch a half-started daemon: it carries on to its PID file
    and socket, and only then can any controller tell that it is the daemon. A
    start command caught between fork and exec does not carry the marker yet, so
    "nothing marked" must hold for a second to count.
    """
    quiet_since = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = marked(test_id)
        if not pids:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                return
        else:
            quiet_since = None
            pid = daemon.read_pid()
            if pid is not None and pids == [pid]:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return
        time.sleep(0.02)
    pytest.fail(f"processes of the killed start did not settle: {marked(test_id)}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_start_aborted_at_a_random_moment(echo, test_id, child, seed):
    # gem: an interrupted start leaves its double-forked daemon running, unwatched.
    rng = random.Random(seed)
    delay = rng.uniform(0, 0.6)
    sig = signal.SIGINT if seed % 2 == 0 else signal.SIGKILL
    # A start that takes about half a second: the signal lands anywhere in it.
    daemon = faulty(echo, "--wait-before-pid", "0.2", "--wait-before-listen", "0.2")
    starter = child(INTERRUPTIBLE_START, daemon=daemon)
    try:
        assert starter.message() == "starting"
        time.sleep(delay)  # the random moment itself, not a wait for an event
        starter.signal(sig)
        status = starter.wait(timeout=60)
        finished = "started" in starter.unread_messages()
        print(
            f"\nabort {seed}: {signal.Signals(sig).name} after {delay:.3f} s; "
            f"start {'had finished' if finished else 'aborted'}; exit {status}"
        )
        if sig == signal.SIGINT and not finished:
            assert status in (42, -signal.SIGINT), starter.stderr
            assert marked(test_id) == [], "an interrupted start left processes behind"
            assert not daemon.is_running()
        if sig == signal.SIGKILL:
            _settle(daemon, test_id, echo.port)
        # Whatever happened, the next controller can stop and start the daemon.
        daemon.stop()
        assert marked(test_id) == []
        daemon.start()
        assert roundtrip(echo.port) == b"hello daemon\n"
        daemon.stop()
        assert marked(test_id) == []
    finally:
        kill_marked(test_id)
