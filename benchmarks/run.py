"""Benchmarks: how fast daemon_controller notices readiness, exits and failures.

Every figure is measured against our own test daemon (tests/echo_server.py),
which records the exact moment (CLOCK_MONOTONIC, shared by all processes) at
which it starts listening, sends READY=1, writes its ready line and exits, so
a delay is "when our call returned" minus "when the daemon did the thing".
Prints a table of medians, 90th percentiles, sample counts and the targets set
for each figure.

The last rows are about asyncio and several daemons at once: how soon a
cancelled start raises CancelledError, how long the event loop is held up
while four daemons start, and the wall time of starting four daemons together.

The exit delay is counted from the daemon's last instruction. Beneath it, on
Linux, it is split in two at the moment stop() is woken by the daemon's pidfd:
the kernel's share (tearing the exited process down before it reports the exit:
for our Python test daemon, ~1 ms on a 2-core VM) and ours (what stop() does
after the wake-up).

    python benchmarks/run.py              # our figures
    python benchmarks/run.py --compare    # also mirakuru 3.x and pytest-xprocess, same daemon
    python benchmarks/run.py --json       # machine-readable
    python benchmarks/run.py --runs 40    # more samples
    python benchmarks/run.py --only port,postgresql   # some figures only

``--compare`` needs ``pip install mirakuru pytest-xprocess``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from echo_server import echo_command, free_port  # noqa: E402
from runtime_files import forget  # noqa: E402

from daemon_controller import (  # noqa: E402
    Daemon,
    StartError,
    _attempts,
    _launch,
    _pidfile,
    _platform,
    all_running,
)

MS = 1000.0
#: The line the log-ready daemon writes once it listens.
READY_LINE = "Ready to accept connections"
#: Every start benchmark's daemon takes this long to get ready (plus U(0, 0.1) s).
START_DELAY = ("--wait-before-listen", "0.3", "--random-extra-wait", "0.1")


@dataclass
class Figure:
    name: str
    unit: str  # "ms" or "calls/s" or "ratio" or "count"
    target: str
    samples: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)  # mirakuru's
    xprocess: list[float] = field(default_factory=list)  # pytest-xprocess's
    note: str = ""

    def median(self, values: list[float] | None = None) -> float | None:
        values = self.samples if values is None else values
        return statistics.median(values) if values else None

    def p90(self, values: list[float] | None = None) -> float | None:
        values = self.samples if values is None else values
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def records(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def event_time(path: Path, event: str) -> float:
    """When the daemon recorded ``event``; waits briefly for the line to land.

    The daemon takes its timestamp, then writes the line: a fast controller
    can return in between.
    """
    deadline = time.monotonic() + 5
    while True:
        times = [r["monotonic"] for r in records(path) if r["event"] == event]
        if times:
            return float(times[-1])
        if time.monotonic() > deadline:
            msg = f"no {event!r} record in {path}"
            raise RuntimeError(msg)
        time.sleep(0.001)


class Scratch:
    """A fresh directory per run: PID, log and record files."""

    def __init__(self, root: Path, n: int) -> None:
        self.dir = root / f"run{n}"
        self.dir.mkdir()
        self.pid = self.dir / "echo.pid"
        self.log = self.dir / "echo.log"
        self.record = self.dir / "record.jsonl"
        self.port = free_port()

    def told(self, how: str) -> tuple[Daemon, str]:
        """A daemon that tells us it is ready, and the record event of its telling.

        ``notify``: the daemon goes into the background and sends READY=1.
        ``log``: it stays in the foreground (as mirakuru and xprocess run
        programs) and writes READY_LINE to its output, which is its log.
        """
        base = Daemon("bench told").pid(self.pid).log(self.log).start_timeout(20)
        if how == "notify":
            command = echo_command(
                "--port", str(self.port), "--pid-file", str(self.pid), "--log-file",
                str(self.log), "--record", str(self.record), *START_DELAY, "--notify-ready",
            )  # fmt: skip
            return base.start_with(command).notify(), "notify-ready"
        return base.start_with(self.foreground_logging()).foreground().ping_log(
            READY_LINE
        ), "ready-line"

    def foreground_logging(self) -> list[str]:
        """The log-ready daemon: in the foreground, its ready line on stderr."""
        return echo_command(
            "--port", str(self.port), "--record", str(self.record), "--foreground",
            *START_DELAY, "--ready-log-line", READY_LINE,
        )  # fmt: skip

    def daemon(self, *args: str) -> Daemon:
        command = echo_command(
            "--port",
            str(self.port),
            "--pid-file",
            str(self.pid),
            "--log-file",
            str(self.log),
            "--record",
            str(self.record),
            *args,
        )
        return (
            Daemon("bench echo")
            .start_with(command)
            .ping_tcp("127.0.0.1", self.port)
            .pid(self.pid)
            .log(self.log)
            .start_timeout(20)
        )


class WakeStamp:
    """When was stop() woken by the daemon's exit? Benchmark-only instrumentation.

    Wraps the library's private pidfd wait for the duration of a ``with``
    block and stamps the moment it returns "exited": in the same process and
    on the same clock as stop()'s return, so the split between the kernel's
    share and ours carries no cross-process scheduling noise.
    """

    def __init__(self) -> None:
        self.moment: float | None = None
        self._original = _platform.wait_exit

    def __enter__(self) -> Self:
        original = self._original

        def stamped(pid: int, timeout: float) -> bool | None:
            result = original(pid, timeout)
            if result:
                self.moment = time.monotonic()
            return result

        _platform.wait_exit = stamped
        return self

    def __exit__(self, *exc_info: object) -> None:
        _platform.wait_exit = self._original


class SpawnStamp:
    """When did start() finish spawning? Benchmark-only instrumentation.

    Wraps the library's private spawn for the duration of a ``with`` block and
    notes the time and our CPU seconds when it returns, so the CPU a start
    spends *waiting* can be told from what spawning and setting up cost
    (fork/exec, the process table read once, the files made before the spawn).
    """

    def __init__(self) -> None:
        self.moment: tuple[float, float] | None = None  # (monotonic, CPU seconds)
        self._original = _launch.Launch.spawn

    def __enter__(self) -> Self:
        original = self._original

        def stamped(launch: _launch.Launch, extra_env: Any) -> Any:  # noqa: ANN401 - passed on
            result = original(launch, extra_env)
            self.moment = (time.monotonic(), cpu_seconds())
            return result

        _launch.Launch.spawn = stamped  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        _launch.Launch.spawn = self._original  # type: ignore[method-assign]


def timed_start(daemon: Daemon, whole: Figure, wait: Figure) -> float:
    """Start ``daemon``; file our CPU share over the whole start and over its wait alone."""
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with SpawnStamp() as spawned:
        daemon.start()
    returned, cpu1 = time.monotonic(), cpu_seconds()
    whole.samples.append(100 * (cpu1 - cpu0) / (returned - t0))
    if spawned.moment is not None:
        t_spawned, cpu_spawned = spawned.moment
        wait.samples.append(100 * (cpu1 - cpu_spawned) / (returned - t_spawned))
    return returned


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- ours -----------------------------------------------------------------------------


def record_exit(
    returned: float, record: Path, woken: float | None, figs: dict[str, Figure], *,
    theirs: bool = False,
) -> None:  # fmt: skip
    """File one stop()'s exit delay, and its split at the wake-up when there was one."""
    last_instruction = event_time(record, "exit")
    samples = {"exit": (returned - last_instruction) * MS}
    if woken is not None:
        samples["teardown"] = (woken - last_instruction) * MS
        samples["ours"] = (returned - woken) * MS
    for key, value in samples.items():
        (figs[key].theirs if theirs else figs[key].samples).append(value)


