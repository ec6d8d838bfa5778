"""A rollback that finds Redis down (``Rollout.rollback``): an automatic one is kept and
applied when Redis answers again, timed from its trigger; an operator's is refused and kept
for nothing (the operator sees the error and decides again: it never comes back later as an
automatic rollback that rejects the version). Against a real redis-server, stopped and started
again (empty: the rollout puts its truth back)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from supervisor.config import Color
from supervisor.errors import RedisUnavailable
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_on


async def test_an_automatic_rollback_is_applied_when_redis_returns_timed_from_its_trigger(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        redis_server.stop()
        fired = time.monotonic() - 5.0  # the verdict came a while before the rollback ran
        with pytest.raises(RedisUnavailable):
            await rollout.rollback(
                "exception: boom",
                "guard",
                trigger="exception",
                automatic=True,
                color=Color.GREEN,
                started=fired,
            )
        assert rollout.describe()["pending_rollback"] == "exception: boom"
        redis_server.start()
        change = await rollout.reconcile()
        assert change is not None
        assert (change.active, change.reason, change.trigger) == (
            Color.BLUE,
            "exception: boom",
            "exception",
        )
        assert change.started == fired
        assert rollout.state.rejected == {Color.GREEN: "2.0.0"}


async def test_an_operators_rollback_while_redis_is_down_is_not_kept_for_later(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with rollout_on(redis_server, tmp_path) as (rollout, _):
        await rollout.start(Color.BLUE)
        await rollout.switch(Color.GREEN, "uid:0")
        redis_server.stop()
        with pytest.raises(RedisUnavailable):
            await rollout.rollback("rollback", "uid:0")
        assert rollout.describe()["pending_rollback"] is None
        redis_server.start()
        await rollout.reconcile()  # Redis came back empty: green's truth is put back
        s = rollout.state
        assert (s.active, s.candidate, s.rejected) == (Color.GREEN, Color.GREEN, {})
        assert redis_server.cli("GET", "agent:active_version") == "green"
