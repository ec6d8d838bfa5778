"""What the daemon does with a verdict: count it, log it, alert on it, and roll the candidate
in charge back to stable. Only the candidate in charge is rolled back; a verdict on the stable
color (it has nowhere to go back to) is alerted on."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from supervisor.alerts import Alert, Alerter
from supervisor.arbiter.durable import DurableWriteError
from supervisor.config import Color, Config
from supervisor.errors import RedisUnavailable, Refused
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout.rollout import Rollout

log = get_logger("guard")


def alert_from_verdict(
    verdict: Verdict,
    *,
    supervisor_name: str,
    version: str | None,
    epoch: int | None,
    extra: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> Alert:
    """The webhook's JSON body for ``verdict``. ``version`` is the version of the verdict's
    color; ``extra`` adds fields (it cannot replace the ones above: those are the contract).

    >>> from supervisor.config import Color
    >>> from supervisor.guard.verdict import Action, Severity
    >>> v = Verdict("double_spend", Severity.CRITICAL, Action.ROLLBACK, Color.GREEN, "twice")
    >>> body = alert_from_verdict(v, supervisor_name="dice-bot", version="2.0.0", epoch=8, at=1.0)
    >>> body["trigger"], body["color"], body["epoch"], body["value"]
    ('double_spend', 'green', 8, None)
    """
    body: Alert = dict(extra) if extra else {}
    body.update(
        trigger=verdict.trigger,
        severity=verdict.severity.value,
        action=verdict.action.value,
        color=verdict.color.value,
        version=version,
        message=verdict.message,
        value=verdict.value,
        threshold=verdict.threshold,
        window=verdict.window,
        baseline=verdict.baseline,
        epoch=epoch,
        at=time.time() if at is None else at,
        supervisor=supervisor_name,
    )
    return body


class Responder:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        rollout: Rollout,
        alerter: Alerter,
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        *,
        overdue: Callable[[float], list[dict[str, Any]]],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.rollout = rollout
        self.alerter = alerter
        self._spawn = spawn
        self._overdue = overdue
        # (trigger, color) -> unix time it last fired, for `agentsup triggers`
        self.fired: dict[tuple[str, Color], float] = {}
        self._rolling_back: set[Color] = set()

    def __call__(self, verdict: Verdict) -> None:
        """Every verdict: counted, logged; alerts and rollbacks sent on. Only the candidate in
        charge is rolled back (stable has nowhere to go back to: it is alerted on)."""
        started = time.monotonic()
        color = verdict.color
        self.metrics.triggers_fired.labels(verdict.trigger, verdict.severity.value).inc()
        level = (
            log.error
            if verdict.severity is Severity.CRITICAL
            else (log.info if verdict.severity is Severity.LOW else log.warning)
        )
        level(
            "trigger_fired",
            trigger=verdict.trigger,
            severity=verdict.severity.value,
            color=color.value,
            action=verdict.action.value,
            message=verdict.message,
            **verdict.numbers(),
        )
        if verdict.action is Action.LOG:
            return
        self.fired[(verdict.trigger, color)] = time.time()
        s = self.rollout.state
        rollback = verdict.action is Action.ROLLBACK and self.rollout.on_trial(color)
        if rollback and color not in self._rolling_back:
            self._rolling_back.add(color)
            self._spawn(self._rollback(verdict, started))
        extra: dict[str, Any] = {"rollback": rollback}
        if verdict.trigger == "escrow_gap":
            extra["escrows"] = self._overdue(started)
        self.metrics.alerts_sent.labels(verdict.trigger).inc()
        self.alerter.send(
            alert_from_verdict(
                verdict,
                supervisor_name=self.config.supervisor.name,
                version=self.config.agents[color].version,
                epoch=s.epoch,
                extra=extra,
            )
        )

    async def _rollback(self, verdict: Verdict, started: float) -> None:
        try:
            change = await self.rollout.rollback(
                verdict.reason,
                "guard",
                trigger=verdict.trigger,
                automatic=True,
                color=verdict.color,
                started=started,
            )
            if change is not None:
                log.error(
                    "rolled_back",
                    to=change.active,
                    epoch=change.epoch,
                    trigger=verdict.trigger,
                    reason=verdict.reason,
                    flip_ms=round((time.monotonic() - started) * 1000, 3),
                )
        except (RedisUnavailable, Refused, DurableWriteError) as exc:
            log.error("rollback_not_committed", error=str(exc), trigger=verdict.trigger)
        finally:
            self._rolling_back.discard(verdict.color)