def bench_start_stop(root: Path, runs: int, figs: dict[str, Figure]) -> None:
    for n in range(runs):
        s = Scratch(root, n)
        daemon = s.daemon(*START_DELAY)
        returned = timed_start(daemon, figs["cpu"], figs["cpu_wait"])
        figs["ready"].samples.append((returned - event_time(s.record, "listening")) * MS)
        with WakeStamp() as wake:
            daemon.stop()
            returned = time.monotonic()
        record_exit(returned, s.record, wake.moment, figs)


def bench_told(root: Path, runs: int, figs: dict[str, Figure], how: str) -> None:
    """Readiness the daemon tells us: notify() or ping_log(); delay from its telling."""
    for n in range(runs):
        s = Scratch(root, n)
        daemon, event = s.told(how)
        returned = timed_start(daemon, figs[f"cpu_{how}"], figs[f"cpu_{how}_wait"])
        figs[how].samples.append((returned - event_time(s.record, event)) * MS)
        daemon.stop()


def bench_failure(root: Path, runs: int, figure: Figure, *args: str) -> None:
    for n in range(runs):
        s = Scratch(root, n)
        daemon = s.daemon(*args).log_activity_timeout(30)
        try:
            daemon.start()
        except StartError:
            raised = time.monotonic()
        else:
            daemon.stop()
            msg = "the daemon was expected to fail"
            raise RuntimeError(msg)
        figure.samples.append((raised - event_time(s.record, "exit")) * MS)


