"""The trigger registry and the pipeline's bus: a trigger is one module plus its config
section (here a toy one, defined in this file, registered beside the real ones), and the
pipeline shows it, exports it and acts on its verdicts with no other change. A real Pipeline,
a real Rollout state judged by the real blue-green strategy, real Child objects (not started:
nothing here needs a process)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import generate_latest
from pydantic import Field

from supervisor import protocol
from supervisor.children.process import Child
from supervisor.config import AgentSection, Color, Trigger, Triggers
from supervisor.guard.evaluator import (
    EXIT,
    Context,
    Evaluator,
    Reset,
    Sender,
    TriggerState,
)
from supervisor.guard.registry import REGISTRY
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.metrics import Metrics
from supervisor.pipeline import MESSAGE_TYPES, Pipeline
from supervisor.rollout import Rollout

BLUE, GREEN = Color.BLUE, Color.GREEN


# -- the toy trigger: what a new module and its config section hold --------------------------


class SlowestTrigger(Trigger):
    """``[triggers.slowest]``: one decision of the candidate slower than ``limit_ms``."""

    limit_ms: float = Field(500.0, gt=0)


class TriggersWithSlowest(Triggers):
    """``Triggers`` with the new section, as config.py would have it."""

    slowest: SlowestTrigger = SlowestTrigger()


class SlowestState(TriggerState):
    decisions: int


class Slowest(Evaluator):
    """Rolls back a candidate on trial for a single decision slower than the limit."""

    name = "slowest"
    severity = Severity.HIGH
    listens = ("decision",)

    def __init__(self, ctx: Context) -> None:
        assert isinstance(ctx.triggers, TriggersWithSlowest)
        config = ctx.triggers.slowest
        self.enabled = config.enabled
        self.threshold: float | None = config.limit_ms
        self._roles = ctx.roles
        self.worst: dict[Color, float] = {}
        self.decisions = dict.fromkeys(Color, 0)
        self.resets: list[Reset] = []

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        if self._roles.judged(color) != "candidate":
            return None
        ms = msg["latency_ms"]
        self.decisions[color] += 1
        self.worst[color] = max(ms, self.worst.get(color, 0.0))
        if self.threshold is None or ms <= self.threshold:
            return None
        return Verdict(
            self.name,
            self.severity,
            Action.ROLLBACK,
            color,
            f"a decision took {ms:g} ms",
            value=ms,
            threshold=self.threshold,
        )

    def reset(self, reset: Reset) -> None:
        self.resets.append(reset)
        self.worst.clear()

    def state(self, color: Color, now: float) -> SlowestState:
        worst = self.worst.get(color)
        return {
            "value": worst,
            "state": "alert" if worst is not None and worst > 100.0 else "ok",
            "last_fired": None,
            "decisions": self.decisions[color],
        }


# -- a pipeline to feed ----------------------------------------------------------------------


class Deployment:
    """What the pipeline's owner gives it and takes from it, in miniature."""

    def __init__(
        self, triggers: Triggers, evaluators: tuple[Any, ...] = REGISTRY, **kw: Any
    ) -> None:
        self.verdicts: list[Verdict] = []
        self.lookups: list[tuple[Color, str, int]] = []
        self.metrics = Metrics()
        self.rollout = Rollout(None, {BLUE: "1.0.0", GREEN: "2.0.0"}, lambda change: None)  # type: ignore[arg-type]
        # Green took over as the candidate: on trial, judged against blue's baseline.
        s = self.rollout.state
        s.active, s.stable, s.candidate, s.epoch = GREEN, BLUE, GREEN, 8
        self.children: dict[Color, Child] = {}
        self.pipeline = Pipeline(
            triggers,
            self.metrics,
            self.rollout,
            self.children,
            heartbeat_timeouts={BLUE: None, GREEN: 2.0},
            on_verdict=self.verdicts.append,
            on_hello=lambda child: None,
            on_permit=lambda child, msg: None,
            on_reply=lambda child, msg: None,
            on_lookup=lambda *lookup: self.lookups.append(lookup),
            evaluators=evaluators,
            **kw,
        )
        for c in Color:
            self.children[c] = Child(
                c,
                AgentSection(command=["true"], version=self.rollout.versions[c]),
                {},
                on_message=self.pipeline.handle,
                on_protocol_error=self.pipeline.protocol_error,
                on_state=lambda child: None,
                on_exit=lambda child, returncode: None,
                on_orphan_killed=lambda: None,
            )

    def decision(self, color: Color, latency_ms: float) -> None:
        self.pipeline.handle(
            self.children[color],
            {
                "type": "decision",
                "id": "d-1",
                "kind": "dice",
                "inputs": {},
                "output": {},
                "latency_ms": latency_ms,
            },
        )


