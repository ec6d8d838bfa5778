"""What a trigger says when it fires."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from supervisor.config import Color


class Severity(StrEnum):
    CRITICAL = "critical"  # money is at risk now: roll back at once
    HIGH = "high"  # the candidate is measurably worse: roll back
    MEDIUM = "medium"  # alert; roll back if it lasts
    LOW = "low"  # healthy, logged now and then


class Action(StrEnum):
    ROLLBACK = "rollback"  # flip back to stable (and alert)
    ALERT = "alert"  # tell the operator, keep going
    LOG = "log"  # worth a line in the log, nothing more


@dataclass(frozen=True, slots=True)
class Verdict:
    """A trigger's judgement on one color, with the numbers behind it."""

    trigger: str
    severity: Severity
    action: Action
    color: Color
    message: str
    value: float | None = None
    threshold: float | None = None
    window: float | None = None
    baseline: float | None = None

    @property
    def reason(self) -> str:
        """The flip reason recorded in the stream: ``trigger: message``."""
        return f"{self.trigger}: {self.message}"

    def numbers(self) -> dict[str, float]:
        """The numbers that are set, for the log line and the alert."""
        out = {}
        for name in ("value", "threshold", "window", "baseline"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out