def rate(function: Callable[[], object], seconds: float = 1.0) -> float:
    """Calls per second of ``function`` over about ``seconds``."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            function()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def paired_rates(
    first: Callable[[], object], second: Callable[[], object], seconds: float = 1.0
) -> tuple[float, float]:
    """Calls per second of each function, over about ``seconds`` each, in alternating batches.

    Measured one after the other, the second would pay for what the first
    left behind: a connect-and-close leaves a TIME_WAIT socket, tens of
    thousands of them pile up within a second, and every later connect()
    searches a fuller table of ephemeral ports. Alternating batches of 100
    gives both functions the same conditions.
    """
    spent = [0.0, 0.0]
    counts = [0, 0]
    deadline = time.perf_counter() + 2 * seconds
    while True:
        for index, function in enumerate((first, second)):
            started = time.perf_counter()
            for _ in range(100):
                function()
            spent[index] += time.perf_counter() - started
            counts[index] += 100
        if time.perf_counter() >= deadline:
            return counts[0] / spent[0], counts[1] / spent[1]


def bench_hot_paths(root: Path, is_running: Figure, connect: Figure) -> None:
    s = Scratch(root, 10_000)
    daemon = s.daemon()
    daemon.start()
    try:
        for _ in range(5):
            is_running.samples.append(rate(daemon.is_running))

        def bare() -> None:
            socket.create_connection(("127.0.0.1", s.port)).close()

        def through() -> None:
            daemon.connect(lambda: socket.create_connection(("127.0.0.1", s.port))).close()

        for _ in range(5):
            through_rate, bare_rate = paired_rates(through, bare)
            connect.samples.append(100 * through_rate / bare_rate)
    finally:
        daemon.stop()


def _connect_worker(args: tuple[str, str, str, str, int, Any, Any, Any, Any]) -> None:
    pid, log, record, port_s, index, ready, go, returns, done = args
    command = echo_command(
        "--port", port_s, "--pid-file", pid, "--log-file", log, "--record", record,
        "--wait-before-listen", "0.3",
    )  # fmt: skip
    daemon = (
        Daemon("bench echo")
        .start_with(command)
        .ping_tcp("127.0.0.1", int(port_s))
        .pid(pid)
        .log(log)
        .start_timeout(20)
    )
    # Warm up what every long-running process has warm: our imports and lock
    # file, and the connect function's own first-call cost (the first
    # getaddrinfo() imports the idna codec: ~4 ms of CPU per process).
    daemon.is_running()
    socket.getaddrinfo("127.0.0.1", int(port_s), type=socket.SOCK_STREAM)
    ready.put(index)
    go.wait(60)
    sock = daemon.connect(lambda: socket.create_connection(("127.0.0.1", int(port_s))))
    # One store into shared memory, then idle until every caller has returned:
    # a queue put (which starts a feeder thread) or the interpreter's exit here
    # costs milliseconds of CPU that the callers still waiting would pay for.
    returns[index] = time.monotonic()
    done.wait(60)
    sock.close()


def bench_concurrent_connect(root: Path, rounds: int, starts: Figure, last: Figure) -> None:
    context = multiprocessing.get_context("spawn")
    for n in range(rounds):
        s = Scratch(root, 20_000 + n)
        ready, go, done = context.Queue(), context.Event(), context.Event()
        returned = context.Array("d", 16, lock=False)  # each worker writes its own slot
        args = [
            (str(s.pid), str(s.log), str(s.record), str(s.port), i, ready, go, returned, done)
            for i in range(16)
        ]
        procs = [context.Process(target=_connect_worker, args=(a,)) for a in args]
        for p in procs:
            p.start()
        for _ in procs:  # all 16 interpreters are up and waiting
            ready.get(timeout=60)
        go.set()
        deadline = time.monotonic() + 60
        while not all(returned[:]) and time.monotonic() < deadline:
            time.sleep(0.005)
        returns = list(returned[:])
        done.set()
        for p in procs:
            p.join(30)
        if not all(returns):
            msg = "not every connect() returned within 60 s"
            raise RuntimeError(msg)
        starts.samples.append(s.log.read_text().count("daemonized"))
        last.samples.append((max(returns) - event_time(s.record, "listening")) * MS)
        s.daemon().stop()


class PortStamp:
    """How long start() spends choosing, recording and filling in the port. Benchmark-only.

    Wraps the three steps the library adds to a start of a daemon with
    ``port()`` (choose a free port, record it, fill ``{port}`` in) and adds
    up their time, in the process and on the clock of the start itself.
    """

    def __init__(self) -> None:
        self.spent = 0.0
        self._saved: list[tuple[Any, str, Any]] = []

    def _timed(self, owner: Any, name: str) -> None:  # noqa: ANN401 - a module
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - passes through
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - began

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> Self:
        self._timed(_attempts._ports, "choose")  # noqa: SLF001 - instrumentation
        self._timed(_attempts, "_record")
        self._timed(_attempts._templates, "bind_port")  # noqa: SLF001 - instrumentation
        return self

    def __exit__(self, *exc_info: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def bench_port_overhead(root: Path, runs: int, figure: Figure) -> None:
    for n in range(runs):
        s = Scratch(root, n)
        daemon = (
            Daemon("bench ported echo")
            .port()
            .start_with(
                echo_command("--port", "{port}", "--pid-file", str(s.pid), "--log-file", str(s.log))
            )
            .ping_tcp("127.0.0.1", "{port}")
            .pid(s.pid)
            .log(s.log)
            .start_timeout(20)
        )
        daemon.is_running()  # warm: the lock file and the resolved description
        with PortStamp() as stamp:
            daemon.start()
        daemon.stop()
        figure.samples.append(stamp.spent * MS)


# -- PostgreSQL instances from a prepared template ------------------------------------------------


def pg_bindir() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"):
        for candidate in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
            if all((candidate / p).exists() for p in ("initdb", "postgres", "pg_isready")):
                return candidate
    return None


def postgresql(bindir: Path, project: Path) -> Daemon:
    """A PostgreSQL per instance: port chosen at start, data copied from one initdb."""
    initdb = [str(bindir / "initdb"), "-D", "{run_dir}/data", "-U", "postgres", "-A", "trust"]
    server = [str(bindir / "postgres"), "-D", "{run_dir}/data", "-k", "{run_dir}", "-p", "{port}"]
    daemon = (
        Daemon("bench postgresql")
        .port()
        .prepare([*initdb, "--no-sync", "--wal-segsize=1"])
        .start_with([*server, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .foreground()
        .stop_signal("INT")
        .pid("{run_dir}/data/postmaster.pid")
        .ping_command([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", "{port}"])
        .cwd(project)
        .start_timeout(120)
    )
    return daemon.user("postgres") if os.geteuid() == 0 else daemon


def _pg_worker(args: tuple[str, str, str, Any, Any, Any]) -> None:
    bindir, project, worker, ready, go, out = args
    daemon = postgresql(Path(bindir), Path(project)).for_worker(worker)
    daemon.is_running()  # warm: imports, the lock file, the resolved description
    ready.put(worker)
    go.wait(120)
    daemon.start()
    out.put(time.monotonic())


def _pg_round(bindir: Path, project: Path, workers: list[str]) -> float:
    """Start one instance per worker process at once; seconds until the last is ready."""
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Queue(), context.Event(), context.Queue()
    procs = [
        context.Process(target=_pg_worker, args=((str(bindir), str(project), w, ready, go, out),))
        for w in workers
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        began = time.monotonic()
        go.set()
        last = max(out.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(60)
        base = postgresql(bindir, project)
        for w in workers:
            instance = base.for_worker(w)
            instance.stop()
            forget_run_dir(instance)
    return last - began


def forget_run_dir(daemon: Daemon) -> None:
    """Remove an instance's run directory, so that its next start copies the template."""
    run_dir = daemon.resolved().config.run_dir
    if isinstance(run_dir, Path):
        shutil.rmtree(run_dir, ignore_errors=True)


def filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (``"tmpfs"``, ``"ext4"``...), or ``"?"``."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if len(fields) > 2 and inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def bench_pg_instances(rounds: int, one: Figure, four: Figure, ratio: Figure) -> None:
    bindir = pg_bindir()
    if bindir is None:
        for figure in (one, four, ratio):
            figure.note = "PostgreSQL is not installed"
        return
    project = Path(tempfile.mkdtemp(prefix="dc-bench-pg-"))
    base = postgresql(bindir, project)
    # The copies cost what creating files costs there: ~7 us each on tmpfs,
    # ~1 ms on this project's VM's ext4. Say which it was.
    run_dir = base.resolved().config.run_dir
    where = filesystem(run_dir.parent) if isinstance(run_dir, Path) else "?"
    for figure in (one, four):
        figure.name += f" ({where})"
    try:
        base.start()  # prepares the template (initdb, once): not measured
        base.stop()
        for _ in range(rounds):
            single = _pg_round(bindir, project, ["b0"])
            together = _pg_round(bindir, project, [f"b{i}" for i in range(4)])
            one.samples.append(single * MS)
            four.samples.append(together * MS)
            ratio.samples.append(together / single)
    finally:
        for instance in (base, *(base.for_worker(f"b{i}") for i in range(4))):
            instance.stop()
            forget(instance)
        shutil.rmtree(project, ignore_errors=True)