def test_a_trigger_is_one_module_plus_its_config_section() -> None:
    triggers = TriggersWithSlowest.model_validate({"slowest": {"limit_ms": 250}})
    d = Deployment(triggers, (*REGISTRY, Slowest))
    toy = d.pipeline.evaluator(Slowest)

    d.decision(BLUE, 900.0)  # stable's decisions are not judged by it
    d.decision(GREEN, 120.0)
    assert d.verdicts == []
    d.decision(GREEN, 300.0)
    [verdict] = d.verdicts
    assert (verdict.trigger, verdict.color, verdict.action) == ("slowest", GREEN, Action.ROLLBACK)
    assert verdict.reason == "slowest: a decision took 300 ms"
    # The built-in subscribers ran before it, for every decision.
    assert d.pipeline.tally[GREEN].decisions == 2
    assert d.pipeline.events == 3

    states = d.pipeline.trigger_states({("slowest", GREEN): 1_767_225_600.0})
    assert list(states)[-1] == "slowest"
    assert states["slowest"] == {
        "severity": "high",
        "enabled": True,
        "threshold": 250.0,
        "colors": {
            "blue": {"value": None, "state": "ok", "last_fired": None, "decisions": 0},
            "green": {
                "value": 300.0,
                "state": "alert",
                "last_fired": 1_767_225_600.0,  # the responder's record, when it keeps none
                "decisions": 2,
            },
        },
    }
    json.dumps(states)  # what the control socket sends

    d.pipeline.export_trigger_values()
    scrape = generate_latest(d.metrics.registry).decode()
    assert 'agentsup_trigger_value{color="green",trigger="slowest"} 300.0' in scrape
    assert 'agentsup_trigger_threshold{trigger="slowest"} 250.0' in scrape
    assert 'agentsup_triggers_fired_total{severity="high",trigger="slowest"} 0.0' in scrape
    assert 'agentsup_rollbacks_total{trigger="slowest"} 0.0' in scrape

    d.pipeline.new_active(BLUE)
    d.pipeline.new_stable()
    assert [r.kind for r in toy.resets] == ["active", "stable"]
    assert toy.resets[0].active is BLUE
    assert d.pipeline.trigger_states({})["slowest"]["colors"]["green"]["value"] is None


def test_the_registry_is_the_rollback_table() -> None:
    d = Deployment(Triggers())
    states = d.pipeline.trigger_states({})
    assert list(states) == [
        "exception",
        "auth",
        "exit",
        "heartbeat",
        "double_spend",
        "pnl_sigma",
        "latency",
        "escrow_gap",
    ]
    assert {n: t["severity"] for n, t in states.items()} == {
        "exception": "critical",
        "auth": "critical",
        "exit": "critical",
        "heartbeat": "critical",
        "double_spend": "critical",
        "pnl_sigma": "high",
        "latency": "medium",
        "escrow_gap": "medium",
    }
    for trigger in states.values():
        assert set(trigger) == {"severity", "enabled", "threshold", "colors"}
        assert list(trigger["colors"]) == ["blue", "green"]
        for st in trigger["colors"].values():
            assert {"value", "state", "last_fired"} <= set(st)
            assert st["state"] in ("ok", "alert", "fired")
    scrape = generate_latest(d.metrics.registry).decode()
    assert 'agentsup_triggers_fired_total{severity="low",trigger="pnl_ok"} 0.0' in scrape
    assert 'agentsup_rollbacks_total{trigger="pnl_ok"}' not in scrape
    assert 'agentsup_flips_total{reason="escrow_gap"} 0.0' in scrape


