"""The rollout's values: its mode, its state, and a committed change of it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from supervisor.config import Color


class Mode(StrEnum):
    """How the two colors share the work; Redis stores it (``{ns}:rollout`` ``mode``) and a
    :class:`~supervisor.rollout.strategy.Strategy` of that name says what it means."""

    BLUE_GREEN = "blue-green"  # one color acts, the other stands by warm


ChangeKind = Literal["flip", "confirm"]


@dataclass(frozen=True, slots=True)
class Change:
    """A committed change of who acts (``kind="flip"``) or of who is stable (``"confirm"``)."""

    kind: ChangeKind
    active: Color | None
    previous: Color | None
    epoch: int
    reason: str
    by: str
    trigger: str | None = None
    started: float | None = None  # monotonic time of the verdict or request, for latency


@dataclass
class RolloutState:
    active: Color | None = None
    epoch: int = 0
    stable: Color = Color.BLUE
    candidate: Color | None = None
    probation_since: float | None = None  # wall clock, when the candidate took charge
    rejected: dict[Color, str] = field(default_factory=dict)  # color -> rejected version
    mode: Mode = Mode.BLUE_GREEN

    def fields(self) -> dict[str, str]:
        """The rollout hash in Redis ('' deletes a field)."""
        return {
            "mode": self.mode.value,
            "stable": self.stable.value,
            "candidate": self.candidate.value if self.candidate else "",
            "probation_since": f"{self.probation_since:.3f}" if self.probation_since else "",
            "rejected_blue": self.rejected.get(Color.BLUE, ""),
            "rejected_green": self.rejected.get(Color.GREEN, ""),
        }

    def load(self, fields: dict[str, str]) -> None:
        """Take what the rollout hash holds; a field that makes no sense (written by hand,
        or by a newer version) keeps today's value rather than stop the daemon."""
        self.stable = as_color(fields.get("stable")) or self.stable
        self.candidate = as_color(fields.get("candidate"))
        try:
            self.probation_since = float(fields.get("probation_since") or "nan")
        except ValueError:
            self.probation_since = None
        if self.probation_since != self.probation_since:  # NaN: none
            self.probation_since = None
        self.rejected = {
            c: fields[f"rejected_{c.value}"] for c in Color if fields.get(f"rejected_{c.value}")
        }
        with contextlib.suppress(ValueError):
            self.mode = Mode(fields.get("mode", self.mode.value))


def as_color(value: str | None) -> Color | None:
    """The color a stored value names, or None (absent, empty, or not a color).

    >>> as_color("green"), as_color("purple"), as_color(None)
    (<Color.GREEN: 'green'>, None, None)
    """
    try:
        return Color(value) if value else None
    except ValueError:
        return None
