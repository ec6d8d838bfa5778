"""A canary's candidate put in charge by hand while no daemon ran (``redis-cli SET`` of the
active key, with or without the epoch moving): the next start ends the canary as the running
daemon would have (an operator's switch), and the candidate is on probation with a clock.

Before, a SET without an epoch change left the daemon in canary mode with the candidate holding
the key (the permit script ignores such a split: it acted alone with all the capital while
`canary status` said 5 %), and with one, the candidate had no probation clock and was never
confirmed (found by the mutation run: rollout-24)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Color
from supervisor.rollout.state import Mode
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on

STEPS = (5.0, 20.0, 50.0, 100.0)


@pytest.mark.parametrize("epoch_moved", [True, False], ids=["incr", "set-only"])
async def test_a_canary_ended_by_hand_while_away_is_ended_at_start(
    redis_server: RedisServer, tmp_path: Path, epoch_moved: bool
) -> None:
    async with rollout_on(redis_server, tmp_path) as (r, _):
        await r.start(Color.BLUE)
        running = await r.canary_start(Color.GREEN, STEPS, "uid:0")
        assert r.state.mode is Mode.CANARY
    redis_server.cli("SET", "agent:active_version", "green")
    if epoch_moved:
        redis_server.cli("INCR", "t:epoch")
    async with rollout_on(redis_server, tmp_path) as (r, _):
        started = await r.start(Color.BLUE)
        s = r.state
        assert (s.mode, s.active, s.stable, s.candidate) == (
            Mode.BLUE_GREEN,
            Color.GREEN,
            Color.BLUE,
            Color.GREEN,
        )
        assert s.canary is None
        assert s.probation_since is not None  # on probation, with a clock
        assert started.epoch > running.epoch
        assert r.on_trial(Color.GREEN)
