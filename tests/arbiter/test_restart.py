"""A daemon started again over a Redis that went back in time while no daemon ran: what this
host wrote to state_dir (the epoch reservation, state.json, the permit journal) wins."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from supervisor.arbiter.durable import EpochReservation
from tests.harness import DaemonProcess, running_daemon
from tests.redis_server import RedisServer
from tests.test_fence import ask, both_speaking, order_agent, wait_told
from tests.test_lifecycle import permit

pytestmark = pytest.mark.timeout(120)


async def test_restarted_over_a_redis_that_forgot_grants_it_puts_them_back_first(
    redis_server: RedisServer, orders: Path
) -> None:
    """Redis comes back from a dump taken before two grants, at the same epoch, while the
    daemon is down (killed with -9). Only the journal knows of the grants: the daemon starts
    by putting them back, then who acts, at an epoch above its reservation."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as d:
        await both_speaking(d)
        epoch = await wait_told(d, "blue", "active")
        state = d.state_dir / "state.json"
        async with asyncio.timeout(15):  # written after the start's flip
            while not state.exists() or orjson.loads(state.read_bytes())["epoch"] != epoch:
                await asyncio.sleep(0.05)
        redis_server.cli("SAVE")  # the dump: this epoch, nothing granted yet
        assert (await ask(d, orders, "blue", "order-1"))[0] == "ok"
        assert (await ask(d, orders, "blue", "order-2"))[0] == "ok"
        ceiling = EpochReservation(d.state_dir / "epoch").ceiling
        assert ceiling >= epoch

        await d.signal(signal.SIGKILL)
        await d.wait()
        redis_server.stop(signal.SIGKILL)
        redis_server.start()  # from the dump
        assert redis_server.cli("GET", "t:permits:seq") == ""
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        await again.wait_log("redis_regressed")
        restored = await again.wait_log("flip", reason="restored")
        assert restored["active"] == "blue"
        assert restored["epoch"] > ceiling
        await both_speaking(again)
        now = await wait_told(again, "blue", "active")
        assert now == restored["epoch"]
        assert permit(redis_server, "blue", now, "order-1", token="x") == "duplicate"
        assert (await ask(again, orders, "blue", "order-2"))[0] == "duplicate"
        assert (await ask(again, orders, "blue", "order-3"))[0] == "ok"
        await again.stop()
