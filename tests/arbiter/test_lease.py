"""The namespace lease as the daemon keeps it (arbiter/lease.py), against a real redis-server
that goes away, comes back empty, or is handed a holder: taking it at a start, renewing it,
fencing the children while it cannot be renewed, and stopping when another daemon has it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import orjson
import pytest
from redis.asyncio import Redis

from supervisor.arbiter.arbiter import Arbiter
from supervisor.arbiter.lease import Lease
from supervisor.arbiter.scripts import Keys
from supervisor.config import SupervisorSection
from supervisor.errors import NamespaceHeld
from supervisor.metrics import Metrics
from tests.redis_server import RedisServer, short_tempdir

KEYS = Keys("t", "t:active_version")
TTL_S = 1.0
WAIT_S = 10.0  # far above any TTL here: a wait that runs out is a failure, not a timing


class Kept:
    """One daemon's side of the lease: its arbiter, its Lease, and what the Lease told it."""

    def __init__(
        self, redis_url: str, state_dir: Path, held: Literal["refuse", "wait"] = "refuse"
    ) -> None:
        self.arbiter = Arbiter(Redis.from_url(redis_url), KEYS, state_dir, permit_ttl_s=60)
        settings = SupervisorSection(namespace="t", lease_ttl_s=TTL_S, on_lease_held=held)
        self.fences: asyncio.Queue[bool] = asyncio.Queue()
        self.lost: asyncio.Queue[str] = asyncio.Queue()
        self.metrics = Metrics()
        self.lease = Lease(
            self.arbiter,
            settings,
            self.metrics,
            on_fenced=self.fences.put_nowait,
            on_lost=self.lost.put_nowait,
        )

    async def close(self) -> None:
        self.arbiter.journal.close()
        await self.arbiter.redis.aclose()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    directory = short_tempdir("as-l-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def kept(redis_server: RedisServer, state_dir: Path) -> AsyncIterator[Kept]:
    k = Kept(redis_server.url, state_dir / "a")
    yield k
    await k.close()


async def keeping(kept: Kept) -> asyncio.Task[None]:
    await asyncio.wait_for(kept.lease.take(), WAIT_S)
    return asyncio.create_task(kept.lease.keep())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_start_waits_for_redis_and_then_takes_the_lease(
    kept: Kept, redis_server: RedisServer
) -> None:
    redis_server.stop()
    taking = asyncio.create_task(kept.lease.take())
    done, _ = await asyncio.wait({taking}, timeout=TTL_S)
    assert not done, "took a lease with Redis down"
    redis_server.start()
    await asyncio.wait_for(taking, WAIT_S)
    assert redis_server.cli("GET", KEYS.lease) == kept.arbiter.lease_value
    assert kept.metrics.lease_held._value.get() == 1


async def test_a_start_after_redis_lost_the_lease_leaves_it_to_its_live_holder(
    kept: Kept, redis_server: RedisServer, state_dir: Path
) -> None:
    """Found by the chaos run: Redis restarted empty (here: flushed) while the holder lives;
    a daemon started then must see the holder renew over its claim, and refuse."""
    renewing = await keeping(kept)
    second = Kept(redis_server.url, state_dir / "b")
    try:
        redis_server.cli("FLUSHALL")
        held = r"supervised by another daemon \(host .+, pid \d+, since"
        with pytest.raises(NamespaceHeld, match=held):
            await asyncio.wait_for(second.lease.take(), WAIT_S)
        assert redis_server.cli("GET", KEYS.lease) == kept.arbiter.lease_value
        assert kept.lost.empty()
        assert kept.fences.empty()
    finally:
        await stop(renewing)
        await second.close()


async def test_a_claim_nobody_renews_over_is_taken_a_ttl_later(
    kept: Kept, redis_server: RedisServer
) -> None:
    assert redis_server.cli("EXISTS", KEYS.lease) == "0"  # a new namespace
    await asyncio.wait_for(kept.lease.take(), WAIT_S)
    assert redis_server.cli("GET", KEYS.lease) == kept.arbiter.lease_value


async def test_a_waiting_start_takes_over_at_once_when_the_holder_lets_go(
    kept: Kept, redis_server: RedisServer, state_dir: Path
) -> None:
    renewing = await keeping(kept)
    waiter = Kept(redis_server.url, state_dir / "b", held="wait")
    try:
        taking = asyncio.create_task(waiter.lease.take())
        done, _ = await asyncio.wait({taking}, timeout=TTL_S)
        assert not done, "took a lease its holder renews"
        await stop(renewing)
        await kept.arbiter.release_lease()
        await asyncio.wait_for(taking, TTL_S * 3)  # the release marker: no claim to wait out
        assert redis_server.cli("GET", KEYS.lease) == waiter.arbiter.lease_value
    finally:
        await waiter.close()


async def test_the_children_stand_by_while_the_lease_cannot_be_renewed(
    kept: Kept, redis_server: RedisServer
) -> None:
    renewing = await keeping(kept)
    try:
        redis_server.stop()
        assert await asyncio.wait_for(kept.fences.get(), WAIT_S) is True
        assert kept.lease.fenced
        assert kept.metrics.lease_held._value.get() == 0
        redis_server.start()  # empty: the holder takes it back at its next renewal
        assert await asyncio.wait_for(kept.fences.get(), WAIT_S) is False
        assert redis_server.cli("GET", KEYS.lease) == kept.arbiter.lease_value
        assert kept.metrics.lease_held._value.get() == 1
        assert kept.lost.empty()
    finally:
        await stop(renewing)


async def test_a_holder_that_finds_its_lease_taken_stops(
    kept: Kept, redis_server: RedisServer
) -> None:
    renewing = await keeping(kept)
    other = {"id": "x", "host": "elsewhere.invalid", "pid": 4711, "since": 0.0}
    redis_server.cli("SET", KEYS.lease, orjson.dumps(other).decode())
    assert await asyncio.wait_for(kept.lost.get(), WAIT_S) == "lease lost"
    assert await asyncio.wait_for(kept.fences.get(), WAIT_S) is True
    await asyncio.wait_for(renewing, WAIT_S)  # keep() returns: the daemon stops
    assert not kept.arbiter.holds_lease


async def test_a_lease_restored_to_a_dead_predecessor_is_taken_back(
    kept: Kept, redis_server: RedisServer
) -> None:
    """Redis restored from a dump taken before this daemon replaced one killed with -9."""
    renewing = await keeping(kept)
    try:
        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            check=True,
            capture_output=True,
            text=True,
        )
        dead = {"id": "y", "host": socket.gethostname(), "pid": int(gone.stdout), "since": 0.0}
        raw = orjson.dumps(dead).decode()
        redis_server.cli("SET", KEYS.lease, raw)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while redis_server.cli("GET", KEYS.lease) == raw:
            assert asyncio.get_running_loop().time() < deadline, "never taken back"
            await asyncio.sleep(TTL_S / 10)
        assert redis_server.cli("GET", KEYS.lease) == kept.arbiter.lease_value
        assert kept.lost.empty()
    finally:
        await stop(renewing)
