"""What the gates read of one deployment, and what a deploy drives: the parts, not the
deployment itself (supervisor/deployment.py builds these from its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from supervisor.config import Color

if TYPE_CHECKING:
    from supervisor.arbiter.arbiter import Arbiter
    from supervisor.children.process import Child
    from supervisor.guard.escrow import EscrowGap
    from supervisor.handoff import Handoffs
    from supervisor.rollout import Change, Rollout


class DeploymentWorld:
    """:class:`~supervisor.gates.gates.World` and :class:`~supervisor.gates.deploy.Steps`
    over the deployment's parts."""

    def __init__(
        self,
        *,
        children: Mapping[Color, Child],
        rollout: Rollout,
        handoff: Handoffs,
        escrow: EscrowGap,
        arbiter: Arbiter,
        redis_up: asyncio.Event,
        switch: Callable[[Color, str, float], Any],
        canary_start: Callable[[Color, list[float] | None, str], Any],
        record: Callable[[str, dict[str, Any], Color], object],
    ) -> None:
        self.children = children
        self.rollout = rollout
        self.handoff = handoff
        self.escrow = escrow
        self.arbiter = arbiter
        self._redis_up = redis_up
        self._switch = switch
        self._canary_start = canary_start
        self._record = record

    # World ----------------------------------------------------------------------------------
    def redis_up(self) -> bool:
        return self._redis_up.is_set()

    def replicas(self) -> int:
        return self.arbiter.replica_count

    def active(self) -> Color | None:
        return self.rollout.state.active

    def child_state(self, color: Color) -> str:
        return self.children[color].state.value

    def capable(self, color: Color) -> str | None:
        return self.handoff.capable(color)

    def keeps_state(self, color: Color) -> bool:
        hello = self.children[color].hello
        return hello is not None and "snapshot" in (hello.get("capabilities") or [])

    def snapshot_age(self, color: Color, now: float) -> float | None:
        snap = self.handoff.store.latest.get(color)
        return snap.age(now) if snap is not None else None

    def escrow_dues(self) -> list[tuple[str, float]]:
        return self.escrow.due_times()

    # Steps ----------------------------------------------------------------------------------
    async def snapshot(self, color: Color) -> dict[str, Any]:
        return await self.handoff.snapshot_now(color)

    async def handoff_to(self, color: Color, dry_run: bool, by: str) -> dict[str, Any]:
        return await self.handoff.handoff(color, dry_run=dry_run, by=by)

    async def switch(self, color: Color, by: str, started: float) -> Change:
        change: Change = await self._switch(color, by, started)
        return change

    async def canary_start(self, color: Color, steps: list[float] | None, by: str) -> Change:
        change: Change = await self._canary_start(color, steps, by)
        return change

    def record(self, kind: str, fields: dict[str, Any], color: Color) -> None:
        self._record(kind, fields, color)
