"""The deploy gates: each one open or closed, with its value against its threshold and since
when (docs/gates.md).

The seed's One Rule: never deploy during a high-volatility market event, an ongoing escrow
dispute, or within 30 minutes of a scheduled auto-release. The agents know those things and say
them (``context``: volatility, disputes_open, auto_releases; ``escrow``: watched escrows and
their due times); the calendar says the freeze windows; the daemon knows the rest (a recent
automatic rollback, Redis and its replicas, the children, the latest snapshot). A gate that
cannot know is closed: an agent that stopped reporting is not a calm market.

The agents' reports are combined the cautious way: of the reports younger than
``context_max_age_s`` from either color, the highest volatility, the most disputes, every
auto-release.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from supervisor.config import Color, Config
from supervisor.gates.settings import GATE_NAMES, GateName
from supervisor.gates.windows import calendar
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

log = get_logger("gates")

# The `context` fields the gates read, and which gate each feeds.
CONTEXT_FIELDS: dict[str, GateName] = {
    "volatility": "volatility",
    "disputes_open": "escrow_dispute",
    "auto_releases": "auto_release",
}
# Auto-releases kept from one report: a list longer than this is cut (counted).
MAX_RELEASES = 1000
# Who commits an automatic rollback (the responder; the canary's judge): the cool-down's cue.
AUTOMATIC = frozenset({"guard", "judge"})


@dataclass(frozen=True, slots=True)
class GateState:
    """One gate at one instant."""

    gate: GateName
    open: bool
    reason: str  # in words: what was measured, against what
    value: Any = None
    threshold: Any = None
    enabled: bool = True

    def as_dict(self, since: float | None) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "open": self.open,
            "enabled": self.enabled,
            "value": self.value,
            "threshold": self.threshold,
            "reason": self.reason,
            "since": since,
        }


class World(Protocol):
    """What the gates read of the deployment (supervisor/deployment.py gives it)."""

    def redis_up(self) -> bool: ...

    def replicas(self) -> int: ...

    def active(self) -> Color | None: ...

    def child_state(self, color: Color) -> str: ...

    def capable(self, color: Color) -> str | None:
        """Why ``color`` cannot take part in a handoff (not RUNNING, no snapshot hook)."""
        ...

    def keeps_state(self, color: Color) -> bool:
        """``color`` announced the snapshot hook: it has a state to hand over or take."""
        ...

    def snapshot_age(self, color: Color, now: float) -> float | None: ...

    def escrow_dues(self) -> list[tuple[str, float]]: ...


@dataclass(slots=True)
class _Report:
    value: Any
    at: float  # wall clock


class Gates:
    """The gates of one deployment. ``observe`` hears the agents' ``context`` (subscribed on
    the pipeline's bus); ``evaluate`` judges every gate for a deploy to a target."""

    def __init__(self, config: Config, metrics: Metrics, world: World) -> None:
        self.cfg = config.gates
        self.snapshot_max_age_s = self.cfg.snapshot_max_age_s or config.handoff.max_age_s
        self.metrics = metrics
        self.world = world
        self._reports: dict[str, dict[Color, _Report]] = {f: {} for f in CONTEXT_FIELDS}
        self.last_automatic_rollback: float | None = None  # wall clock
        self._since: dict[GateName, tuple[bool, float]] = {}
        self.ignored_releases = 0  # auto_releases items that were neither a time nor {due_at}
        for gate in GATE_NAMES:
            metrics.gate_open.labels(gate).set(0)

    # what the gates hear --------------------------------------------------------------------
    def attach(self, bus: Any) -> None:
        """Subscribe to the pipeline's bus (``supervisor.pipeline.Pipeline``)."""
        bus.subscribe("context", self._context)

    def _context(self, child: Any, msg: dict[str, Any]) -> None:
        self.observe(child.color, msg, time.time())

    def observe(self, color: Color, msg: Mapping[str, Any], now: float) -> None:
        """A ``context`` report from ``color`` (fields already checked by the protocol)."""
        for field in CONTEXT_FIELDS:
            if field not in msg:
                continue
            value = msg[field]
            if field == "auto_releases":
                value = self._release_times(value)
            self._reports[field][color] = _Report(value, now)

    def _release_times(self, items: list[Any]) -> list[float]:
        times: list[float] = []
        for item in items[:MAX_RELEASES]:
            due: Any = item.get("due_at") if isinstance(item, dict) else item
            if type(due) in (int, float) and math.isfinite(due) and 0 <= due <= 1e10:
                times.append(float(due))
            else:
                self.ignored_releases += 1
        self.ignored_releases += max(0, len(items) - MAX_RELEASES)
        return times

    def rolled_back(self, at: float) -> None:
        """An automatic rollback (or a canary's automatic abort) was committed at ``at``."""
        if self.last_automatic_rollback is None or at > self.last_automatic_rollback:
            self.last_automatic_rollback = at

    def load_flips(self, flips: list[dict[str, str]]) -> None:
        """At start: the latest automatic rollback, from the flips stream (newest first)."""
        for flip in flips:
            if flip.get("by") in AUTOMATIC:
                try:
                    self.rolled_back(float(flip.get("at", "")))
                except ValueError:
                    continue
                return

    # judging --------------------------------------------------------------------------------
    def evaluate(self, target: Color | None = None, now: float | None = None) -> list[GateState]:
        """Every gate, for a deploy to ``target`` (default: the color not in charge)."""
        now = time.time() if now is None else now
        active = self.world.active()
        if target is None:
            target = active.other if active is not None else Color.GREEN
        judges: dict[GateName, Callable[[], GateState]] = {
            "volatility": lambda: self._volatility(now),
            "escrow_dispute": lambda: self._disputes(now),
            "auto_release": lambda: self._releases(now),
            "freeze_window": lambda: self._windows(now),
            "cooldown": lambda: self._cooldown(now),
            "redis": self._redis,
            "children": lambda: self._children(active, target),
            "snapshot": lambda: self._snapshot(active, now),
        }
        states = []
        for gate in GATE_NAMES:
            if gate in self.cfg.disabled:
                states.append(GateState(gate, True, "disabled ([gates] disabled)", enabled=False))
            else:
                states.append(judges[gate]())
        for state in states:
            was = self._since.get(state.gate)
            if was is None or was[0] != state.open:
                self._since[state.gate] = (state.open, now)
        return states

    def closed(self, target: Color | None = None) -> list[GateState]:
        return [s for s in self.evaluate(target) if not s.open]

    def describe(self, target: Color | None = None) -> list[dict[str, Any]]:
        return [s.as_dict(self._since[s.gate][1]) for s in self.evaluate(target)]

    def export(self) -> None:
        """The housekeeping's second: agentsup_gate_open{gate}."""
        for state in self.evaluate():
            self.metrics.gate_open.labels(state.gate).set(1 if state.open else 0)

    def _fresh(self, field: str, now: float) -> tuple[list[Any], str | None]:
        """The reports of ``field`` young enough to count, or why there are none."""
        reports = self._reports[field]
        limit = self.cfg.context_max_age_s
        fresh = [r.value for r in reports.values() if now - r.at <= limit]
        if fresh:
            return fresh, None
        if not reports:
            return [], f"no agent has reported {field} (not knowing is not permission)"
        age = now - max(r.at for r in reports.values())
        return [], f"{field} last reported {age:.0f} s ago, older than {limit:g} s"

    def _volatility(self, now: float) -> GateState:
        limit = self.cfg.volatility_max
        fresh, stale = self._fresh("volatility", now)
        if limit is None:  # nothing to judge against: what is reported is only shown
            value = max(fresh) if fresh else None
            return GateState("volatility", True, "no threshold (gates.volatility_max)", value)
        if stale is not None:
            return GateState("volatility", False, stale, None, limit)
        value = max(fresh)
        if value > limit:
            return GateState("volatility", False, f"volatility {value:g} > {limit:g}", value, limit)
        return GateState("volatility", True, f"volatility {value:g} <= {limit:g}", value, limit)

    def _disputes(self, now: float) -> GateState:
        fresh, stale = self._fresh("disputes_open", now)
        if stale is not None:
            return GateState("escrow_dispute", False, stale, None, 0)
        value = max(fresh)
        if value > 0:
            return GateState("escrow_dispute", False, f"{value} escrow dispute(s) open", value, 0)
        return GateState("escrow_dispute", True, "no escrow dispute open", value, 0)

    def _releases(self, now: float) -> GateState:
        window = self.cfg.auto_release_window_s
        fresh, stale = self._fresh("auto_releases", now)
        if stale is not None:
            return GateState("auto_release", False, stale, None, window)
        dues: list[tuple[str | None, float]] = [(None, t) for times in fresh for t in times]
        dues += self.world.escrow_dues()
        coming = sorted(((t - now, escrow) for escrow, t in dues if t >= now), key=lambda c: c[0])
        if coming and coming[0][0] <= window:
            within, escrow = coming[0]
            what = f"escrow {escrow}'s auto-release" if escrow else "an auto-release"
            reason = f"{what} is due in {within / 60:.0f} min (window {window / 60:g} min)"
            return GateState("auto_release", False, reason, round(within, 3), window)
        if coming:
            within = coming[0][0]
            reason = f"next auto-release in {within / 60:.0f} min (window {window / 60:g} min)"
            return GateState("auto_release", True, reason, round(within, 3), window)
        return GateState("auto_release", True, "no auto-release due", None, window)

    def _windows(self, now: float) -> GateState:
        cal = calendar(self.cfg.windows, datetime.fromtimestamp(now, UTC))
        until = cal.until.timestamp() if cal.until is not None else None
        return GateState("freeze_window", cal.open, cal.reason, until, len(self.cfg.windows))

    def _cooldown(self, now: float) -> GateState:
        cool = self.cfg.cooldown_s
        last = self.last_automatic_rollback
        if cool == 0:
            return GateState("cooldown", True, "off (gates.cooldown_s = 0)", None, 0)
        if last is None:
            return GateState("cooldown", True, "no automatic rollback seen", None, cool)
        ago = now - last
        if ago < cool:
            reason = f"automatic rollback {ago:.0f} s ago (cool-down {cool:g} s)"
            return GateState("cooldown", False, reason, round(ago, 3), cool)
        reason = f"last automatic rollback {ago:.0f} s ago"
        return GateState("cooldown", True, reason, round(ago, 3), cool)

    def _redis(self) -> GateState:
        want = self.cfg.min_replicas
        if not self.world.redis_up():
            return GateState("redis", False, "Redis does not answer", None, want)
        have = self.world.replicas()
        if have < want:
            return GateState("redis", False, f"{have} replica(s) connected", have, want)
        return GateState("redis", True, f"up, {have} replica(s)", have, want)

    def _children(self, active: Color | None, target: Color) -> GateState:
        states = {c.value: self.world.child_state(c) for c in Color}
        down = [c for c, s in states.items() if s != "RUNNING"]
        if down:
            why = ", ".join(f"{c} is {states[c]}" for c in down)
            return GateState("children", False, f"{why}, not RUNNING", states, "RUNNING")
        if active is target:
            return GateState("children", False, f"{target} is already in charge", states)
        if active is not None and self.world.keeps_state(active):
            problem = self.world.capable(target)
            if problem is not None:
                reason = f"{target} cannot take {active}'s state: {problem}"
                return GateState("children", False, reason, states, "RUNNING")
            return GateState("children", True, f"both RUNNING; {target} takes a handoff", states)
        return GateState("children", True, "both RUNNING (no state to hand over)", states)

    def _snapshot(self, active: Color | None, now: float) -> GateState:
        limit = self.snapshot_max_age_s
        if active is None:
            return GateState("snapshot", False, "no color is in charge", None, limit)
        if not self.world.keeps_state(active):
            reason = f"{active} keeps no state to hand over (no snapshot hook)"
            return GateState("snapshot", True, reason, None, limit)
        age = self.world.snapshot_age(active, now)
        if age is None:
            return GateState("snapshot", False, f"no snapshot of {active} yet", None, limit)
        if age > limit:
            reason = f"{active}'s latest snapshot is {age:.0f} s old (limit {limit:g} s)"
            return GateState("snapshot", False, reason, round(age, 3), limit)
        return GateState("snapshot", True, f"{age:.0f} s old", round(age, 3), limit)


def summary(states: list[GateState]) -> str:
    """The closed gates in one line each, for a refusal."""
    return "\n".join(f"  {s.gate}: {s.reason}" for s in states)
