"""Stable and candidate over time: probation that passes by itself, a rejected version that
probation never promotes, and an operator's SET racing the daemon's own flips."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from supervisor.arbiter.arbiter import Arbiter
from supervisor.arbiter.scripts import Keys
from supervisor.config import Color
from supervisor.errors import Refused
from supervisor.rollout import Change, Rollout
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


# ------------------------------------------------------------------------------ the rules, one
# Rollout over a real redis-server and no daemon (what bench/mutation.py found untested)


@contextlib.asynccontextmanager
async def rollout_on(
    server: RedisServer, state_dir: Path
) -> AsyncIterator[tuple[Rollout, list[Change]]]:
    """A Rollout and the changes it reports, over ``server``, keeping its files in
    ``state_dir``."""
    arbiter = Arbiter(
        AsyncRedis.from_url(server.url), Keys("t", "agent:active_version"), state_dir, 60
    )
    arbiter.load_journal()
    changes: list[Change] = []
    versions = {Color.BLUE: "1.0.0", Color.GREEN: "2.0.0"}
    try:
        yield Rollout(arbiter, versions, changes.append), changes
    finally:
        arbiter.journal.close()
        arbiter.told.close()
        await arbiter.redis.aclose()


async def test_a_flip_that_finds_the_key_moved_is_refused_and_changes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        assert (rollout.role_of(Color.BLUE), rollout.role_of(Color.GREEN)) == ("active", "standby")
        redis_server.cli("SET", "agent:active_version", "green")  # an operator, this instant
        with pytest.raises(Refused, match="changed to 'green'"):
            await rollout.bump("restart")
        assert (rollout.state.active, rollout.state.epoch, len(changes)) == (Color.BLUE, 1, 1)


async def test_a_restart_over_the_epoch_its_children_were_told_is_no_regression(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        change = await rollout.start(Color.BLUE)
        rollout.arbiter.telling(change.epoch)
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        assert rollout.arbiter.seen == change.epoch  # from the told mark
        await rollout.start(Color.BLUE)
        assert [(c.reason, c.epoch) for c in changes] == [("start", change.epoch + 1)]


async def test_a_first_start_makes_the_initial_color_stable_and_in_charge(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        change = await rollout.start(Color.GREEN)
        assert (change.reason, change.active) == ("start", Color.GREEN)
        assert (rollout.state.stable, rollout.state.candidate) == (Color.GREEN, None)
    redis_server.cli("FLUSHALL")
    redis_server.cli("SET", "agent:active_version", "blue")  # the seed's way, no record
    async with rollout_on(redis_server, tmp_path / "again") as (rollout, _):
        await rollout.start(Color.GREEN)
        assert (rollout.state.active, rollout.state.stable) == (Color.BLUE, Color.BLUE)


async def test_a_color_switched_to_by_hand_while_no_daemon_ran_is_on_probation(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.cli("SET", "agent:active_version", "green")
    redis_server.cli("HSET", "t:rollout", "stable", "blue")
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        before = time.time()
        await rollout.start(Color.BLUE)
        s = rollout.state
        assert (s.active, s.stable, s.candidate) == (Color.GREEN, Color.BLUE, Color.GREEN)
        assert s.probation_since is not None
        assert s.probation_since >= before


async def test_redis_behind_at_start_gets_this_hosts_record_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis went back in time while no daemon ran. With state.json, its record (who acts,
    the candidate, the rejected versions) wins over Redis's; without it, Redis's record is
    all there is, put back above the epoch the children were told."""
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "test")
        rollout.arbiter.telling(rollout.state.epoch)
        await rollout.arbiter.save_known("green", rollout.state.fields())
    redis_server.cli("SET", "t:epoch", "1")  # an older dump: blue in charge, no candidate
    redis_server.cli("SET", "t:epoch:owner", "blue")
    redis_server.cli("SET", "agent:active_version", "blue")
    redis_server.cli("HDEL", "t:rollout", "candidate", "probation_since")
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        assert [c.reason for c in changes] == ["restored"]
        s = rollout.state
        assert (s.active, s.stable, s.candidate) == (Color.GREEN, Color.BLUE, Color.GREEN)
        assert redis_server.cli("GET", "agent:active_version") == "green"
    # No state.json, only the told mark: Redis's record, above the told epoch.
    (tmp_path / "state.json").unlink()
    told = rollout.state.epoch
    redis_server.cli("SET", "t:epoch", "1")
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        assert [c.reason for c in changes] == ["restored"]
        assert (rollout.state.active, rollout.state.candidate) == (Color.GREEN, Color.GREEN)
        assert rollout.state.epoch > told


async def test_a_switch_back_to_stable_ends_probation_and_a_switch_lifts_a_rejection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "test")
        s = rollout.state
        assert (s.stable, s.candidate) == (Color.BLUE, Color.GREEN)
        assert s.probation_since is not None
        await rollout.switch(Color.BLUE, "test")  # back to stable: nobody on probation
        s = rollout.state
        assert (s.active, s.stable, s.candidate, s.probation_since) == (
            Color.BLUE,
            Color.BLUE,
            None,
            None,
        )
        # An operator's switch to a color whose version was rejected is their decision.
        rollout.state.rejected[Color.GREEN] = "2.0.0"
        await rollout.switch(Color.GREEN, "test")
        assert Color.GREEN not in rollout.state.rejected
        assert rollout.state.candidate is Color.GREEN


async def test_a_restore_not_seen_through_is_done_again_whatever_the_counter_says(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The counter in Redis may have been raised over missing keys (a finish that reached a
    Redis restarted mid-restore): a pending restore is redone at the next start."""
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.arbiter.save_known("blue", rollout.state.fields())
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        rollout.arbiter.restore_pending = True
        await rollout.start(Color.BLUE)
        assert [c.reason for c in changes] == ["restored"]
        assert not rollout.arbiter.restore_pending
