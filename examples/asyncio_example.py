"""asyncio: Redis and memcached started together and used from coroutines; a timeout that fires.

1. ``async with all_running(redis, memcached)`` starts both at once, in
   worker threads: the event loop keeps running meanwhile (a ticker counts
   its turns). If one of them failed, the other would be stopped again.
2. Inside, each is used over asyncio streams opened with ``aconnect()`` and
   an ``async def`` connect function.
3. Leaving the block stops both; the script checks that no process is left
   from its directory.
4. A timeout that fires: a memcached whose ping asks the wrong port would
   keep its start waiting for the whole ``start_timeout`` (30 s). Under
   ``asyncio.timeout(1.0)``, ``astart()`` is cancelled after 1 s: the start
   is aborted (memcached gets SIGTERM), and only then does ``TimeoutError``
   come out. The script checks that memcached is gone and the lock is free.

Both daemons come from Debian (``apt-get install redis-server memcached``);
as root, memcached runs as ``nobody``. Run it with::

    python examples/asyncio_example.py
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

from daemon_controller import Daemon, all_running

GREETING = "hello from asyncio"
#: The timeout that fires, and how much longer the aborted start may take.
TIMEOUT, ABORT_BOUND = 1.0, 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_daemon(redis: str, run_dir: Path, port: int) -> Daemon:
    def ping() -> bool:
        # Ready means PING answers +PONG (Redis accepts connections while loading).
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes"]
    argv += ["--pidfile", str(run_dir / "redis.pid"), "--logfile", str(run_dir / "redis.log")]
    argv += ["--dir", str(run_dir), "--save", ""]
    return (
        Daemon("Redis")
        .start_with(argv)
        .ping(ping)
        .pid(run_dir / "redis.pid")
        .log(run_dir / "redis.log")
    )


def memcached_daemon(memcached: str, run_dir: Path, port: int, *, ping_port: int) -> Daemon:
    # -v and the redirection keep memcached's errors visible (see memcached_example.py).
    log = run_dir / f"memcached-{port}.log"
    pid = run_dir / f"memcached-{port}.pid"
    argv = [memcached, "-d", "-v", "-P", str(pid), "-p", str(port), "-l", "127.0.0.1", "-U", "0"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    return (
        Daemon(f"memcached:{port}")
        .start_with(f"{shlex.join(argv)} >>{shlex.quote(str(log))} 2>&1")
        .ping_tcp("127.0.0.1", ping_port)
        .pid(pid)
        .log(log)
    )


async def redis_roundtrip(redis: Daemon, port: int) -> tuple[str, str]:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    reader, writer = await redis.aconnect(connect)
    try:
        writer.write(f"SET greeting '{GREETING}'\r\nGET greeting\r\n".encode())
        stored = (await reader.readline()).decode().strip()  # +OK
        await reader.readline()  # $<length>
        fetched = (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()
    return stored.lstrip("+"), fetched


async def memcached_roundtrip(memcached: Daemon, port: int) -> tuple[str, str]:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    reader, writer = await memcached.aconnect(connect)
    try:
        data = GREETING.encode()
        writer.write(b"set greeting 0 0 %d\r\n%s\r\nget greeting\r\n" % (len(data), data))
        stored = (await reader.readline()).decode().strip()  # STORED
        await reader.readline()  # VALUE greeting 0 <length>
        fetched = (await reader.readline()).decode().strip()
        await reader.readline()  # END
    finally:
        writer.close()
        await writer.wait_closed()
    return stored, fetched


def processes_in(run_dir: Path) -> list[str]:
    """Live processes whose command line or working directory mentions ``run_dir``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.cmdline()) + " " + proc.cwd()
        except psutil.Error:
            continue
        if str(run_dir) in text:
            found.append(f"{proc.pid} {text[:80]}")
    return found


def lock_is_free(daemon: Daemon) -> bool:
    """Can the daemon's lock file be taken right now (from a descriptor of our own)?"""
    path = Path(f"{daemon.config.pid_file}.lock")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def main_async(redis_bin: str, memcached_bin: str, run_dir: Path) -> bool:
    redis_port, cache_port = free_port(), free_port()
    redis = redis_daemon(redis_bin, run_dir, redis_port)
    cache_dir = run_dir / "memcached"  # its own: as root, nobody (memcached) may write there
    cache = memcached_daemon(memcached_bin, cache_dir, cache_port, ping_port=cache_port)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    tick = asyncio.create_task(ticker())
    began = time.monotonic()
    async with all_running(redis, cache):
        print(
            f"1. Both ready after {time.monotonic() - began:.3f} s; "
            f"the event loop ran {ticks} ticker turns meanwhile"
        )
        stored, fetched = await redis_roundtrip(redis, redis_port)
        print(f"2. Redis: SET -> {stored!r}, GET -> {fetched!r}")
        ok = fetched == GREETING
        stored, fetched = await memcached_roundtrip(cache, cache_port)
        print(f"   memcached: set -> {stored!r}, get -> {fetched!r}")
        ok = ok and fetched == GREETING
    tick.cancel()
    left = processes_in(run_dir)
    print(
        f"3. Left the block: Redis running {await redis.ais_running()}, memcached running "
        f"{await cache.ais_running()}; processes left: {left}"
    )
    ok = ok and not left

    # A memcached whose ping asks a port nothing listens on: it never answers.
    wrong = memcached_daemon(memcached_bin, cache_dir, free_port(), ping_port=free_port())
    began = time.monotonic()
    try:
        async with asyncio.timeout(TIMEOUT):
            await wrong.astart()
    except TimeoutError:
        took = time.monotonic() - began
        print(f"4. astart() under asyncio.timeout({TIMEOUT}): TimeoutError after {took:.3f} s")
        ok = ok and took < TIMEOUT + ABORT_BOUND
    else:
        print("4. the misconfigured memcached started?!")
        ok = False
    left = processes_in(run_dir)
    free = lock_is_free(wrong)
    print(f"   The start was aborted: processes left: {left}; lock free: {free}")
    return ok and not left and free


def make_run_dir() -> Path:
    """A temporary directory, with a subdirectory memcached (as nobody, when root) may write to.

    Redis's PID file stays in a directory only we can write: a PID file that
    another user could rewrite is not trusted to name a process of ours.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="dc-asyncio-"))
    (run_dir / "memcached").mkdir()
    if os.geteuid() == 0:
        run_dir.chmod(0o711)  # nobody may pass through to its own directory
        shutil.chown(run_dir / "memcached", user="nobody")
    return run_dir


def main() -> int:
    redis_bin = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    memcached_bin = shutil.which("memcached")
    if redis_bin is None or memcached_bin is None:
        print("needs redis-server and memcached (Debian: apt-get install redis-server memcached)")
        return 1
    logging.basicConfig(level=logging.WARNING, format="   [log] %(message)s", stream=sys.stdout)
    run_dir = make_run_dir()
    try:
        ok = asyncio.run(main_async(redis_bin, memcached_bin, run_dir))
    finally:
        for proc in psutil.process_iter(["pid"]):  # whatever happened: nothing stays behind
            try:
                if str(run_dir) in " ".join(proc.cmdline()) + " " + proc.cwd():
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(run_dir, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
