"""A canary record whose step is its last one below 100 % (read back from Redis: written by
hand, or by another version; `CanaryState.load` accepts it, tests/canary/test_canary_record.py)
promotes to 100 % on the next promotion, the candidate in charge alone on probation, rather
than look for a step past the last. Against a real redis-server, through :class:`Rollout`."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Color
from supervisor.rollout import Mode
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_a_promotion_from_the_last_step_is_the_full_promotion(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, (5.0, 20.0, 100.0), "uid:0")
    # The record names the last step (index 2 of three) at 99.5 %.
    redis_server.cli("HSET", "t:rollout", "canary_step", "2", "canary_percent", "99.5")
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        c = rollout.state.canary
        assert c is not None
        assert (rollout.state.mode, c.step, c.percent) == (Mode.CANARY, 2, 99.5)
        change = await rollout.canary_promote("uid:0")
        s = rollout.state
        assert (change.active, s.mode, s.candidate) == (Color.GREEN, Mode.BLUE_GREEN, Color.GREEN)
        assert s.probation_since is not None
