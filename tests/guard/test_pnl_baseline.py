"""The P&L trigger's small parts at their edges: the running baseline at its smallest (a ring of
two rounds is allowed, and two rounds already have a spread), the recent window as built, and
the healthy ``pnl_ok`` line every ``OK_EVERY`` rounds exactly."""

from __future__ import annotations

import math

import pytest

from supervisor.guard.pnl import OK_EVERY, BaselineStats, RecentWindow
from tests.guard.test_pnl import GREEN, fixed


def test_the_smallest_ring_holds_two_rounds() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        BaselineStats(1)
    base = BaselineStats(2)
    for x in (1.0, 3.0, 5.0):  # the third pushes the first out
        base.add(x)
    assert (base.count, base.mean) == (2, 4.0)
    assert base.std == pytest.approx(math.sqrt(2.0))


def test_two_rounds_have_a_spread_one_has_none() -> None:
    base = BaselineStats(10)
    base.add(1.0)
    assert base.std == 0.0
    base.add(3.0)
    assert base.std == pytest.approx(math.sqrt(2.0))


def test_a_new_recent_window_is_empty_and_fills() -> None:
    window = RecentWindow(3)
    assert (window.count, window.total, window.full) == (0, 0.0, False)
    for x in (1.0, 2.0, 3.0, 4.0):
        window.push(x)
    assert (window.count, window.total, window.full) == (3, 9.0, True)


def test_a_healthy_candidate_is_reported_every_ok_every_rounds() -> None:
    guard = fixed()
    oks = [
        n
        for n in range(1, 3 * OK_EVERY + 1)
        if guard.candidate_round(GREEN, 0.0) is not None  # exactly the baseline's mean
    ]
    assert oks == [OK_EVERY, 2 * OK_EVERY, 3 * OK_EVERY]
