"""A real Redis Sentinel setup on 127.0.0.1, for the tests and bench/sentinel_failover.py.

A master, one replica and three ``redis-sentinel`` processes (quorum 2), each on a free TCP
port picked at run time (never the host's 6379 / 26379), living in a directory the caller
owns. Everything waits on an event with a deadline: a server's "ready" line, a replica's
"sync finished" line, the sentinels' ``+switch-master`` message.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import PubSub

REDIS_SERVER = shutil.which("redis-server")
REDIS_SENTINEL = shutil.which("redis-sentinel")
HOST = "127.0.0.1"
SERVICE = "agentsup"
# The host's own Redis and Sentinel: never ours.
_HOST_PORTS = frozenset({6379, 26379})


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while picked)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket()
            s.bind((HOST, 0))
            if s.getsockname()[1] in _HOST_PORTS:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class Process:
    """One redis-server or redis-sentinel; its output is read line by line so that a caller
    can wait for a line (``wait_line``) instead of sleeping."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name = name
        self.argv = argv
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self, ready: str = "ready to accept connections", timeout: float = 10.0) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=self.name)
        self._reader.start()
        self.wait_line(ready, timeout)

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, text: str, timeout: float, since: int = 0) -> str:
        """The first output line (from index ``since``) that holds ``text``, any case."""
        needle = text.lower()
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if needle in line.lower():
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"{self.name}: no line with {text!r}; last:\n{tail}")
                self._changed.wait(left)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Node:
    """A redis-server on 127.0.0.1:port."""

    port: int
    process: Process

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=5, decode_responses=True)

    def query(self, *args: str) -> Any:
        with self.client() as r:
            return r.execute_command(*args)


def server_argv(port: int, directory: Path, replica_of: int | None = None) -> list[str]:
    assert REDIS_SERVER is not None
    argv = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
    argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
    if replica_of is not None:
        argv += ["--replicaof", HOST, str(replica_of)]
    return argv


