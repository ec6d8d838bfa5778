"""``[gates]``: when a deploy may go ahead (the seed's One Rule), validated at the edge.

Kept apart from :mod:`supervisor.config` (which embeds :class:`GatesSection`) so that the rules
of one feature read in one place; nothing here imports the rest of the package.
"""

from __future__ import annotations

import re
from datetime import time as clock
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

GateName = Literal[
    "volatility",
    "escrow_dispute",
    "auto_release",
    "freeze_window",
    "cooldown",
    "redis",
    "children",
    "snapshot",
]
# In the order `agentsup gates` lists them: the agents' world first, then ours.
GATE_NAMES: tuple[GateName, ...] = get_args(GateName)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK_S = 7 * 24 * 3600
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")

Seconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FreezeWindow(_Model):
    """One window: from ``start`` (local time in ``timezone``) on each of ``days``, for
    ``duration_s``. A window may run past midnight (a Friday 22:00 start of 8 hours ends on
    Saturday at 06:00). ``deny``: no deploy inside it; ``allow``: deploys only inside the allow
    windows, when there is any. Deny wins, as in Argo CD's sync windows."""

    name: str = Field("", max_length=100)
    kind: Literal["deny", "allow"] = "deny"
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: str  # "HH:MM", 24-hour, local time
    duration_s: float = Field(gt=0, le=WEEK_S)
    timezone: str = "UTC"

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.fullmatch(v):
            raise ValueError(f"{v!r} is not a time of day as HH:MM (00:00 to 23:59)")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{v!r} is not a time zone of the IANA database (e.g. Europe/Berlin, UTC)"
            ) from None
        return v

    @property
    def start_time(self) -> clock:
        hours, minutes = self.start.split(":")
        return clock(int(hours), int(minutes))

    @property
    def label(self) -> str:
        return self.name or f"{self.kind} {','.join(self.days)} {self.start} {self.timezone}"


class GatesSection(_Model):
    """``[gates]`` (docs/gates.md). Every gate is on unless listed in ``disabled``."""

    # Gates not checked at all (shown as disabled): e.g. ["volatility"] for an agent that has
    # no such notion. A gate that is on and cannot know is closed: not knowing is not permission.
    disabled: list[GateName] = Field(default_factory=list)
    # The agents' `context` older than this closes the gates it feeds (volatility,
    # escrow_dispute, auto_release): an agent that stopped reporting is not a calm market.
    context_max_age_s: Seconds = 120.0
    # Volatility above this (the agents' own measure) closes the volatility gate; unset: the
    # gate has no threshold and stays open (say what high means for your agent).
    volatility_max: float | None = Field(None, ge=0)
    # An auto-release due within this long closes the gate: the One Rule's 30 minutes.
    auto_release_window_s: Seconds = 1800.0
    # After an automatic rollback, no deploy for this long (0: off).
    cooldown_s: float = Field(900.0, ge=0, le=30 * 24 * 3600)
    # Redis must answer, with at least this many replicas connected.
    min_replicas: int = Field(0, ge=0, le=100)
    # The color in charge's latest snapshot must be younger than this (unset: [handoff]
    # max_age_s); `deploy` takes one first when it is not.
    snapshot_max_age_s: Seconds | None = None
    windows: list[FreezeWindow] = Field(default_factory=list, max_length=100)