def bench_import(runs: int, figure: Figure) -> None:
    # As installed packages run: with their bytecode cached (pip compiles it at
    # install time). PYTHONDONTWRITEBYTECODE would make every run recompile.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-c", "import daemon_controller"]
    subprocess.run(command, check=True, env=env)  # writes the bytecode cache
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        figure.samples.append((time.perf_counter() - t0) * MS)


# -- asyncio and several daemons at once ----------------------------------------------------


def bench_cancel(root: Path, runs: int, figure: Figure) -> None:
    """task.cancel() on a task in astart(), to CancelledError raised.

    The daemon is up and waiting (its PID file written) and exits on SIGTERM
    at once; the figure is the abort (SIGTERM, waiting for the exit, the
    scan for anything else the start created) plus the hand-over to the loop.
    """

    async def once(daemon: Daemon, pid_file: Path) -> float:
        task = asyncio.create_task(daemon.astart())
        while _pidfile.read_pid(pid_file) is None:  # noqa: ASYNC110 - a file, no event to await
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)  # well into its wait: in a pause, as a start mostly is
        began = time.monotonic()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return time.monotonic() - began
        msg = "the start was expected to be cancelled"
        raise RuntimeError(msg)

    for n in range(runs):
        s = Scratch(root, n)
        daemon = s.daemon("--wait-before-listen", "30")
        figure.samples.append(asyncio.run(once(daemon, s.pid)) * MS)
        if daemon.is_running():
            msg = "a cancelled start left the daemon running"
            raise RuntimeError(msg)


