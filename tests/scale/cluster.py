"""A real three-master Redis Cluster on 127.0.0.1, for tests/scale/test_cluster.py.

Three ``redis-server --cluster-enabled yes`` on free ports (client and cluster-bus ports both
picked at run time), joined by ``redis-cli --cluster create ... --cluster-yes``, which
returns once every node agrees on the slots; then each node is asked until it says
``cluster_state:ok``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.scale.sentinels import HOST, REDIS_SERVER, Process, free_ports

REDIS_CLI = shutil.which("redis-cli")


@dataclass
class Cluster:
    root: Path
    masters: int = 3
    ports: list[int] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)

    def start(self) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH")
        picked = free_ports(2 * self.masters)
        self.ports, buses = picked[: self.masters], picked[self.masters :]
        for port, bus in zip(self.ports, buses, strict=True):
            directory = self.root / f"cluster-{port}"
            directory.mkdir()
            argv = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--dir", str(directory)]
            argv += ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            argv += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
            argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
            process = Process(f"cluster-{port}", argv, directory)
            process.start()
            self.processes.append(process)
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *self.addresses, "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = created.stdout.decode(errors="replace")
        assert created.returncode == 0, out + created.stderr.decode(errors="replace")
        assert "All 16384 slots covered" in out, out
        deadline = time.monotonic() + 30
        while not all(self._ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise AssertionError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        with redis.Redis(HOST, port, socket_timeout=5, decode_responses=True) as r:
            info = r.execute_command("CLUSTER", "INFO")
        return "cluster_state:ok" in str(info)

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self.ports]

    def owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        with redis.Redis(HOST, self.ports[0], socket_timeout=5) as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_replicas in r.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"no master serves the slot of {key!r}")

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node: what it refuses, it refuses itself."""
        return redis.Redis(HOST, port, socket_timeout=5, decode_responses=True)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
