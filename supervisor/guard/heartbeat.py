"""heartbeat: no heartbeat from the color on trial for longer than its timeout (the agent hangs,
or its event loop is blocked). Judged by time, on the housekeeping tick.

The clocks are the children's own (``last_heartbeat``, monotonic, None until the child says
hello: an agent that never speaks the protocol is never judged by silence). The pipeline sets
them on every ``hello`` and ``heartbeat`` and moves them on after the daemon's own stalls, so
this trigger only reads them. Each color's timeout is its ``[agents.COLOR]
heartbeat_timeout_s`` when set, else ``[triggers.heartbeat] timeout_s``.
"""

from __future__ import annotations

from typing import Final

from supervisor.config import Color
from supervisor.guard.evaluator import Context, Evaluator, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict

TRIGGER: Final = "heartbeat"


class HeartbeatState(TriggerState):
    threshold: float  # this color's timeout


def on_silence(color: Color, age_s: float, timeout_s: float) -> Verdict:
    """The verdict on ``color``, silent for ``age_s`` against its ``timeout_s``.

    >>> on_silence(Color.GREEN, 6.25, 5.0).reason
    'heartbeat: no heartbeat for 6.2 s (timeout 5 s)'
    """
    return Verdict(
        TRIGGER,
        Severity.CRITICAL,
        Action.ROLLBACK,
        color,
        f"no heartbeat for {age_s:.1f} s (timeout {timeout_s:g} s)",
        value=round(age_s, 3),
        threshold=timeout_s,
    )


class HeartbeatEvaluator(Evaluator):
    """The heartbeat evaluator: fires on every tick while the color on trial is silent past
    its timeout (the responder rolls back once)."""

    name = TRIGGER
    severity = Severity.CRITICAL
    listens = ()

    def __init__(self, ctx: Context) -> None:
        config = ctx.triggers.heartbeat
        self.enabled = config.enabled
        self.threshold: float | None = config.timeout_s
        self._roles = ctx.roles
        self._children = ctx.children
        self.timeouts = {c: ctx.heartbeat_timeouts.get(c) or config.timeout_s for c in Color}
        self.last_fired: dict[Color, float] = {}

    def tick(self, now: float) -> Verdict | None:
        if not self.enabled:
            return None
        for color, child in self._children.items():
            last = child.last_heartbeat
            if last is None or not self._roles.on_trial(color):
                continue
            age, timeout = now - last, self.timeouts[color]
            if age > timeout:
                self.last_fired[color] = now
                return on_silence(color, age, timeout)
        return None

    def state(self, color: Color, now: float) -> HeartbeatState:
        child = self._children.get(color)
        last = None if child is None else child.last_heartbeat
        age = None if last is None else round(now - last, 3)
        timeout = self.timeouts[color]
        fired = self.last_fired.get(color)
        return {
            "value": age,
            "threshold": timeout,
            "last_fired": fired,
            "state": "fired"
            if fired is not None
            else ("alert" if age is not None and age > timeout else "ok"),
        }
