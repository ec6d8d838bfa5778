"""An active key that names no color stops everyone (fail closed) and forgets nothing.

The operator writes a value that is not a color while green is the candidate on probation:
nobody acts until a switch, and the rollout record (what `agentsup status` shows, what a
daemon started again reads) still names green the candidate, on probation since the same
time. Only a canary is ended by such a change (``Rollout._end_canary`` leaves blue-green
state alone). Against a real redis-server, through :class:`Rollout`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Color
from supervisor.errors import Refused
from supervisor.rollout import Mode
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_a_value_that_is_not_a_color_keeps_the_candidate_and_its_probation(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        since = rollout.state.probation_since
        assert (rollout.state.candidate, since is not None) == (Color.GREEN, True)

        redis_server.cli("SET", "agent:active_version", "purple")
        change = await rollout.reconcile()
        assert change is not None
        s = rollout.state
        assert (s.active, s.mode, s.stable) == (None, Mode.BLUE_GREEN, Color.BLUE)
        assert (s.candidate, s.probation_since) == (Color.GREEN, since)
        assert redis_server.cli("HGET", "t:rollout", "candidate") == "green"


async def test_no_canary_starts_while_nobody_acts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A canary splits the capital between stable (acting) and the candidate: with nobody in
    charge there is no stable to keep the rest, so it is refused until a switch."""
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        redis_server.cli("SET", "agent:active_version", "purple")
        assert await rollout.reconcile() is not None
        count = len(changes)
        with pytest.raises(Refused) as refused:
            await rollout.canary_start(Color.GREEN, (5.0, 100.0), "uid:0")
        assert refused.value.code == "nobody_in_charge"
        assert (rollout.state.mode, rollout.state.candidate, len(changes)) == (
            Mode.BLUE_GREEN,
            None,
            count,
        )
        assert redis_server.cli("HGET", "t:alloc", "mode") == ""


async def test_an_invalid_value_is_adopted_once_and_a_deleted_key_puts_back_who_acted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        redis_server.cli("DEL", "agent:active_version")
        restored = await rollout.reconcile()
        assert restored is not None
        assert (restored.active, restored.reason) == (Color.GREEN, "restored")  # not stable
        assert redis_server.cli("GET", "agent:active_version") == "green"

        redis_server.cli("SET", "agent:active_version", "purple")
        assert await rollout.reconcile() is not None
        epoch, count = rollout.state.epoch, len(changes)
        assert await rollout.reconcile() is None  # the same invalid value: nothing more
        assert (rollout.state.epoch, len(changes)) == (epoch, count)


async def test_an_invalid_value_ends_a_canary(redis_server: RedisServer, tmp_path: Path) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, (5.0, 100.0), "uid:0")
        redis_server.cli("SET", "agent:active_version", "purple")
        assert await rollout.reconcile() is not None
        s = rollout.state
        assert (s.active, s.mode, s.canary, s.candidate) == (None, Mode.BLUE_GREEN, None, None)
        assert redis_server.cli("HGET", "t:alloc", "mode") == "off"
