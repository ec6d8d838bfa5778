"""The responder (rollout/responder.py) on its own: what a verdict becomes (a count, a log
line, an alert, a rollback started once), with stand-ins for the rollout and the alerter (the
end-to-end path, a real daemon rolling back a real child, is in tests/guard/test_guard_e2e.py)."""

from __future__ import annotations

from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

from supervisor.config import Color, parse
from supervisor.errors import RedisUnavailable
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.metrics import Metrics
from supervisor.rollout.responder import Responder

CONFIG = parse(
    {
        "supervisor": {"name": "dice-bot"},
        "agents": {
            "blue": {"command": ["blue-agent"], "version": "1.0.0"},
            "green": {"command": ["green-agent"], "version": "2.0.0"},
        },
    }
)


class World:
    """The responder and what it touched."""

    def __init__(self, on_trial: Color | None = Color.GREEN) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.rollbacks: list[Coroutine[Any, Any, Any]] = []
        self.metrics = Metrics()
        self.rollback_answers: list[Any] = []  # what rollout.rollback() answers, in turn
        rollout = SimpleNamespace(
            state=SimpleNamespace(epoch=7),
            on_trial=lambda color: color is on_trial,
            rollback=self._rollback,
        )
        self.responder = Responder(
            CONFIG,
            self.metrics,
            rollout,  # type: ignore[arg-type]
            SimpleNamespace(send=self.alerts.append),  # type: ignore[arg-type]
            self._spawn,
            overdue=lambda now: [{"id": "escrow-1", "overdue_s": 12.0}],
        )

    async def _rollback(self, *args: Any, **kwargs: Any) -> Any:
        answer = self.rollback_answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        self.rollbacks.append(job)
        job.close()  # not run here: that it was started, and how often, is the point

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def verdict(trigger: str, action: Action, color: Color = Color.GREEN) -> Verdict:
    return Verdict(trigger, Severity.HIGH, action, color, "numbers went bad", value=3.0)


def test_every_verdict_is_counted_and_a_log_verdict_goes_no_further() -> None:
    world = World()
    world.responder(verdict("latency", Action.LOG))
    assert world.count("agentsup_triggers_fired_total", trigger="latency", severity="high") == 1
    assert world.alerts == []
    assert world.rollbacks == []
    assert world.responder.fired == {}


def test_a_rollback_verdict_starts_one_rollback_however_many_arrive() -> None:
    world = World()
    world.responder(verdict("exception", Action.ROLLBACK))
    world.responder(verdict("exception", Action.ROLLBACK))
    assert len(world.rollbacks) == 1  # the second finds one under way
    assert [a["rollback"] for a in world.alerts] == [True, True]
    assert world.count("agentsup_alerts_total", trigger="exception") == 2
    assert (world.alerts[0]["version"], world.alerts[0]["epoch"]) == ("2.0.0", 7)
    assert ("exception", Color.GREEN) in world.responder.fired


def test_stable_is_alerted_on_never_rolled_back() -> None:
    world = World(on_trial=Color.GREEN)
    world.responder(verdict("exception", Action.ROLLBACK, Color.BLUE))
    assert world.rollbacks == []
    assert [a["rollback"] for a in world.alerts] == [False]


def test_an_escrow_gap_alert_names_the_overdue_escrows() -> None:
    world = World()
    world.responder(verdict("escrow_gap", Action.ALERT))
    world.responder(verdict("latency", Action.ALERT))
    assert world.alerts[0]["escrows"] == [{"id": "escrow-1", "overdue_s": 12.0}]
    assert "escrows" not in world.alerts[1]


async def test_a_rollback_that_finds_nothing_to_do_or_fails_lets_the_next_one_start() -> None:
    """The job ends, however the rollout answered (nothing to roll back: None; Redis away),
    and the next verdict for that color starts a rollback again."""
    world = World()
    world.rollback_answers = [None, RedisUnavailable("down"), None]
    responder = world.responder
    for _ in range(3):
        responder(verdict("exception", Action.ROLLBACK))
        assert Color.GREEN in responder._rolling_back
        await responder._rollback(verdict("exception", Action.ROLLBACK), 0.0)
        assert Color.GREEN not in responder._rolling_back
    assert len(world.rollbacks) == 3
