"""Tutorial 2 of the original README, with Redis in place of the Sphinx search server.

``SearchServer`` answers word queries from an index kept in Redis. Nobody starts
Redis by hand: the first query starts it, later queries reuse it, and several
processes querying at once start it exactly once.

* ``before_start`` runs under the daemon's lock, right before Redis is started:
  it writes the Redis config file (always: it could differ per environment) and,
  if there is no index yet, builds one from the documents. The index is an
  append-only file of ``SADD term:<word> <document>`` commands that Redis loads
  when it starts. No two processes ever run this at the same time.
* ``query()`` goes through ``connect()``: if connecting is refused, it takes the
  lock, starts Redis unless somebody else just did, and connects again.
* Readiness is a PING that must answer ``+PONG``. Redis accepts connections
  (and writes its PID file) *before* it has loaded its dataset; until then
  every command, PING included, gets ``-LOADING Redis is loading the dataset in
  memory``. A plain TCP ping would declare Redis ready too early, and the first
  query would fail.

Redis runs with ``daemonize yes`` and its own ``pidfile``, ``logfile``, ``port``
and ``dir``, all in a temporary directory; the example stops it at the end.
A tiny RESP client over a socket stands in for a Redis client library. Run it with::

    python examples/redis_search_server.py
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from daemon_controller import Daemon

DOCUMENTS = {
    "doc1": "the quick brown fox jumps over the lazy dog",
    "doc2": "a lazy afternoon with a quick nap",
    "doc3": "daemon controller starts redis on demand",
    "doc4": "the quick start guide for the daemon controller",
}


# -- a minimal Redis client -----------------------------------------------------------


def encode(*args: str) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisError(Exception):
    """An error reply, e.g. ``LOADING Redis is loading the dataset in memory``."""


def read_reply(stream: BinaryIO) -> object:
    """Read one reply: a str, an int, None, or a list of replies."""
    line = stream.readline()
    if not line:
        raise ConnectionResetError("Redis closed the connection")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(stream) for _ in range(count)]
    raise RedisError(f"unexpected reply {line!r}")


def call(sock: socket.socket, *args: str) -> object:
    sock.sendall(encode(*args))
    with sock.makefile("rb") as stream:
        return read_reply(stream)


# -- the search server ------------------------------------------------------------------


# --8<-- [start:server]
class SearchServer:
    """Queries a Redis-backed word index; Redis is started on demand, once."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.config = root / "redis.conf"
        self.controller = (
            Daemon("Redis search server")
            .start_with(["redis-server", str(self.config)])
            .before_start(self.before_start)
            .ping(self.ping)
            .pid(root / "redis.pid")
            .log(root / "redis.log")
            .start_timeout(30)
        )

    def query(self, *words: str) -> list[str]:
        """The documents containing every word (starts Redis if needed)."""
        sock = self.controller.connect(self.open_connection)
        with sock:
            found = call(sock, "SINTER", *(f"term:{word}" for word in words))
        assert isinstance(found, list)
        return sorted(str(doc) for doc in found)

    def redis_pid(self) -> int:
        """The PID Redis reports for itself (to show everybody used one Redis)."""
        with self.controller.connect(self.open_connection) as sock:
            info = call(sock, "INFO", "server")
        fields = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
        return int(fields["process_id"])

    def open_connection(self) -> socket.socket:
        # ConnectionRefusedError here means "not running": connect() starts Redis.
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def ping(self) -> bool:
        """Ready means PING answers +PONG, not just that the port accepts connections."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            try:
                return call(sock, "PING") == "PONG"
            except RedisError:  # LOADING: accepting connections, not yet serving
                return False

    def stop(self) -> None:
        self.controller.stop()

    # --8<-- [end:server]

    # --8<-- [start:before_start]
    # before_start: under the lock, right before Redis is started --------------------

    def before_start(self) -> None:
        with (self.root / "starts.log").open("a") as log:
            log.write(f"started by PID {os.getpid()}\n")
        self.generate_configuration_file()
        if not self.index_exists():
            self.generate_index()

    def generate_configuration_file(self) -> None:
        self.config.write_text(
            "daemonize yes\n"
            f"pidfile {self.root / 'redis.pid'}\n"
            f"logfile {self.root / 'redis.log'}\n"
            "bind 127.0.0.1\n"
            f"port {self.port}\n"
            f"dir {self.data}\n"
            'save ""\n'
            "appendonly yes\n"
            "appendfilename index.aof\n"
            "appendfsync no\n"
        )

    def index_exists(self) -> bool:
        # Redis >= 7 moves index.aof into appendonlydir/ when it first loads it.
        return (self.data / "index.aof").exists() or (self.data / "appendonlydir").exists()

    def generate_index(self) -> None:
        print(f"   [{os.getpid()}] building the index from {len(DOCUMENTS)} documents")
        self.data.mkdir(exist_ok=True)
        commands = [
            encode("SADD", f"term:{word}", doc)
            for doc, text in DOCUMENTS.items()
            for word in set(text.split())
        ]
        (self.data / "index.aof").write_bytes(b"".join(commands))

    # --8<-- [end:before_start]


# -- several processes querying at once ---------------------------------------------------


# --8<-- [start:worker]
def worker(root: str, port: int, words: list[str], barrier: Any, results: Any) -> None:  # noqa: ANN401 - multiprocessing proxies
    """One process: wait for all the others, then query at the same moment."""
    logging.basicConfig(level=logging.INFO, format="   [log] %(message)s", stream=sys.stdout)
    server = SearchServer(Path(root), port)
    barrier.wait()
    found = server.query(*words)
    results.put((os.getpid(), words, found, server.redis_pid()))
    # --8<-- [end:worker]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        return 1
    logging.basicConfig(level=logging.INFO, format="   [log] %(message)s", stream=sys.stdout)
    root = Path(tempfile.mkdtemp(prefix="dc-redis-search-"))
    port = free_port()
    server = SearchServer(root, port)
    ok = True
    try:
        print(f"1. Redis running before the first query? {server.controller.is_running()}")
        queries = [["quick"], ["lazy"], ["daemon", "controller"], ["quick", "the"]] * 2
        print(f"2. {len(queries)} processes query at once:")
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(queries))
        results = context.Queue()
        procs = [
            context.Process(
                target=worker, args=(str(root), port, words, barrier, results), daemon=True
            )
            for words in queries
        ]
        for proc in procs:
            proc.start()
        answers = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        for pid, words, found, redis_pid in sorted(answers):
            print(f"   process {pid}: {' '.join(words)!r} -> {found} (Redis PID {redis_pid})")
        starts = (root / "starts.log").read_text().splitlines()
        redis_pids = {redis_pid for *_, redis_pid in answers}
        print(f"3. Redis was started {len(starts)} time(s); the queries used PIDs {redis_pids}")
        ok = len(starts) == 1 and redis_pids == {server.controller.read_pid()}
        print(f"4. A later query reuses it: {server.query('fox')}")
        ok = ok and len((root / "starts.log").read_text().splitlines()) == 1
    finally:
        server.stop()
        print(f"5. Stopped; running: {server.controller.is_running()}")
        shutil.rmtree(root, ignore_errors=True)
    print("OK" if ok else "FAILED: Redis was not started exactly once")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
