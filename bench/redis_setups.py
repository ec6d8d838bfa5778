"""What one permit costs on each Redis setup, measured the way the daemon grants it.

For each setup a real redis-server (and, for the last, a real replica of it) is started on
loopback; the daemon's own :class:`~supervisor.arbiter.arbiter.Arbiter` grants permits on
fresh keys (the permit script, then the journal line appended before the child would hear
``ok``), one at a time, and the latency of each is recorded. Beside it, the bare script call:
what an agent with direct permits pays (no journal). With the replica, each grant also waits
for it to hold the write (``WAIT 1``), which is what it takes for a failover never to lose
a grant without the daemon's journal.

    .venv/bin/python bench/redis_setups.py [--permits N]

What each setup guarantees is in the README ("What each Redis setup guarantees").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.arbiter.arbiter import Arbiter
from supervisor.arbiter.scripts import GRANT_LOG_MAXLEN, PERMIT, Keys

# name, redis-server options, with a replica
SETUPS: list[tuple[str, list[str], bool]] = [
    ("no persistence", ["--appendonly", "no"], False),
    ("AOF, fsync every second (the embedded default)", ["--appendfsync", "everysec"], False),
    ("AOF, fsync always", ["--appendfsync", "always"], False),
    ("AOF every second + a replica, WAIT 1 per grant", ["--appendfsync", "everysec"], True),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(directory: Path, options: list[str]) -> Iterator[int]:
    """A redis-server on a free loopback port, in ``directory``; yields the port."""
    directory.mkdir(parents=True)
    port = free_port()
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "yes", "--daemonize", "no", *options]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if b"ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError(f"redis-server {options} did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(port: int, state_dir: Path, n: int, wait: bool) -> tuple[float, ...]:
    redis = Redis(host="127.0.0.1", port=port)
    keys = Keys("b", "b:active_version")
    await redis.set(keys.active, "blue")
    await redis.set(keys.owner, "blue")
    await redis.set(keys.epoch, 1)
    if wait:  # the replica must be in sync before anything is measured
        async with asyncio.timeout(20):
            while int((await redis.info("replication")).get("connected_slaves", 0)) < 1:
                await asyncio.sleep(0.05)
            await redis.wait(1, 5000)
    arbiter = Arbiter(redis, keys, state_dir, 3600)
    arbiter.load_journal()
    script = redis.register_script(PERMIT)
    await script(keys=keys.permit_keys("warm", "blue"), args=["blue", 1, 3600000, "t", 0, "w", 100])
    daemon, bare = [], []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            reason = await arbiter.permit("blue", 1, f"k-{i}", "tok")
            if wait:
                await redis.wait(1, 100)
            daemon.append(time.perf_counter() - t0)
            assert reason == "ok", reason
            t0 = time.perf_counter()
            await script(
                keys=keys.permit_keys(f"d-{i}", "blue"),
                args=["blue", 1, 3600000, "t", 0, f"d-{i}", GRANT_LOG_MAXLEN],
            )
            if wait:
                await redis.wait(1, 100)
            bare.append(time.perf_counter() - t0)
        arbiter.journal.sync()
    finally:
        arbiter.journal.close()
        await redis.aclose()
    return (
        statistics.median(daemon) * 1000,
        pct(daemon, 0.99) * 1000,
        statistics.median(bare) * 1000,
        pct(bare, 0.99) * 1000,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description="What one permit costs on each Redis setup")
    parser.add_argument("--permits", type=int, default=3000)
    args = parser.parse_args()
    rows = []
    for name, options, replica in SETUPS:
        root = Path(tempfile.mkdtemp(prefix="as-rs-", dir="/tmp"))
        try:
            with contextlib.ExitStack() as stack:
                port = stack.enter_context(redis_server(root / "primary", options))
                if replica:
                    stack.enter_context(
                        redis_server(root / "replica", ["--replicaof", "127.0.0.1", str(port)])
                    )
                rows.append((name, *await measure(port, root / "state", args.permits, replica)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"permit cost, {args.permits} grants one at a time, in ms (loopback TCP)")
    print(f"{'setup':50} {'daemon p50':>10} {'p99':>7} {'bare p50':>9} {'p99':>7}")
    for name, d50, d99, b50, b99 in rows:
        print(f"{name:50} {d50:10.3f} {d99:7.3f} {b50:9.3f} {b99:7.3f}")


if __name__ == "__main__":
    asyncio.run(main())
