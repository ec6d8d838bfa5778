"""The canary's changes of who acts, one flip each, against a real redis-server: what the
rollout writes, what a daemon that starts again adopts, and what ends a canary."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Color
from supervisor.errors import Refused
from supervisor.rollout import Mode
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on

STEPS = (5.0, 20.0, 50.0, 100.0)


async def test_each_step_is_one_flip_and_the_split_follows_the_epoch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        start = await rollout.canary_start(Color.GREEN, STEPS, "uid:0", allowance=0.02)
        assert (start.active, start.epoch, start.reason) == (Color.BLUE, 2, "canary_start: 5%")
        assert rollout.assignment(Color.GREEN).role == "canary"
        assert rollout.assignment(Color.BLUE).allocation == pytest.approx(0.95)
        alloc = redis_server.cli("HGETALL", "t:alloc").split("\n")
        fields = dict(zip(alloc[::2], alloc[1::2], strict=True))
        assert (fields["mode"], fields["epoch"], fields["candidate"]) == ("canary", "2", "green")
        assert (fields["allocation"], fields["allowance"], fields["stake_green"]) == (
            "0.05",
            "0.02",
            "0",
        )
        assert redis_server.cli("HGET", "t:rollout", "canary_steps") == "5,20,50,100"
        # A bump within the step (the acting child restarted): the split is written again at
        # the new epoch, the stakes kept.
        redis_server.cli("HSET", "t:alloc", "stake_green", "3.5")
        await rollout.bump("restart")
        assert redis_server.cli("HMGET", "t:alloc", "epoch", "stake_green") == "3\n3.5"
        step = await rollout.canary_promote("uid:0")
        assert (step.epoch, step.reason) == (4, "canary_step: 20% (promote)")
        assert redis_server.cli("HMGET", "t:alloc", "allocation", "stake_green") == "0.2\n0"
        await rollout.canary_set(35.0, "uid:0")
        assert rollout.state.canary is not None
        assert (rollout.state.canary.step, rollout.state.canary.percent) == (1, 35.0)
        with pytest.raises(Refused, match="moved"):
            await rollout.canary_promote("judge", expect_since=123.0)
        done = await rollout.canary_promote("uid:0")  # 35 -> 50
        assert done.reason == "canary_step: 50% (promote)"
        full = await rollout.canary_promote("uid:0")
        assert (full.active, full.reason) == (Color.GREEN, "canary_promote: 100% (promote)")
        s = rollout.state
        assert (s.mode, s.candidate, s.stable, s.canary) == (
            Mode.BLUE_GREEN,
            Color.GREEN,
            Color.BLUE,
            None,
        )
        assert s.probation_since is not None
        assert redis_server.cli("HGET", "t:alloc", "mode") == "off"
        assert redis_server.cli("HGET", "t:rollout", "canary_steps") == ""
        assert [c.epoch for c in changes] == [1, 2, 3, 4, 5, 6, 7]


async def test_an_automatic_abort_rejects_the_version_and_an_operators_does_not(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        await rollout.canary_abort("canary_abort: by hand", "uid:0")
        assert (rollout.state.mode, rollout.state.rejected) == (Mode.BLUE_GREEN, {})
        assert await rollout.canary_abort("x", "judge", automatic=True) is None  # no canary
        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        # A trigger's rollback aborts a canary as it rolls back a candidate in charge.
        change = await rollout.rollback(
            "exception: boom", "guard", trigger="exception", automatic=True, color=Color.GREEN
        )
        assert change is not None
        assert change.active is Color.BLUE
        assert (rollout.state.mode, rollout.state.rejected) == (
            Mode.BLUE_GREEN,
            {Color.GREEN: "2.0.0"},
        )
        assert redis_server.cli("HGET", "t:alloc", "ended") == "exception: boom"


async def test_a_daemon_that_starts_again_continues_the_step_unless_the_split_went_stale(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path / "a") as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        await rollout.canary_set(20.0, "uid:0")
    async with rollout_on(redis_server, tmp_path / "a") as (again, _):
        change = await again.start(Color.BLUE)
        c = again.state.canary
        assert c is not None
        assert (again.state.mode, c.step, c.percent, change.epoch) == (Mode.CANARY, 1, 20.0, 4)
        assert redis_server.cli("HGET", "t:alloc", "epoch") == "4"
    # Someone bumped the epoch while no daemon ran: the fence ended the canary then.
    redis_server.cli("INCR", "t:epoch")
    async with rollout_on(redis_server, tmp_path / "a") as (third, _):
        await third.start(Color.BLUE)
        s = third.state
        assert (s.mode, s.candidate, s.active, s.canary) == (
            Mode.BLUE_GREEN,
            None,
            Color.BLUE,
            None,
        )


async def test_an_operators_set_or_incrby_during_a_canary(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        # INCRBY: the split is written again above it (the canary goes on).
        redis_server.cli("INCRBY", "t:epoch", "10")
        change = await rollout.reconcile()
        assert change is not None
        assert change.epoch == 13
        assert rollout.state.mode is Mode.CANARY
        assert redis_server.cli("HGET", "t:alloc", "epoch") == "13"
        # A SET of the active key to the candidate: adopted as a switch; the canary is over.
        redis_server.cli("SET", "agent:active_version", "green")
        change = await rollout.reconcile()
        assert change is not None
        s = rollout.state
        assert (s.mode, s.active, s.candidate, s.canary) == (
            Mode.BLUE_GREEN,
            Color.GREEN,
            Color.GREEN,
            None,
        )
        assert redis_server.cli("HGET", "t:alloc", "epoch") == "13"  # stale: not in force
