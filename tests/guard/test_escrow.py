"""escrow_gap: the acting color's checks, per escrow gaps, grace after a flip, one verdict per
escrow per acting period, the audit list, and bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from supervisor.config import Color, EscrowGapTrigger
from supervisor.guard.escrow import MAX_ID_CHARS, EscrowGap
from supervisor.guard.verdict import Action, Severity, Verdict

BLUE, GREEN = Color.BLUE, Color.GREEN


def guard(**settings: object) -> EscrowGap:
    return EscrowGap(EscrowGapTrigger.model_validate({"gap_s": 60, **settings}))


def watch(g: EscrowGap, color: Color, escrow_id: str, now: float, **kw: float) -> None:
    g.event(color, escrow_id, "watch", kw.get("due_at"), kw.get("gap_s"), now)


def check(g: EscrowGap, color: Color, escrow_id: str, now: float) -> None:
    g.event(color, escrow_id, "check", None, None, now)


def ticks(
    g: EscrowGap,
    acting: Color,
    start: float,
    stop: float,
    before: Callable[[float], None] | None = None,
) -> list[tuple[float, Verdict]]:
    """Tick every 0.25 s from ``start`` to ``stop`` (calling ``before(t)`` ahead of each tick,
    for the events of that moment): (time, verdict) of each verdict."""
    out = []
    n = 0
    while (t := start + n * 0.25) <= stop:
        if before is not None:
            before(t)
        v = g.tick(t, acting)
        if v is not None:
            out.append((t, v))
        n += 1
    return out


def test_an_escrow_the_acting_color_leaves_unchecked_fires_after_its_gap() -> None:
    g = guard()
    g.tick(0.0, GREEN)
    watch(g, GREEN, "esc-1", 0.0, due_at=1_767_225_600.0)

    def checks(t: float) -> None:
        if t in (20.0, 40.0):
            check(g, GREEN, "esc-1", t)

    fired = ticks(g, GREEN, 0.0, 200.0, checks)
    assert [t for t, _ in fired] == [100.25]  # last check at 40, gap 60: over it after 100
    v = fired[0][1]
    assert (v.trigger, v.severity, v.action, v.color) == (
        "escrow_gap",
        Severity.MEDIUM,
        Action.ROLLBACK,
        GREEN,
    )
    assert v.message == (
        "escrow esc-1 unchecked by green for 60 s (gap 60 s): audit esc-1 (due 1767225600)"
    )
    assert (v.value, v.threshold, v.window) == (60.25, 60.0, 1.0)
    assert g.overdue(200.0) == [
        {"id": "esc-1", "due_at": 1_767_225_600.0, "unchecked_s": 160.0, "gap_s": 60.0}
    ]
    st = g.state(GREEN, now=200.0)
    assert (st["state"], st["fired"], st["last_fired"]) == ("fired", 1, 100.25)
    assert g.state(BLUE)["state"] == "ok"


def test_checks_by_the_standby_do_not_count() -> None:
    g = guard()
    g.tick(0.0, GREEN)
    watch(g, GREEN, "esc-1", 0.0)

    def blue_checks(t: float) -> None:  # the standby is diligent, the acting one is not
        if t % 5 == 0:
            check(g, BLUE, "esc-1", t)

    fired = ticks(g, GREEN, 0.0, 200.0, blue_checks)
    assert [t for t, _ in fired] == [60.25]
    # Had blue been acting, its checks would have counted.
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    assert ticks(g, BLUE, 0.0, 200.0, blue_checks) == []
    assert len(g) == 1


def test_only_the_acting_color_opens_an_escrow() -> None:
    g = guard()
    watch(g, GREEN, "early", 0.0)  # before the first tick nobody is known to act: taken
    g.tick(0.0, BLUE)
    # Green (re)starts as standby and watches its stale list, released long ago by blue.
    watch(g, GREEN, "esc-released", 1.0)
    assert (len(g), g.ignored) == (1, 1)
    watch(g, GREEN, "early", 2.0, gap_s=30.0)  # one already open: new terms, green's check
    check(g, BLUE, "early", 2.0)
    fired = ticks(g, BLUE, 0.0, 100.0)
    assert [(t, v.message.split(":")[-1]) for t, v in fired] == [(32.25, " audit early")]
    assert g.state(BLUE)["ignored"] == 1


def test_an_escrow_gap_s_wins_over_the_default() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "fast", 0.0, gap_s=10.0)
    watch(g, BLUE, "slow", 0.0, gap_s=600.0)
    watch(g, BLUE, "default", 0.0)
    watch(g, BLUE, "nonsense", 0.0, gap_s=-5.0)  # not a gap: the default applies
    fired = ticks(g, BLUE, 0.0, 700.0)
    assert [(t, v.message.split(":")[0]) for t, v in fired] == [
        (10.25, "escrow fast unchecked by blue for 10 s (gap 10 s)"),
        (60.25, "2 escrows unchecked by blue, the worst default for 60 s (gap 60 s)"),
        (600.25, "escrow slow unchecked by blue for 600 s (gap 600 s)"),
    ]
    assert fired[1][1].message.endswith("audit default, nonsense")


def test_unwatch_stops_it() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    watch(g, BLUE, "esc-2", 0.0)

    def unwatch(t: float) -> None:
        if t == 30.0:
            g.event(BLUE, "esc-1", "unwatch", None, None, t)

    fired = ticks(g, BLUE, 0.0, 300.0, unwatch)
    assert len(fired) == 1
    assert "esc-1" not in fired[0][1].message
    assert len(g) == 1
    check(g, BLUE, "esc-1", 301.0)  # a check of an escrow no longer watched is ignored
    assert len(g) == 1


def test_acting_changed_grants_a_full_gap_of_grace() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    check(g, BLUE, "esc-1", 50.0)
    # Green takes over at 55: it never checked esc-1, but its clock starts now.
    g.acting_changed(55.0, GREEN)
    fired = ticks(g, GREEN, 55.0, 200.0)
    assert [t for t, _ in fired] == [115.25]


def test_a_change_of_acting_seen_by_tick_alone_also_grants_grace() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    assert ticks(g, BLUE, 0.0, 50.0) == []
    fired = ticks(g, GREEN, 50.25, 200.0)
    assert [t for t, _ in fired] == [110.5]


def test_fires_once_per_escrow_per_acting_period() -> None:
    g = guard()
    g.tick(0.0, GREEN)
    watch(g, GREEN, "esc-1", 0.0)
    assert len(ticks(g, GREEN, 0.0, 1000.0)) == 1
    watch(g, GREEN, "esc-2", 1000.0)  # another escrow can still fire in the same period
    fired = ticks(g, GREEN, 1000.0, 2000.0)
    assert [(t, v.message.split(":")[-1]) for t, v in fired] == [(1060.25, " audit esc-2")]
    # The stable color takes over (the rollback): its own period, its own verdict.
    g.acting_changed(2000.0, BLUE)
    fired = ticks(g, BLUE, 2000.0, 3000.0)
    assert len(fired) == 1
    assert fired[0][1].color is BLUE
    assert fired[0][1].window == 2.0


def test_a_check_after_firing_clears_the_state() -> None:
    g = guard()
    g.tick(0.0, GREEN)
    watch(g, GREEN, "esc-1", 0.0)
    assert len(ticks(g, GREEN, 0.0, 100.0)) == 1
    assert g.state(GREEN)["state"] == "fired"
    check(g, GREEN, "esc-1", 100.1)
    assert ticks(g, GREEN, 100.25, 101.0) == []
    assert g.state(GREEN)["state"] == "ok"
    assert g.overdue(101.0) == []


def test_a_rewatch_with_a_shorter_gap_is_judged_by_it() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    assert ticks(g, BLUE, 0.0, 10.0) == []
    watch(g, GREEN, "esc-1", 10.0, gap_s=5.0)  # new terms from the standby: not a blue check
    fired = ticks(g, BLUE, 10.25, 100.0)
    assert [t for t, _ in fired] == [10.25]


def test_nobody_acting_judges_nothing_and_disabled_never_fires() -> None:
    g = guard()
    watch(g, BLUE, "esc-1", 0.0)
    assert g.tick(1000.0, None) is None
    off = guard(enabled=False)
    off.tick(0.0, BLUE)
    watch(off, BLUE, "esc-1", 0.0)
    assert ticks(off, BLUE, 0.0, 500.0) == []


def test_watches_beyond_max_escrows_are_refused_and_counted() -> None:
    g = guard(max_escrows=100)
    for i in range(150):
        watch(g, BLUE, f"esc-{i}", 0.0)
    watch(g, BLUE, "x" * (MAX_ID_CHARS + 1), 0.0)
    assert len(g) == 100
    assert g.refused == 51
    assert g.state(BLUE)["refused"] == 51
    watch(g, BLUE, "esc-5", 1.0, gap_s=30.0)  # one already watched is still updated
    g.event(BLUE, "esc-6", "unwatch", None, None, 1.0)
    watch(g, BLUE, "esc-new", 1.0)  # room again
    assert len(g) == 100
    assert g.refused == 51


def test_many_overdue_escrows_are_summed_up_in_the_message_and_listed_in_full() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    for i in range(25):
        watch(g, BLUE, f"esc-{i:02d}", float(i))
    v = g.tick(100.0, BLUE)
    assert v is not None
    assert v.message.startswith("25 escrows unchecked by blue, the worst esc-00")
    assert v.message.endswith(" and 15 more")
    rows = g.overdue(100.0)
    assert [r["id"] for r in rows] == [f"esc-{i:02d}" for i in range(25)]
    assert len(g.overdue(100.0, limit=3)) == 3


def test_config() -> None:
    cfg = EscrowGapTrigger()
    assert (cfg.gap_s, cfg.max_escrows) == (60.0, 10_000)
    with pytest.raises(ValueError, match="max_escrows"):
        EscrowGapTrigger(max_escrows=0)


def test_bounded_over_a_million_events() -> None:
    g = guard(max_escrows=1000)
    g.tick(0.0, BLUE)

    def run(start: int, stop: int) -> None:
        for i in range(start, stop):
            now = i * 0.001
            acting = BLUE if (i // 100_000) % 2 else GREEN  # a flip every 100 s
            n = i % 3
            if n == 0:
                watch(g, acting, f"esc-{i % 5000}", now)
            elif n == 1:
                check(g, acting.other if i % 2 else acting, f"esc-{i % 5000}", now)
            else:
                g.event(acting, f"esc-{(i * 7) % 5000}", "unwatch", None, None, now)
            if i % 250 == 0:  # the housekeeping tick
                g.tick(now, acting)

    run(0, 800_000)
    assert len(g) <= 1000
    assert g.refused > 0
    tracemalloc.start()
    try:
        run(800_000, 850_000)  # the escrows made before tracing have all been replaced
        before = tracemalloc.get_traced_memory()[0]
        run(850_000, 1_000_000)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(g) <= 1000
    assert growth < 64 * 1024, growth


def test_a_rewatch_without_a_gap_keeps_the_escrows_own() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0, gap_s=10.0)
    watch(g, BLUE, "esc-1", 5.0, due_at=123.0)  # e.g. after a restore: same terms
    fired = ticks(g, BLUE, 0.0, 30.0)
    assert [t for t, _ in fired] == [15.25]
    assert g.overdue(30.0)[0]["due_at"] == 123.0


def test_unwatching_the_overdue_escrow_clears_the_state() -> None:
    g = guard()
    g.tick(0.0, BLUE)
    watch(g, BLUE, "esc-1", 0.0)
    assert len(ticks(g, BLUE, 0.0, 100.0)) == 1
    g.event(BLUE, "esc-1", "unwatch", None, None, 100.1)
    assert g.tick(100.25, BLUE) is None
    assert g.state(BLUE)["state"] == "ok"
