"""Each gate judged on its own, with the world given by hand: what it reads, against what, and
that not knowing closes it. (The daemon end to end: test_deploy.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from supervisor import config
from supervisor.config import Color
from supervisor.gates.gates import Gates, GateState
from supervisor.metrics import Metrics

NOW = 1_800_000_000.0


@dataclass
class World:
    """A deployment's state as the gates read it, set by each test."""

    up: bool = True
    replica_count: int = 0
    in_charge: Color | None = Color.BLUE
    states: dict[Color, str] = field(default_factory=lambda: dict.fromkeys(Color, "RUNNING"))
    stateful: set[Color] = field(default_factory=set)
    snapshot_ages: dict[Color, float] = field(default_factory=dict)
    dues: list[tuple[str, float]] = field(default_factory=list)

    def redis_up(self) -> bool:
        return self.up

    def replicas(self) -> int:
        return self.replica_count

    def active(self) -> Color | None:
        return self.in_charge

    def child_state(self, color: Color) -> str:
        return self.states[color]

    def capable(self, color: Color) -> str | None:
        if self.states[color] != "RUNNING":
            return f"{color} is {self.states[color]}, not RUNNING"
        return None if color in self.stateful else f"{color} has no snapshot hook"

    def keeps_state(self, color: Color) -> bool:
        return color in self.stateful

    def snapshot_age(self, color: Color, now: float) -> float | None:
        return self.snapshot_ages.get(color)

    def escrow_dues(self) -> list[tuple[str, float]]:
        return self.dues


def gates(world: World, **section: Any) -> Gates:
    cfg = config.parse(
        {
            "agents": {
                "blue": {"command": ["a"], "version": "1"},
                "green": {"command": ["a"], "version": "2"},
            },
            "gates": section,
        }
    )
    return Gates(cfg, Metrics(), world)


def judge(g: Gates, name: str, now: float = NOW, target: Color | None = None) -> GateState:
    return next(s for s in g.evaluate(target, now) if s.gate == name)


CALM = {"volatility": 0.01, "disputes_open": 0, "auto_releases": []}


def test_with_no_context_the_agents_gates_are_closed_and_the_rest_open() -> None:
    g = gates(World(), volatility_max=0.5)
    closed = {s.gate for s in g.evaluate(None, NOW) if not s.open}
    assert closed == {"volatility", "escrow_dispute", "auto_release"}
    assert "not knowing is not permission" in judge(g, "escrow_dispute").reason
    g.observe(Color.BLUE, CALM, NOW)
    assert all(s.open for s in g.evaluate(None, NOW))


def test_context_older_than_its_limit_closes_its_gates() -> None:
    g = gates(World(), volatility_max=0.5, context_max_age_s=60)
    g.observe(Color.BLUE, CALM, NOW)
    assert judge(g, "escrow_dispute", NOW + 60).open
    stale = judge(g, "escrow_dispute", NOW + 61)
    assert not stale.open
    assert "older than 60 s" in stale.reason
    assert not judge(g, "volatility", NOW + 61).open
    g.observe(Color.GREEN, {"disputes_open": 0}, NOW + 61)  # the other color still reports
    assert judge(g, "escrow_dispute", NOW + 61).open
    assert not judge(g, "volatility", NOW + 61).open  # but not volatility


def test_the_cautious_report_wins_between_the_colors() -> None:
    g = gates(World(), volatility_max=0.5)
    g.observe(Color.BLUE, {**CALM, "volatility": 0.9, "disputes_open": 0}, NOW)
    g.observe(Color.GREEN, {**CALM, "volatility": 0.1, "disputes_open": 2}, NOW)
    vol, disputes = judge(g, "volatility"), judge(g, "escrow_dispute")
    assert (vol.open, vol.value, vol.threshold) == (False, 0.9, 0.5)
    assert (disputes.open, disputes.value) == (False, 2)


def test_volatility_at_the_threshold_is_open_and_without_one_it_is_only_shown() -> None:
    g = gates(World(), volatility_max=0.5)
    g.observe(Color.BLUE, {**CALM, "volatility": 0.5}, NOW)
    assert judge(g, "volatility").open
    unset = gates(World())
    unset.observe(Color.BLUE, {**CALM, "volatility": 1e9}, NOW)
    assert judge(unset, "volatility").open
    assert "no threshold" in judge(unset, "volatility").reason


