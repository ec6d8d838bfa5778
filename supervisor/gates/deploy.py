"""``agentsup deploy COLOR``: the gates, then the handoff, then the switch or the canary's first
step (docs/gates.md).

Refused (``gates_closed``) naming every closed gate. ``--force`` goes past them only with a
reason, and the override is written where people look afterwards: the flip's ``by`` in the
flips stream, a ``deploy`` record in the decision log, a log line and an alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from supervisor.config import Color
from supervisor.errors import Refused
from supervisor.gates.gates import Gates, GateState, summary
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout import Change

log = get_logger("deploy")

Strategy = Literal["blue-green", "canary"]


class Steps(Protocol):
    """What a deploy drives (the deployment gives it)."""

    def active(self) -> Color | None: ...

    def keeps_state(self, color: Color) -> bool: ...

    async def snapshot(self, color: Color) -> dict[str, Any]: ...

    async def handoff_to(self, color: Color, dry_run: bool, by: str) -> dict[str, Any]: ...

    async def switch(self, color: Color, by: str, started: float) -> Change: ...

    async def canary_start(self, color: Color, steps: list[float] | None, by: str) -> Change: ...

    def record(self, kind: str, fields: dict[str, Any], color: Color) -> None: ...


class Deployer:
    def __init__(
        self,
        gates: Gates,
        steps: Steps,
        metrics: Metrics,
        alert: Callable[[str, Color, dict[str, Any]], None],
    ) -> None:
        self.gates = gates
        self.steps = steps
        self.metrics = metrics
        self._alert = alert
        self.busy: str | None = None

    async def deploy(
        self, target: Color, strategy: Strategy, force: bool, reason: str | None, by: str
    ) -> dict[str, Any]:
        if force and not (reason and reason.strip()):
            raise Refused(
                "reason_required", "--force needs --reason: say why the gates are overridden"
            )
        if self.busy is not None:
            raise Refused("deploy_in_progress", f"busy: {self.busy}")
        self.busy = f"deploy of {target}"
        try:
            return await self._deploy(target, strategy, force, reason, by)
        finally:
            self.busy = None

    async def _deploy(
        self, target: Color, strategy: Strategy, force: bool, reason: str | None, by: str
    ) -> dict[str, Any]:
        closed = await self._closed(target)
        gates = self.gates.describe(target)
        names = [s.gate for s in closed]
        if closed and not force:
            self.metrics.deploys.labels(strategy, "refused").inc()
            log.warning("deploy_refused", target=target, strategy=strategy, closed=names)
            raise Refused(
                "gates_closed",
                f"deploy of {target} refused, {len(closed)} gate(s) closed:\n{summary(closed)}\n"
                "(`agentsup gates` shows them all; --force --reason TEXT overrides, recorded)",
            )
        who = f"{by} (deploy)"
        if closed:
            who = f"{by} (deploy forced past {','.join(names)}: {reason})"
            self._forced(target, strategy, closed, reason or "", by)
        self.steps.record(
            "deploy",
            {
                "target": target.value,
                "strategy": strategy,
                "forced": bool(closed),
                "reason": reason,
                "closed": names,
                "by": by,
            },
            target,
        )
        started = time.monotonic()
        try:
            result = await self._go(target, strategy, who, started)
        except Refused:
            self.metrics.deploys.labels(strategy, "failed").inc()
            raise
        self.metrics.deploys.labels(strategy, "forced" if closed else "ok").inc()
        log.info("deployed", target=target, strategy=strategy, forced=bool(closed), by=by)
        return {
            "target": target.value,
            "strategy": strategy,
            "forced": bool(closed),
            "closed": names,
            "gates": gates,
            **result,
        }

    async def _closed(self, target: Color) -> list[GateState]:
        """The closed gates; a snapshot too old (or none) is taken again first, when the color
        in charge has a state to give and that is all that is in the way of it."""
        closed = self.gates.closed(target)
        active = self.steps.active()
        if (
            active is not None
            and any(s.gate == "snapshot" for s in closed)
            and self.steps.keeps_state(active)
        ):
            try:
                await self.steps.snapshot(active)
            except Refused as exc:
                log.warning("deploy_snapshot_failed", color=active, error=str(exc))
            closed = self.gates.closed(target)
        return closed

    async def _go(
        self, target: Color, strategy: Strategy, who: str, started: float
    ) -> dict[str, Any]:
        if strategy == "canary":
            change = await self.steps.canary_start(target, None, who)
            return {"step": "canary_start", **_change(change)}
        active = self.steps.active()
        if active is not None and self.steps.keeps_state(active):
            handed = await self.steps.handoff_to(target, False, who)
            return {"step": "handoff", "handoff": handed}
        change = await self.steps.switch(target, who, started)
        return {"step": "switch", **_change(change)}

    def _forced(
        self, target: Color, strategy: Strategy, closed: list[GateState], reason: str, by: str
    ) -> None:
        names = [s.gate for s in closed]
        log.warning(
            "deploy_forced",
            target=target,
            strategy=strategy,
            closed=names,
            reason=reason,
            by=by,
            gates={s.gate: s.reason for s in closed},
        )
        self._alert(
            f"deploy of {target} forced past closed gates ({', '.join(names)}) by {by}: {reason}",
            target,
            {"closed": {s.gate: s.reason for s in closed}, "reason": reason, "by": by},
        )


def _change(change: Change) -> dict[str, Any]:
    return {
        "active": change.active.value if change.active else None,
        "epoch": change.epoch,
        "reason": change.reason,
    }