async def worst_lag(start: Callable[[], Awaitable[object]]) -> float:
    """The longest the event loop was held up while ``start()`` was awaited, in seconds.

    A ticker sleeps 1 ms at a time and notes how much later than asked it
    wakes up (the loop's own wake-up cost included: about 0.1 ms when idle).
    """
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            asked = time.monotonic()
            await asyncio.sleep(0.001)
            worst = max(worst, time.monotonic() - asked - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    worst = 0.0
    await start()
    done = True
    await tick
    return worst


async def enter_all(daemons: list[Daemon]) -> None:
    async with all_running(*daemons):
        pass


async def start_without_us(scratches: list[Scratch]) -> None:
    """Run the start commands from a thread; look for the records every 10 ms."""
    for s in scratches:
        command = s.daemon("--wait-before-listen", "0.3").config.start_command
        await asyncio.to_thread(subprocess.run, command, check=True)
    while not all(records(s.record) for s in scratches):  # noqa: ASYNC110 - files, no event
        await asyncio.sleep(0.01)


def bench_loop_lag(root: Path, runs: int, figs: dict[str, Figure]) -> None:
    """The event loop's longest delay while ``async with all_running()`` starts 4 daemons.

    Measured in the same runs while the same 4 daemons start without the
    library: four Python interpreters starting at once on a small machine
    hold up every process on it, ours included; that row shows how much.
    """
    for n in range(runs):
        ours = [Scratch(root, 1000 * n + i) for i in range(4)]
        daemons = [s.daemon("--wait-before-listen", "0.3") for s in ours]
        # (The lambdas are called at once, inside asyncio.run: B023 does not apply.)
        lag = asyncio.run(worst_lag(lambda: enter_all(daemons)))  # noqa: B023
        figs["lag"].samples.append(lag * MS)
        bare = [Scratch(root, 1000 * n + 100 + i) for i in range(4)]
        lag = asyncio.run(worst_lag(lambda: start_without_us(bare)))  # noqa: B023
        figs["lag_bare"].samples.append(lag * MS)
        for s in bare:
            s.daemon().stop()


def bench_together(root: Path, runs: int, figs: dict[str, Figure]) -> None:
    """4 independent daemons, each listening 0.3 s after the call, started together.

    ``--listen-at`` makes each daemon listen at that moment however long its
    interpreter took to start (on a busy 2-core machine, four Python
    interpreters starting at once can take longer than that). The wall time
    is split at the moment the last daemon started listening.
    """
    for n in range(runs):
        scratches = [Scratch(root, 100 * n + i) for i in range(4)]
        began = time.monotonic()
        at = f"{began + 0.3:.6f}"
        daemons = [s.daemon("--listen-at", at) for s in scratches]
        with all_running(*daemons):
            returned = time.monotonic()
            # Read while they run: a daemon stopped at once may not have written it yet.
            last = max(event_time(s.record, "listening") for s in scratches)
        figs["together"].samples.append(returned - began)
        figs["together_daemons"].samples.append(last - began)
        figs["together_ours"].samples.append((returned - last) * MS)


# -- mirakuru ---------------------------------------------------------------------------


def compare_mirakuru(root: Path, runs: int, figures: dict[str, Figure]) -> None:
    try:
        from mirakuru import PidExecutor, TCPExecutor  # noqa: PLC0415
        from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired  # noqa: PLC0415
    except ImportError:
        sys.exit("--compare needs mirakuru: pip install mirakuru")

    def command(s: Scratch, *args: str) -> list[str]:
        # mirakuru runs programs in the foreground; same daemon, same options.
        return echo_command(
            "--port", str(s.port), "--pid-file", str(s.pid), "--log-file", str(s.log),
            "--record", str(s.record), "--foreground", *args,
        )  # fmt: skip

    for n in range(runs):
        s = Scratch(root, 30_000 + n)
        ex = TCPExecutor(
            command(s, *START_DELAY),
            host="127.0.0.1",
            port=s.port,
            timeout=20,
            stderr=subprocess.DEVNULL,
        )
        ex.start()
        returned = time.monotonic()
        figures["ready"].theirs.append((returned - event_time(s.record, "listening")) * MS)
        ex.stop()
        record_exit(time.monotonic(), s.record, None, figures, theirs=True)

    cases = [
        ("fail_before", ("--exit-before-daemonize", "3")),
        ("die_after_pid", ("--exit-after-pid", "3")),
    ]
    for key, args in cases:
        for n in range(runs):
            s = Scratch(root, 40_000 + 1000 * len(key) + n)
            ex = TCPExecutor(
                command(s, *args),
                host="127.0.0.1",
                port=s.port,
                timeout=20,
                stderr=subprocess.DEVNULL,
            )
            with contextlib.suppress(ProcessExitedWithError):
                ex.start()
            raised = time.monotonic()
            figures[key].theirs.append((raised - event_time(s.record, "exit")) * MS)

    # A daemonizing program that dies before its PID file: mirakuru's
    # PidExecutor waits for the file until its timeout (here 3 s).
    for n in range(min(runs, 3)):
        s = Scratch(root, 50_000 + n)
        daemonizing = [a for a in command(s, "--exit-after-daemonize", "1") if a != "--foreground"]
        ex = PidExecutor(daemonizing, filename=str(s.pid), timeout=3, stderr=subprocess.DEVNULL)
        with contextlib.suppress(ProcessExitedWithError, TimeoutExpired):
            ex.start()
        raised = time.monotonic()
        figures["die_after_daemonize"].theirs.append((raised - event_time(s.record, "exit")) * MS)
        with contextlib.suppress(Exception):
            ex.stop()


def compare_log_ready(root: Path, runs: int, figure: Figure) -> None:
    """mirakuru's OutputExecutor and pytest-xprocess's pattern on the log-ready daemon."""
    try:
        from mirakuru import OutputExecutor  # noqa: PLC0415
    except ImportError:
        sys.exit("--compare needs mirakuru: pip install mirakuru")
    try:
        import py  # noqa: PLC0415 - xprocess keeps its files in py.path objects
        from xprocess import ProcessStarter, XProcess  # noqa: PLC0415
    except ImportError:
        sys.exit("--compare needs pytest-xprocess: pip install pytest-xprocess")

    for n in range(runs):
        s = Scratch(root, 60_000 + n)
        ex = OutputExecutor(
            s.foreground_logging(),
            banner=READY_LINE,
            timeout=20,
            stdout=None,  # the daemon logs to its stderr
            stderr=subprocess.PIPE,
        )
        ex.start()
        returned = time.monotonic()
        figure.theirs.append((returned - event_time(s.record, "ready-line")) * MS)
        ex.stop()

    class Quiet:
        def debug(self, *_args: object) -> None:
            pass

    for n in range(runs):
        s = Scratch(root, 70_000 + n)
        starter = type(
            "Starter",
            (ProcessStarter,),
            {"pattern": READY_LINE, "args": s.foreground_logging(), "timeout": 20},
        )
        xprocess = XProcess(argparse.Namespace(), py.path.local(s.dir), log=Quiet())  # noqa: PTH124 - what xprocess takes
        xprocess.ensure("echo", starter)
        returned = time.monotonic()
        figure.xprocess.append((returned - event_time(s.record, "ready-line")) * MS)
        xprocess.getinfo("echo").terminate()
        xprocess._force_clean_up()  # noqa: SLF001 - what its pytest plugin calls at the end


# -- report -------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "calls/s":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit in ("%", "count"):
        return f"{value:.1f}" if unit == "%" else f"{value:.0f}"
    return f"{value:.2f}"


def print_table(figures: list[Figure], compare: bool) -> None:
    header = ["figure", "unit", "median", "p90", "n", "target"]
    if compare:
        header += ["mirakuru median", "ours/mirakuru", "xprocess median", "ours/xprocess"]
    rows = [header]
    for f in figures:
        row = [
            f.name,
            f.unit,
            fmt(f.median(), f.unit),
            fmt(f.p90(), f.unit),
            str(len(f.samples)),
            f.target,
        ]
        if compare:
            for values in (f.theirs, f.xprocess):
                theirs = f.median(values)
                ours = f.median()
                ratio = "-"
                if theirs and ours is not None and f.target != "-":
                    r = ours / theirs
                    ratio = f"{r:.3f}" if r >= 0.01 else f"{r:.2g}"
                row += [fmt(theirs, f.unit), ratio]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def measure(root: Path, groups: set[str], runs: int, figs: dict[str, Figure]) -> None:  # noqa: C901 - one branch per group
    """Take the figures of ``groups``, with scratch directories under ``root``."""
    if "start" in groups:
        (root / "a").mkdir()
        bench_start_stop(root / "a", runs, figs)
    if "told" in groups:
        for how in ("notify", "log"):
            (root / how).mkdir()
            bench_told(root / how, runs, figs, how)
    if "failures" in groups:
        for key, args in [
            ("fail_before", ("--exit-before-daemonize", "3")),
            ("die_after_pid", ("--exit-after-pid", "3")),
            ("die_after_daemonize", ("--exit-after-daemonize", "1")),
        ]:
            (root / key).mkdir()
            bench_failure(root / key, runs, figs[key], *args)
    if "hot" in groups:
        (root / "hot").mkdir()
        bench_hot_paths(root / "hot", figs["is_running"], figs["connect"])
    if "connect" in groups:
        (root / "conc").mkdir()
        bench_concurrent_connect(root / "conc", max(3, runs // 4), figs["starts"], figs["last"])
    if "import" in groups:
        bench_import(runs, figs["import"])
    if "port" in groups:
        (root / "port").mkdir()
        bench_port_overhead(root / "port", runs, figs["port"])
    if "postgresql" in groups:
        pg_figures = figs["pg_one"], figs["pg_four"], figs["pg_ratio"]
        bench_pg_instances(max(1, runs // 4), *pg_figures)
    if "asyncio" in groups:
        (root / "cancel").mkdir()
        bench_cancel(root / "cancel", runs, figs["cancel"])
        (root / "lag").mkdir()
        bench_loop_lag(root / "lag", runs, figs)
        (root / "together").mkdir()
        bench_together(root / "together", runs, figs)


#: The groups of figures --only can choose from.
GROUPS = (
    "start",
    "told",
    "failures",
    "hot",
    "connect",
    "import",
    "asyncio",
    "port",
    "postgresql",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="samples per figure (default 20)")
    parser.add_argument(
        "--compare", action="store_true", help="also measure mirakuru and pytest-xprocess"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only", metavar="GROUPS", help=f"comma-separated, of: {', '.join(GROUPS)} (default all)"
    )
    options = parser.parse_args()
    runs = options.runs

    figs = {
        "ready": Figure(
            "readiness delay: start() return - daemon listening", "ms", "<= 5 (p90 <= 10)"
        ),
        "exit": Figure("exit delay: stop() return - daemon's last instruction", "ms", "<= 1"),
        "teardown": Figure("  kernel: last instruction - stop() woken", "ms", "-"),
        "ours": Figure("  ours: stop() woken - stop() return", "ms", "-"),
        "fail_before": Figure("start command fails before daemonizing", "ms", "<= 20"),
        "die_after_pid": Figure("daemon dies after PID file, before listening", "ms", "<= 10"),
        "die_after_daemonize": Figure(
            "daemon dies after daemonizing, before PID file", "ms", "<= 100"
        ),
        "notify": Figure(
            "readiness delay with notify(): start() return - daemon's READY=1 send", "ms", "<= 0.3"
        ),
        "log": Figure(
            "readiness delay with ping_log(): start() return - daemon's ready line", "ms", "<= 1"
        ),
        "cpu": Figure("controller CPU while waiting for a TCP-ping daemon", "%", "<= 5"),
        "cpu_wait": Figure("  of it, the wait after the spawn", "%", "-"),
        "cpu_notify": Figure("controller CPU while waiting for a notify() daemon", "%", "<= 1"),
        "cpu_notify_wait": Figure("  of it, the wait after the spawn", "%", "-"),
        "cpu_log": Figure("controller CPU while waiting for a ping_log() daemon", "%", "<= 1"),
        "cpu_log_wait": Figure("  of it, the wait after the spawn", "%", "-"),
        "is_running": Figure("is_running() on a running daemon", "calls/s", ">= 75,000"),
        "connect": Figure("connect(fn) rate vs fn alone", "%", ">= 90"),
        "starts": Figure("16 processes connect() at once: starts", "count", "1"),
        "last": Figure("16 processes connect() at once: last return - ready", "ms", "<= 10"),
        "import": Figure('python -c "import daemon_controller"', "ms", "<= 150"),
        "cancel": Figure("task.cancel() in astart() -> CancelledError raised", "ms", "<= 50"),
        "lag": Figure("event-loop lag while 4 daemons start (max per start)", "ms", "<= 5"),
        "lag_bare": Figure("  same 4 daemons started without the library", "ms", "-"),
        "together": Figure("4 daemons ready 0.3 s after the call, all_running()", "s", "<= 0.4"),
        "together_daemons": Figure("  daemons: call - last one listening", "s", "-"),
        "together_ours": Figure("  ours: last one listening - return", "ms", "-"),
        "port": Figure("port chosen and recorded: overhead on start()", "ms", "<= 1"),
        "pg_one": Figure("PostgreSQL from its template: 1 instance, until ready", "ms", "-"),
        "pg_four": Figure(
            "PostgreSQL from its template: 4 per-worker instances, until all ready", "ms", "-"
        ),
        "pg_ratio": Figure("  4 instances / 1 instance", "ratio", "<= 1.5"),
    }
    groups = set(options.only.split(",")) if options.only else set(GROUPS)
    unknown = groups - set(GROUPS)
    if unknown:
        parser.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="dc-bench-") as tmp:
        root = Path(tmp)
        measure(root, groups, runs, figs)
        if options.compare:
            (root / "mk").mkdir()
            compare_mirakuru(root / "mk", runs, figs)
            compare_log_ready(root / "mk", runs, figs["log"])

    if options.json:
        print(
            json.dumps(
                {
                    key: {
                        "name": f.name,
                        "unit": f.unit,
                        "median": f.median(),
                        "p90": f.p90(),
                        "n": len(f.samples),
                        "target": f.target,
                        "samples": f.samples,
                        "mirakuru_median": f.median(f.theirs),
                        "xprocess_median": f.median(f.xprocess),
                    }
                    for key, f in figs.items()
                },
                indent=2,
            )
        )
    else:
        print(
            f"daemon_controller benchmarks - {platform.node()}: {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
        )
        print_table(list(figs.values()), options.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