def test_an_auto_release_within_the_window_closes_from_the_context_or_an_escrow() -> None:
    world = World()
    g = gates(world, auto_release_window_s=1800)
    g.observe(Color.BLUE, {**CALM, "auto_releases": [NOW + 1801, {"due_at": NOW + 3600}]}, NOW)
    assert judge(g, "auto_release").open
    g.observe(Color.BLUE, {**CALM, "auto_releases": [NOW + 1799]}, NOW)
    closed = judge(g, "auto_release")
    assert not closed.open
    assert closed.value == pytest.approx(1799)
    g.observe(Color.BLUE, {**CALM, "auto_releases": [NOW - 5, "soon", {"due": 1}]}, NOW)
    assert judge(g, "auto_release").open  # past, and two items that are not times
    assert g.ignored_releases == 2
    world.dues = [("esc-9", NOW + 600)]
    by_escrow = judge(g, "auto_release")
    assert not by_escrow.open
    assert "esc-9" in by_escrow.reason


def test_the_cooldown_after_an_automatic_rollback() -> None:
    g = gates(World(), cooldown_s=900)
    assert judge(g, "cooldown").open
    g.load_flips(
        [
            {"by": "uid:0", "at": str(NOW - 10), "reason": "switch"},
            {"by": "guard", "at": str(NOW - 100), "reason": "exception: boom"},
            {"by": "judge", "at": str(NOW - 50)},  # older entries come later: not read
        ]
    )
    assert g.last_automatic_rollback == NOW - 100
    assert not judge(g, "cooldown").open
    assert judge(g, "cooldown", NOW + 800).open
    g.rolled_back(NOW + 700)
    assert not judge(g, "cooldown", NOW + 800).open
    assert judge(gates(World(), cooldown_s=0), "cooldown").open


def test_redis_and_its_replicas() -> None:
    world = World(replica_count=0)
    g = gates(world, min_replicas=1)
    assert not judge(g, "redis").open
    world.replica_count = 1
    assert judge(g, "redis").open
    world.up = False
    assert judge(g, "redis").reason == "Redis does not answer"


def test_the_children_gate_needs_both_running_and_a_target_that_takes_the_state() -> None:
    world = World()
    g = gates(world)
    assert judge(g, "children").open  # nobody keeps a state: a plain switch
    assert not judge(g, "children", target=Color.BLUE).open  # already in charge
    world.stateful = {Color.BLUE}
    no_hook = judge(g, "children")
    assert not no_hook.open
    assert "cannot take blue's state" in no_hook.reason
    world.stateful = {Color.BLUE, Color.GREEN}
    assert judge(g, "children").open
    world.states[Color.GREEN] = "BACKOFF"
    assert "green is BACKOFF" in judge(g, "children").reason


def test_the_snapshot_gate_reads_the_age_of_the_latest_snapshot() -> None:
    world = World(stateful={Color.BLUE, Color.GREEN})
    g = gates(world, snapshot_max_age_s=60)
    assert not judge(g, "snapshot").open
    world.snapshot_ages[Color.BLUE] = 59.0
    assert judge(g, "snapshot").open
    world.snapshot_ages[Color.BLUE] = 61.0
    assert not judge(g, "snapshot").open
    world.stateful = set()
    assert judge(g, "snapshot").open  # no state to hand over: nothing to be fresh
    world.in_charge = None
    assert not judge(g, "snapshot").open


def test_a_disabled_gate_is_shown_open_and_off_and_since_moves_only_on_a_change() -> None:
    g = gates(World(), disabled=["escrow_dispute", "volatility", "auto_release"])
    states = g.evaluate(None, NOW)
    off = [s.gate for s in states if not s.enabled]
    assert off == ["volatility", "escrow_dispute", "auto_release"]
    assert all(s.open for s in states)
    g.evaluate(None, NOW + 10)
    assert {d["since"] for d in g.describe()} == {NOW}  # nothing changed since the first look