def test_a_disabled_trigger_is_shown_and_never_fires() -> None:
    d = Deployment(Triggers.model_validate({"exception": {"enabled": False}}))
    error = {"type": "error", "kind": "exception", "message": "KeyError: 'x'"}
    d.pipeline.handle(d.children[GREEN], error)
    assert d.verdicts == []
    assert d.pipeline.trigger_states({})["exception"]["enabled"] is False
    d2 = Deployment(Triggers())
    d2.pipeline.handle(d2.children[GREEN], error)
    assert [v.reason for v in d2.verdicts] == ["exception: unhandled exception: KeyError: 'x'"]


def test_an_exit_is_delivered_on_the_bus_and_not_counted_as_a_line() -> None:
    d = Deployment(Triggers())
    seen: list[tuple[Color, dict[str, Any]]] = []
    d.pipeline.subscribe(EXIT, lambda child, msg: seen.append((child.color, msg)))
    d.pipeline.child_exited(d.children[BLUE], 0)  # stable: not on trial, no verdict
    d.pipeline.child_exited(d.children[GREEN], -9)
    assert seen == [
        (BLUE, {"type": "exit", "returncode": 0}),
        (GREEN, {"type": "exit", "returncode": -9}),
    ]
    [verdict] = d.verdicts
    assert verdict.reason == "exit: process exited while acting (killed by signal 9)"
    assert d.pipeline.events == 0
    assert d.pipeline.trigger_states({})["exit"]["colors"]["green"]["state"] == "fired"


def test_a_later_subscriber_sees_what_the_triggers_see_and_may_return_a_verdict() -> None:
    """How the decision log, the shadow comparator and the gates will join."""
    d = Deployment(Triggers())
    logged: list[str] = []

    def decision_log(child: Child, msg: dict[str, Any]) -> Verdict | None:
        logged.append(f"{child.color}:{msg['id']}")
        if msg["latency_ms"] > 1000:
            return Verdict("gate", Severity.LOW, Action.LOG, child.color, "slow, noted")
        return None

    d.pipeline.subscribe("decision", decision_log)
    d.decision(BLUE, 5.0)
    d.decision(GREEN, 5000.0)
    assert logged == ["blue:d-1", "green:d-1"]
    assert [v.trigger for v in d.verdicts] == ["gate"]
    with pytest.raises(ValueError, match="no message type 'decisoin'"):
        d.pipeline.subscribe("decisoin", decision_log)


def test_the_bus_knows_every_type_of_the_channel() -> None:
    assert set(MESSAGE_TYPES) == {*protocol._FIELDS, EXIT}


def test_double_spend_and_escrow_stay_reachable_for_the_deployment() -> None:
    d = Deployment(Triggers())
    green = d.children[GREEN]
    d.pipeline.granted(GREEN, "order-7", 7)  # granted at 7, reported after the flip to 8
    d.pipeline.handle(
        green, {"type": "execution", "decision_id": "d", "key": "order-7", "amount": 1}
    )
    # Memory was not fresh: a key it does not know is looked up at the epoch of its grant.
    assert d.lookups == [(GREEN, "order-7", 7)]
    verdict = d.pipeline.double_spend.from_permit_record(GREEN, "order-7", "blue:6:t", 7, now=1.0)
    assert verdict is not None
    assert verdict.trigger == "double_spend"
    assert d.pipeline.escrow.overdue(0.0) == []


def test_the_pipeline_gets_only_the_sections_it_uses() -> None:
    """No Config: the Triggers section and the per color heartbeat timeouts."""
    d = Deployment(Triggers.model_validate({"heartbeat": {"timeout_s": 4.0}}))
    hb = d.pipeline.trigger_states({})["heartbeat"]
    assert hb["threshold"] == 4.0
    assert (hb["colors"]["blue"]["threshold"], hb["colors"]["green"]["threshold"]) == (4.0, 2.0)
