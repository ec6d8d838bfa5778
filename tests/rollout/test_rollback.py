"""An automatic rollback acts on the verdict's color only while that color is the acting
candidate (``Rollout.rollback``): a verdict against stable, or one that arrives after its
candidate was already rolled back, changes nothing and rejects nothing. The responder checks
this too; the rollout must hold on its own. Against a real redis-server."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Color
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_an_automatic_rollback_for_a_color_not_on_trial_changes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        assert await rollout.rollback("x", "guard", automatic=True) is None  # no candidate
        await rollout.switch(Color.GREEN, "uid:0")
        before = (rollout.state.active, rollout.state.candidate, rollout.state.epoch)
        count = len(changes)

        # A verdict against stable blue (not acting): green goes on, on probation.
        blue = await rollout.rollback("exception: x", "guard", automatic=True, color=Color.BLUE)
        assert blue is None
        assert (rollout.state.active, rollout.state.candidate, rollout.state.epoch) == before
        assert (rollout.state.rejected, len(changes)) == ({}, count)

        green = await rollout.rollback("exception: y", "guard", automatic=True, color=Color.GREEN)
        assert green is not None
        assert (green.active, rollout.state.rejected) == (Color.BLUE, {Color.GREEN: "2.0.0"})
        # A second verdict against green, late: green no longer acts, nothing more happens.
        late = await rollout.rollback("exception: z", "guard", automatic=True, color=Color.GREEN)
        assert late is None
        assert len(changes) == count + 1
