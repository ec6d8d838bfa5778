"""The allocation hash records how the last canary ended, and only a canary writes it.

``canary status`` tells the operator how the last canary ended from the hash's ``ended``
field. A flip that is no canary's (a switch, a bump) must leave it alone: without a canary
ever run there is no hash at all, and after one the record names the canary's own end, not
the flips that came after it. Against a real redis-server, through :class:`Rollout`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Color
from supervisor.errors import Refused
from supervisor.rollout import Mode
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on

STEPS = (5.0, 20.0, 50.0, 100.0)


async def test_flips_outside_a_canary_leave_the_last_canarys_record_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.bump("restart")
        await rollout.switch(Color.GREEN, "uid:0")
        await rollout.switch(Color.BLUE, "uid:0")
        assert await rollout.arbiter.alloc() == {}  # no canary ever ran: no record of one

        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        await rollout.canary_abort("canary_abort: by hand", "uid:0")
        ended = await rollout.arbiter.alloc()
        assert (ended["mode"], ended["ended"]) == ("off", "canary_abort: by hand")

        await rollout.bump("restart")
        await rollout.switch(Color.GREEN, "uid:0")
        assert await rollout.arbiter.alloc() == ended


async def test_confirm_during_a_canary_is_refused_and_changes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """In a canary the candidate is not in charge (stable keeps the active key): nothing to
    confirm until it is promoted to 100 %."""
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, STEPS, "uid:0")
        before = (rollout.state.stable, rollout.state.candidate, rollout.state.mode)
        assert before == (Color.BLUE, Color.GREEN, Mode.CANARY)
        count = len(changes)
        with pytest.raises(Refused) as refused:
            await rollout.confirm("uid:0")
        assert refused.value.code == "no_candidate"
        assert (rollout.state.stable, rollout.state.candidate, rollout.state.mode) == before
        assert redis_server.cli("HGET", "t:rollout", "stable") == "blue"
        assert len(changes) == count
