"""The escrow trigger: the grace after a change of who acts runs from the change the daemon
reports, not from the next tick (a tick may come late: a busy loop, a stall); the worst gap
shown is the longest of the overdue escrows."""

from __future__ import annotations

from tests.guard.test_escrow import BLUE, GREEN, check, guard, ticks, watch


def test_the_grace_runs_from_the_reported_change_even_when_the_next_tick_is_late() -> None:
    g = guard()  # gap 60 s
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    check(g, BLUE, "esc-1", 50.0)
    g.acting_changed(55.0, GREEN)  # green takes over at 55: its clock starts then
    fired = ticks(g, GREEN, 100.0, 200.0)  # the first tick after it only at 100
    assert [t for t, _ in fired] == [115.25]


def test_the_worst_gap_is_the_longest_of_the_overdue() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    watch(g, BLUE, "esc-2", 30.0)
    assert g.tick(200.0, BLUE) is not None
    assert g.worst_gap_s == 200.0
