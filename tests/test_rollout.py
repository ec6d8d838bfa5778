"""Stable and candidate over time: probation that passes by itself, a rejected version that
probation never promotes, and an operator's SET racing the daemon's own flips."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
import redis

from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer
from tests.test_lifecycle import permit

pytestmark = pytest.mark.timeout(120)

RAW = [PY, "tests/agents/raw_agent.py"]


async def both_speaking(d: DaemonProcess) -> dict[str, Any]:
    return await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))


async def test_probation_passed_makes_the_candidate_stable_by_itself(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
        sections={"rollout": {"probation_s": 1.0}},
    ) as d:
        await both_speaking(d)
        assert (await d.cli("switch", "green")).rc == 0
        st = await d.status()
        assert (st["stable"], st["candidate"]) == ("blue", "green")
        confirmed = await d.wait_log("confirmed", by="probation", timeout=20)
        assert confirmed["stable"] == "green"
        st = await d.status()
        assert (st["active"], st["stable"], st["candidate"]) == ("green", "green", None)
        assert redis_server.cli("HGET", "t:rollout", "stable") == "green"


async def test_a_rejected_version_is_never_promoted_by_probation(
    redis_server: RedisServer,
) -> None:
    """Green's version was rejected by an automatic rollback, yet green is the candidate in
    charge (Redis says so at start): its probation may pass, but only an operator promotes it."""
    redis_server.cli("SET", "agent:active_version", "green")
    redis_server.cli("SET", "t:epoch", "5")
    redis_server.cli("SET", "t:epoch:owner", "green")
    redis_server.cli(
        "HSET",
        "t:rollout",
        "stable",
        "blue",
        "candidate",
        "green",
        "probation_since",
        f"{time.time() - 100:.3f}",
        "rejected_green",
        "2.0.0",
    )
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
        sections={"rollout": {"probation_s": 0.5}},
    ) as d:
        st = await both_speaking(d)
        assert (st["active"], st["candidate"], st["rejected"]) == (
            "green",
            "green",
            {"green": "2.0.0"},
        )
        # Long past its window, over many housekeeping ticks (4 per second).
        await d.wait_status(lambda s: s["uptime_s"] > 3.0)
        assert not d.find("confirmed")
        st = await d.status()
        assert (st["stable"], st["candidate"]) == ("blue", "green")
        # The operator's word still promotes it.
        assert (await d.cli("confirm")).rc == 0
        st = await d.status()
        assert (st["stable"], st["candidate"], st["rejected"]) == ("green", None, {})


async def settled(d: DaemonProcess, redis_server: RedisServer) -> dict[str, Any]:
    """Wait until the daemon, Redis and both children agree on who acts and the epoch."""

    def agreed(st: dict[str, Any]) -> bool:
        active = redis_server.cli("GET", "agent:active_version")
        owner = redis_server.cli("GET", "t:epoch:owner")
        epoch = int(redis_server.cli("GET", "t:epoch") or 0)
        told = {c: st["children"][c]["told_epoch"] for c in ("blue", "green")}
        return (
            st["active"] == active == owner
            and st["epoch"] == epoch
            and set(told.values()) == {epoch}
            and st["children"][active]["role"] == "active"
        )

    return await d.wait_status(agreed, timeout=20)


async def test_an_operator_set_racing_a_switch_and_a_rollback_settles_consistently(
    redis_server: RedisServer,
) -> None:
    """The operator's SET lands while the daemon flips: whatever the interleaving, the end is
    one color in charge, owning the epoch Redis holds, both children told it, and every epoch
    in the flips stream higher than the one before."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
        sections={"rollout": {"probation_s": 0}},
    ) as d:
        await both_speaking(d)
        for n in range(6):
            other = "green" if n % 2 == 0 else "blue"
            command = ("switch", other) if n % 3 else ("rollback",)
            st = await d.status()
            await asyncio.gather(
                asyncio.to_thread(redis_server.cli, "SET", "agent:active_version", st["stable"]),
                d.cli(*command),
            )
            st = await settled(d, redis_server)
            active, epoch = st["active"], st["epoch"]
            loser = "blue" if active == "green" else "green"
            assert permit(redis_server, loser, epoch, f"race-{n}-x") == "not_active"
            assert permit(redis_server, active, epoch, f"race-{n}") == "ok"
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            epochs = [int(fields["epoch"]) for _, fields in r.xrange("t:flips")]
        finally:
            r.close()
        assert len(epochs) >= 3
        assert all(a < b for a, b in itertools.pairwise(epochs)), epochs


async def test_a_rollout_record_written_by_hand_with_garbage_does_not_stop_the_daemon(
    redis_server: RedisServer,
) -> None:
    redis_server.cli(
        "HSET", "t:rollout", "stable", "purple", "probation_since", "soon", "mode", "chaos"
    )
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=agent(RAW, "2.0.0")
    ) as d:
        st = await both_speaking(d)
        assert (st["active"], st["stable"], st["mode"], st["probation_since"]) == (
            "blue",
            "blue",
            "blue-green",
            None,
        )
