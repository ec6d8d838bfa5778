"""What an operator's word does to the record (``Rollout.confirm``, ``Rollout.canary_start``):
a confirm is reported like every change (the decision log, the metrics and the status follow
the reports), and starting a canary of a rejected version lifts its rejection, as a switch to
it does. Against a real redis-server, through :class:`Rollout`."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import Color
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_a_confirm_is_reported(redis_server: RedisServer, tmp_path: Path) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, changes):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        change = await rollout.confirm("uid:0")
        assert changes[-1] == change
        assert (change.kind, change.active, change.by) == ("confirm", Color.GREEN, "uid:0")
        assert (rollout.state.stable, rollout.state.candidate) == (Color.GREEN, None)


async def test_a_canary_of_a_rejected_version_lifts_its_rejection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        await rollout.rollback("exception: x", "guard", automatic=True, color=Color.GREEN)
        assert rollout.state.rejected == {Color.GREEN: "2.0.0"}
        await rollout.canary_start(Color.GREEN, (5.0, 100.0), "uid:0")
        assert rollout.state.rejected == {}
        assert redis_server.cli("HGET", "t:rollout", "rejected_green") == ""


async def test_a_switch_to_the_candidate_of_a_canary_lifts_a_rejection_the_record_holds(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The record read back names the canary's candidate rejected (written by hand, or by
    another version: canary_start itself lifts it): the operator's switch lifts it still."""
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.canary_start(Color.GREEN, (5.0, 100.0), "uid:0")
    redis_server.cli("HSET", "t:rollout", "rejected_green", "2.0.0")
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        assert rollout.state.rejected == {Color.GREEN: "2.0.0"}
        await rollout.switch(Color.GREEN, "uid:0")
        s = rollout.state
        assert (s.active, s.candidate, s.rejected) == (Color.GREEN, Color.GREEN, {})


async def test_an_operators_set_to_a_rejected_color_lifts_its_rejection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The SET is adopted as a switch (the operator's word): the rejection goes, in the
    rollout's state as in Redis, and stays gone when the record is written again."""
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        await rollout.rollback("exception: x", "guard", automatic=True, color=Color.GREEN)
        assert rollout.state.rejected == {Color.GREEN: "2.0.0"}
        redis_server.cli("SET", "agent:active_version", "green")
        change = await rollout.reconcile()
        assert change is not None
        s = rollout.state
        assert (s.active, s.candidate, s.rejected) == (Color.GREEN, Color.GREEN, {})
        await rollout.bump("restart")  # writes the record again
        assert redis_server.cli("HGET", "t:rollout", "rejected_green") == ""
