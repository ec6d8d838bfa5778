"""The critical triggers of a child's own word: an unhandled exception or an auth failure
reported by the color on trial, and its process exiting while it is on trial. Each rolls back
at once. (Its heartbeats stopping is :mod:`supervisor.guard.heartbeat`.)"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from supervisor.config import Color, Trigger
from supervisor.guard.evaluator import EXIT, Context, Evaluator, Roles, Sender, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict


class _Critical(Evaluator):
    """A trigger with no numbers: it fires, or it has not. It keeps when it last fired per
    color (the one number ``agentsup triggers`` shows for it)."""

    severity = Severity.CRITICAL

    def __init__(self, config: Trigger, roles: Roles) -> None:
        self.enabled = config.enabled
        self.threshold: float | None = None
        self._roles = roles
        self.last_fired: dict[Color, float] = {}

    def _fire(self, color: Color, message: str, value: float | None = None) -> Verdict:
        self.last_fired[color] = time.monotonic()
        return Verdict(self.name, self.severity, Action.ROLLBACK, color, message, value=value)

    def state(self, color: Color, now: float) -> TriggerState:
        last = self.last_fired.get(color)
        return {"value": None, "state": "ok" if last is None else "fired", "last_fired": last}


class _ErrorKind(_Critical):
    """An ``error`` event of kind :attr:`name` from the color on trial (kind ``other`` is no
    trigger; stable has nowhere to go back to, so its errors are only logged)."""

    listens = ("error",)
    says: ClassVar[str]  # the verdict's words before the child's message

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        if msg["kind"] != self.name or not self.enabled or not self._roles.on_trial(color):
            return None
        return self._fire(color, f"{self.says}: {msg['message'][:200]}")


class ExceptionEvaluator(_ErrorKind):
    """exception: the candidate reports an unhandled exception."""

    name = "exception"
    says = "unhandled exception"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.triggers.exception, ctx.roles)


class AuthEvaluator(_ErrorKind):
    """auth: the candidate reports an auth failure."""

    name = "auth"
    says = "auth failure"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.triggers.auth, ctx.roles)


class ExitEvaluator(_Critical):
    """exit: the candidate's process exited while it was on trial (the pipeline's own
    ``exit`` message, with the ``returncode``: negative for a signal)."""

    name = "exit"
    listens = (EXIT,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.triggers.exit, ctx.roles)

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        if not self.enabled or not self._roles.on_trial(color):
            return None
        returncode: int = msg["returncode"]
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        return self._fire(color, f"process exited while acting ({how})", float(returncode))
