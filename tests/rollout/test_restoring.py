"""A permit asked while the executed keys are being put back into Redis is refused.

Redis is told an epoch below the one the daemon knows (an operator's SET of the epoch key):
the reconciler finds Redis regressed and restores its truth, the executed keys first
(``Rollout._restore_truth``). Until they are all back, nothing may be granted: a key not yet
restored would be granted again. The restore is held at a known point, without timing: the
permit journal it reads is swapped for a FIFO, whose ``open`` blocks until the test writes the
journal's bytes into it. A permit asked meanwhile must be answered ``unavailable`` by the
daemon itself (without the ``restoring`` flag, Redis's script answers instead, ``stale_epoch``:
the epoch it holds is not the one the child was told).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.harness import running_daemon
from tests.redis_server import RedisServer
from tests.test_fence import ask, both_speaking, order_agent, wait_told

pytestmark = pytest.mark.timeout(120)


def _write(fd: int, held: Path) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(held.read_bytes())


async def release(fifo: Path, held: Path) -> None:
    """Write the held journal's bytes into ``fifo`` once its reader (the restore) opened it,
    then put the journal back in its place."""
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError:  # ENXIO: nobody reads it yet
                    await asyncio.sleep(0.02)
        os.set_blocking(fd, True)
        await asyncio.to_thread(_write, fd, held)
    finally:
        os.replace(held, fifo)


async def test_a_permit_during_the_restore_of_executed_keys_is_unavailable(
    redis_server: RedisServer, orders: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"redis": {"reconcile_interval_s": 0.2}},
    ) as d:
        await both_speaking(d)
        told = await wait_told(d, "blue", "active")
        assert (await ask(d, orders, "blue", "order-1"))[0] == "ok"
        journal = d.state_dir / "permits.journal"
        await d.wait_status(lambda s: journal.exists() and journal.stat().st_size > 0)

        # The journal the restore will read becomes a FIFO: the restore waits on its open.
        held = journal.with_name("permits.journal.held")
        os.replace(journal, held)
        os.mkfifo(journal)
        mark = len(d.logs)
        try:
            redis_server.cli("SET", "t:epoch", str(told - 1))
            await d.wait_log("redis_regressed", since=mark)
            # Restoring (the flag is set in the same step as that log line), and held there.
            assert (await ask(d, orders, "blue", "order-2"))[0] == "unavailable"
            assert not d.find("grants_restored", mark)
        finally:
            await release(journal, held)

        restored = await d.wait_log("flip", reason="restored", since=mark)
        assert restored["active"] == "blue"
        assert restored["epoch"] > told
        await wait_told(d, "blue", "active", since=mark)
        assert (await ask(d, orders, "blue", "order-1"))[0] == "duplicate"
        assert (await ask(d, orders, "blue", "order-2"))[0] == "ok"
