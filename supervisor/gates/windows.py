"""Freeze windows: is a deploy allowed at this instant, by the calendar?

A window opens at ``start`` local time (in its own time zone) on each of its days and lasts
``duration_s`` of real time, so one that starts on Friday at 22:00 in Europe/Berlin and lasts
eight hours covers Saturday 06:00 too, and a night when the clocks change is eight real hours
all the same. Deny wins; when allow windows exist, a deploy needs one of them open.

>>> from datetime import datetime, timezone
>>> from supervisor.gates.settings import FreezeWindow
>>> friday_night = FreezeWindow(days=["fri"], start="22:00", duration_s=8 * 3600,
...                             timezone="Europe/Berlin")
>>> saturday_5am_berlin = datetime(2026, 12, 5, 4, 0, tzinfo=timezone.utc)
>>> calendar([friday_night], saturday_5am_berlin).open
False
>>> calendar([friday_night], datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)).open
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from supervisor.gates.settings import WEEKDAYS, FreezeWindow


def open_until(window: FreezeWindow, now: datetime) -> datetime | None:
    """The end of ``window``'s occurrence that covers ``now`` (timezone-aware), or None."""
    zone = ZoneInfo(window.timezone)
    today = now.astimezone(zone).date()
    days = set(window.days)
    length = timedelta(seconds=window.duration_s)
    # A week at most: an occurrence that began up to 7 days ago may still cover now.
    for back in range(8):
        day = today - timedelta(days=back)
        if WEEKDAYS[day.weekday()] not in days:
            continue
        begins = datetime.combine(day, window.start_time, tzinfo=zone)
        # Aware arithmetic in one zone is wall-clock arithmetic: compare in UTC.
        begins_utc = begins.astimezone(ZoneInfo("UTC"))
        ends_utc = begins_utc + length
        if begins_utc <= now < ends_utc:
            return ends_utc
    return None


@dataclass(frozen=True, slots=True)
class Calendar:
    """What the windows say at one instant: ``open`` and why."""

    open: bool
    reason: str
    until: datetime | None  # when this state ends, where known (a window's end)


def calendar(windows: Sequence[FreezeWindow], now: datetime) -> Calendar:
    """Deny wins; with allow windows, one must be open."""
    for window in windows:
        if window.kind == "deny":
            end = open_until(window, now)
            if end is not None:
                why = f"deny window {window.label!r} until {end:%Y-%m-%d %H:%M} UTC"
                return Calendar(False, why, end)
    allows = [w for w in windows if w.kind == "allow"]
    if not allows:
        return Calendar(True, "no deny window open", None)
    for window in allows:
        end = open_until(window, now)
        if end is not None:
            why = f"allow window {window.label!r} until {end:%Y-%m-%d %H:%M} UTC"
            return Calendar(True, why, end)
    return Calendar(False, "outside every allow window", None)
