"""Freeze windows: across midnight, in a time zone that is not UTC, across a change of the
clocks; deny wins; allow windows alone leave the rest of the week closed; bad settings are
refused with the field named."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from supervisor.gates.settings import FreezeWindow, GatesSection
from supervisor.gates.windows import calendar, open_until

NY = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def at(zone: ZoneInfo, *when: int) -> datetime:
    return datetime(*when, tzinfo=zone)  # type: ignore[misc]


# Friday night in New York, 22:00 for four hours: until Saturday 02:00 local.
FRIDAY_NIGHT = FreezeWindow(
    name="friday night",
    days=["fri"],
    start="22:00",
    duration_s=4 * 3600,
    timezone="America/New_York",
)


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        ((2026, 12, 4, 21, 59), False),  # Friday, a minute before
        ((2026, 12, 4, 22, 0), True),  # Friday, the start
        ((2026, 12, 4, 23, 59), True),
        ((2026, 12, 5, 0, 30), True),  # Saturday, past midnight: still the Friday window
        ((2026, 12, 5, 1, 59), True),
        ((2026, 12, 5, 2, 0), False),  # the end is not inside
        ((2026, 12, 5, 22, 30), False),  # Saturday night: not a window day
        ((2026, 12, 11, 23, 0), True),  # the next Friday
    ],
)
def test_a_window_across_midnight_in_new_york(local: tuple[int, ...], inside: bool) -> None:
    now = at(NY, *local).astimezone(UTC)  # the gates judge in UTC; the window is local
    assert (open_until(FRIDAY_NIGHT, now) is not None) is inside
    assert calendar([FRIDAY_NIGHT], now).open is not inside


def test_the_window_lasts_its_real_duration_over_a_change_of_the_clocks() -> None:
    # 2026-11-01: New York falls back at 02:00 EDT to 01:00 EST. A Saturday 22:00 window of
    # four real hours ends at 01:00 EST (the wall clock shows one hour less).
    window = FreezeWindow(
        days=["sat"], start="22:00", duration_s=4 * 3600, timezone="America/New_York"
    )
    start = at(NY, 2026, 10, 31, 22, 0).astimezone(UTC)
    end = open_until(window, start)
    assert end is not None
    assert end - start == timedelta(hours=4)
    assert open_until(window, end - timedelta(seconds=1)) is not None
    assert open_until(window, end) is None


def test_deny_wins_over_allow_and_allow_alone_closes_the_rest() -> None:
    business = FreezeWindow(
        kind="allow",
        days=["mon", "tue", "wed", "thu", "fri"],
        start="09:00",
        duration_s=8 * 3600,
        timezone="Europe/Berlin",
    )
    lunch = FreezeWindow(
        name="lunch", days=["fri"], start="12:00", duration_s=3600, timezone="Europe/Berlin"
    )
    berlin = ZoneInfo("Europe/Berlin")
    friday_10 = at(berlin, 2026, 12, 4, 10, 0)
    friday_12_30 = at(berlin, 2026, 12, 4, 12, 30)
    saturday_10 = at(berlin, 2026, 12, 5, 10, 0)
    assert calendar([business, lunch], friday_10).open
    closed = calendar([business, lunch], friday_12_30)
    assert not closed.open
    assert "lunch" in closed.reason
    weekend = calendar([business, lunch], saturday_10)
    assert not weekend.open
    assert "outside every allow window" in weekend.reason
    assert calendar([], saturday_10).open


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"start": "24:00", "duration_s": 60}, "start"),
        ({"start": "9:00", "duration_s": 60}, "start"),
        ({"start": "09:00", "duration_s": 60, "timezone": "Mars/Olympus"}, "timezone"),
        ({"start": "09:00", "duration_s": 0}, "duration_s"),
        ({"start": "09:00", "duration_s": 60, "days": ["friday"]}, "days"),
        ({"start": "09:00", "duration_s": 60, "kind": "maybe"}, "kind"),
    ],
)
def test_a_bad_window_is_refused_naming_its_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GatesSection.model_validate({"windows": [fields]})
    assert named in str(caught.value)


def test_an_unknown_gate_cannot_be_disabled() -> None:
    with pytest.raises(ValidationError, match="disabled"):
        GatesSection.model_validate({"disabled": ["moon_phase"]})