@dataclass
class SentinelSet:
    """A master, a replica and three sentinels watching them as :data:`SERVICE`."""

    root: Path
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    nodes: dict[int, Node] = field(default_factory=dict)
    sentinels: list[Process] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    # --- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        if REDIS_SERVER is None or REDIS_SENTINEL is None:
            raise RuntimeError("redis-server and redis-sentinel must be on PATH")
        master_port, replica_port, *self.sentinel_ports = free_ports(5)
        self.start_node(master_port)
        self.start_node(replica_port, replica_of=master_port)
        for port in self.sentinel_ports:
            directory = self.root / f"sentinel-{port}"
            directory.mkdir()
            conf = directory / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        f"bind {HOST}",
                        "daemonize no",
                        'logfile ""',
                        f"dir {directory}",
                        f"sentinel monitor {SERVICE} {HOST} {master_port} 2",
                        f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                        f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {SERVICE} 1",
                        "",
                    ]
                )
            )
            assert REDIS_SENTINEL is not None
            process = Process(f"sentinel-{port}", [REDIS_SENTINEL, str(conf)], directory)
            process.start(ready="+monitor master")
            self.sentinels.append(process)
        self.wait_watching(master_port, replicas=1)

    def start_node(self, port: int, replica_of: int | None = None) -> Node:
        """Start (or start again, on the same port and directory) a redis-server; a replica
        is returned once its first sync is done."""
        node = self.nodes.get(port)
        if node is None:
            directory = self.root / f"redis-{port}"
            directory.mkdir()
            argv = server_argv(port, directory, replica_of)
            node = Node(port, Process(f"redis-{port}", argv, directory))
            self.nodes[port] = node
        node.process.start()
        if replica_of is not None:
            node.process.wait_line("sync: finished with success", 20)
        return node

    def restart_as_replica(self, port: int, of: int) -> Node:
        """Start a killed node again, on its port and directory, as a replica of ``of`` (a
        failed master coming back); returned once its first sync is done."""
        node = self.nodes[port]
        node.process.argv = server_argv(port, node.process.dir, replica_of=of)
        node.process.start()
        node.process.wait_line("sync: finished with success", 20)
        return node

    def stop(self) -> None:
        for process in [*self.sentinels, *(n.process for n in self.nodes.values())]:
            process.kill()

    # --- what the sentinels say -------------------------------------------------------------
    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self.sentinel_ports]

    def ask(self, port: int, *args: str) -> Any:
        with redis.Redis(HOST, port, socket_timeout=5, decode_responses=True) as r:
            return r.execute_command(*args)

    def master_port(self) -> int:
        """The master the first live sentinel names."""
        for port, process in zip(self.sentinel_ports, self.sentinels, strict=True):
            if process.running:
                _host, master = self.ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                return int(master)
        raise AssertionError("no sentinel runs")

    @property
    def master(self) -> Node:
        return self.nodes[self.master_port()]

    def wait_watching(self, master_port: int, replicas: int, timeout: float = 30.0) -> None:
        """Until every sentinel names ``master_port``, sees ``replicas`` healthy replicas and
        the two other sentinels: only then can it vote for and run a failover. Sentinels
        learn of each other by hello messages every 2 s: there is no event to wait on but
        their own state, asked about every 100 ms."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._watching(port, master_port, replicas) for port in self.sentinel_ports):
                return
            time.sleep(0.1)
        states = [self.ask(port, "SENTINEL", "MASTER", SERVICE) for port in self.sentinel_ports]
        raise AssertionError(f"the sentinels do not watch {master_port} fully: {states}")

    def _watching(self, port: int, master_port: int, replicas: int) -> bool:
        with redis.Redis(HOST, port, socket_timeout=5, decode_responses=True) as r:
            master: dict[str, Any] = r.sentinel_master(SERVICE)
            seen: list[dict[str, Any]] = r.sentinel_slaves(SERVICE)
        # Exactly "master": not down, no failover in progress.
        if master["port"] != master_port or master["flags"] != "master":
            return False
        if master["num-other-sentinels"] != len(self.sentinel_ports) - 1:
            return False
        healthy = [
            replica
            for replica in seen
            if not replica["is_sdown"] and replica.get("master-link-status") == "ok"
        ]
        return len(healthy) >= replicas


Switch = Callable[[float], Awaitable[tuple[int, int]]]


@contextlib.asynccontextmanager
async def switch_listener(group: SentinelSet) -> AsyncIterator[Switch]:
    """Subscribed to ``+switch-master`` on every sentinel (before the failover starts, so that
    the message cannot be missed); yields ``switch``: ``await switch(timeout)`` returns (old
    master port, new master port) of the next failover the sentinels announce."""
    clients = [AsyncRedis(host=HOST, port=p, decode_responses=True) for p in group.sentinel_ports]
    pubsubs = [c.pubsub() for c in clients]
    for p in pubsubs:
        await p.subscribe("+switch-master")
    found: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def read(p: PubSub) -> None:
        while True:
            msg = await p.get_message(ignore_subscribe_messages=True, timeout=None)
            if msg is not None and msg["type"] == "message":
                _name, _oh, old, _nh, new = msg["data"].split()
                found.put_nowait((int(old), int(new)))

    readers = [asyncio.create_task(read(p)) for p in pubsubs]

    async def switch(timeout: float) -> tuple[int, int]:
        async with asyncio.timeout(timeout):
            return await found.get()

    try:
        yield switch
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for p in pubsubs:
            with contextlib.suppress(Exception):
                await p.aclose()  # type: ignore[no-untyped-call]
        for c in clients:
            with contextlib.suppress(Exception):
                await c.aclose()


@contextlib.contextmanager
def sentinel_set(
    root: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
) -> Iterator[SentinelSet]:
    """A started :class:`SentinelSet` in ``root``; every process of it killed on the way out."""
    group = SentinelSet(root, down_after_ms, failover_timeout_ms)
    try:
        group.start()
        yield group
    finally:
        group.stop()
