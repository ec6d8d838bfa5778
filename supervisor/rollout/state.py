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
    CANARY = "canary"  # both act: the candidate within its share of the capital (canary.py)
    AB = "ab"  # an A/B test: both act, each within its share, each with its flag value (ab.py)


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


@dataclass(frozen=True, slots=True)
class CanaryState:
    """Where a canary stands: its steps (percent of the capital for the candidate, the last
    100), the step it is at, the candidate's share now (the step's, or what ``canary set``
    gave), since when (wall clock), and what the fence grants it beyond its share: a fraction
    of the step's stakes (``allowance``) and an amount to start with (``start_amount``)."""

    steps: tuple[float, ...]
    step: int
    percent: float
    since: float
    allowance: float
    start_amount: float = 0.0

    @property
    def allocation(self) -> float:
        """The candidate's share as a fraction (what its ``role`` push carries)."""
        return self.percent / 100.0

    def fields(self) -> dict[str, str]:
        """Its fields in the rollout hash (and state.json)."""
        return {
            "canary_steps": ",".join(f"{p:g}" for p in self.steps),
            "canary_step": str(self.step),
            "canary_percent": f"{self.percent:g}",
            "canary_since": f"{self.since:.3f}",
            "canary_allowance": repr(self.allowance),
            "canary_start_amount": repr(self.start_amount),
        }

    @classmethod
    def load(cls, fields: dict[str, str]) -> CanaryState | None:
        """The canary the rollout hash holds, or None (absent, or not readable).

        >>> c = CanaryState((5.0, 20.0, 100.0), 1, 20.0, 1.5, 0.01, 2.0)
        >>> CanaryState.load(c.fields()) == c
        True
        """
        try:
            steps = tuple(float(p) for p in fields["canary_steps"].split(","))
            state = cls(
                steps,
                int(fields["canary_step"]),
                float(fields["canary_percent"]),
                float(fields["canary_since"]),
                float(fields["canary_allowance"]),
                float(fields.get("canary_start_amount") or 0.0),
            )
        except (KeyError, ValueError):
            return None
        if not 0 <= state.step < len(steps) or not 0 < state.percent < 100:
            return None
        return state


_NO_CANARY: dict[str, str] = dict.fromkeys(
    (
        "canary_steps",
        "canary_step",
        "canary_percent",
        "canary_since",
        "canary_allowance",
        "canary_start_amount",
    ),
    "",
)


@dataclass(frozen=True, slots=True)
class AbState:
    """An A/B test: the flag it varies, arm A's value (blue's) and arm B's (green's) as the
    flags store them, B's share of the capital in percent, the rounds per arm before any
    verdict, since when (wall clock: also the test's id), and what the fence grants an arm
    beyond its share (as the canary's ``allowance`` and ``start_amount``)."""

    flag: str
    a: str
    b: str
    split: float
    min_rounds: int
    since: float
    allowance: float
    start_amount: float = 0.0

    @property
    def allocation(self) -> float:
        """Arm B's (green's) share as a fraction; arm A has the rest."""
        return self.split / 100.0

    def fields(self) -> dict[str, str]:
        """Its fields in the rollout hash (and state.json)."""
        return {
            "ab_flag": self.flag,
            "ab_a": self.a,
            "ab_b": self.b,
            "ab_split": f"{self.split:g}",
            "ab_min_rounds": str(self.min_rounds),
            "ab_since": f"{self.since:.3f}",
            "ab_allowance": repr(self.allowance),
            "ab_start_amount": repr(self.start_amount),
        }

    @classmethod
    def load(cls, fields: dict[str, str]) -> AbState | None:
        """The A/B test the rollout hash holds, or None (absent, or not readable).

        >>> t = AbState("crash_target", "2.0", "3.0", 50.0, 100, 1.5, 0.01, 2.0)
        >>> AbState.load(t.fields()) == t
        True
        """
        try:
            state = cls(
                fields["ab_flag"],
                fields["ab_a"],
                fields["ab_b"],
                float(fields["ab_split"]),
                int(fields["ab_min_rounds"]),
                float(fields["ab_since"]),
                float(fields["ab_allowance"]),
                float(fields.get("ab_start_amount") or 0.0),
            )
        except (KeyError, ValueError):
            return None
        if not state.flag or not 0 < state.split < 100 or state.min_rounds < 0:
            return None
        return state


_NO_AB: dict[str, str] = dict.fromkeys(AbState("", "", "", 50.0, 0, 0.0, 0.0).fields(), "")


@dataclass
class RolloutState:
    active: Color | None = None
    epoch: int = 0
    stable: Color = Color.BLUE
    candidate: Color | None = None
    probation_since: float | None = None  # wall clock, when the candidate took charge
    rejected: dict[Color, str] = field(default_factory=dict)  # color -> rejected version
    mode: Mode = Mode.BLUE_GREEN
    canary: CanaryState | None = None  # in canary mode: its steps and where it stands
    ab: AbState | None = None  # in A/B mode: the flag, the arms' values, the split

    def fields(self) -> dict[str, str]:
        """The rollout hash in Redis ('' deletes a field)."""
        return {
            "mode": self.mode.value,
            "stable": self.stable.value,
            "candidate": self.candidate.value if self.candidate else "",
            "probation_since": f"{self.probation_since:.3f}" if self.probation_since else "",
            "rejected_blue": self.rejected.get(Color.BLUE, ""),
            "rejected_green": self.rejected.get(Color.GREEN, ""),
            **(self.canary.fields() if self.canary is not None else _NO_CANARY),
            **(self.ab.fields() if self.ab is not None else _NO_AB),
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
        self.canary = CanaryState.load(fields) if self.mode is Mode.CANARY else None
        if self.mode is Mode.CANARY and (self.canary is None or self.candidate is None):
            self.mode, self.canary = Mode.BLUE_GREEN, None  # a canary that cannot be read
        self.ab = AbState.load(fields) if self.mode is Mode.AB else None
        if self.mode is Mode.AB and (self.ab is None or self.candidate is None):
            self.mode, self.ab = Mode.BLUE_GREEN, None  # an A/B test that cannot be read


def as_color(value: str | None) -> Color | None:
    """The color a stored value names, or None (absent, empty, or not a color).

    >>> as_color("green"), as_color("purple"), as_color(None)
    (<Color.GREEN: 'green'>, None, None)
    """
    try:
        return Color(value) if value else None
    except ValueError:
        return None
