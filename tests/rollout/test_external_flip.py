"""Another writer flipped to the other color at a higher epoch (its key, its owner and its
epoch all agree: a flip, not an operator's bare SET): the rollout adopts it, on probation, and
does not take it for a Redis gone back in time (that is an epoch below ours, or the grant
counter behind). Against a real redis-server, through :class:`Rollout`."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Color
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_a_flip_by_another_writer_at_a_higher_epoch_is_adopted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        ours = rollout.state.epoch
        redis_server.cli("SET", "t:epoch", str(ours + 4))
        redis_server.cli("SET", "t:epoch:owner", "green")
        redis_server.cli("SET", "agent:active_version", "green")
        change = await rollout.reconcile()
        assert change is not None
        s = rollout.state
        assert (s.active, s.stable, s.candidate) == (Color.GREEN, Color.BLUE, Color.GREEN)
        assert s.epoch > ours + 4
        assert redis_server.cli("GET", "agent:active_version") == "green"
