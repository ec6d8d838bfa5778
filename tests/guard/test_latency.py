"""latency: the candidate's median against the stable median, the alert, the rollback that
waits for persist_s, the recovery, and memory that stays put over a million decisions."""

from __future__ import annotations

import random
import statistics
import tracemalloc

import pytest
from pydantic import ValidationError

from supervisor.config import Color, LatencyTrigger
from supervisor.guard.latency import CLEAR_BELOW, Latency, MedianWindow
from supervisor.guard.verdict import Action, Severity, Verdict

BLUE, GREEN = Color.BLUE, Color.GREEN


def guard(**settings: object) -> Latency:
    return Latency(LatencyTrigger.model_validate({"min_samples": 20, **settings}))


def feed(g: Latency, color: Color, role: str, ms: float, n: int, t0: float) -> list[Verdict]:
    """``n`` decisions of ``ms`` one second apart from ``t0``: the verdicts they raise."""
    out = []
    for i in range(n):
        v = g.decision(color, ms, t0 + i, role)
        if v is not None:
            out.append(v)
    return out


def test_median_window_is_the_median_of_the_last_size_values() -> None:
    rng = random.Random(3)
    w = MedianWindow(7)
    values: list[float] = []
    for _ in range(2000):
        x = round(rng.expovariate(0.1), 1)  # rounded: plenty of equal values to remove
        w.push(x)
        values.append(x)
        assert w.median == statistics.median(values[-7:])
        assert len(w) == min(len(values), 7)


def test_alert_once_when_the_candidate_median_passes_twice_stable() -> None:
    g = guard()
    assert feed(g, BLUE, "stable", 10.0, 50, 0.0) == []
    # 19 slow candidate decisions: under min_samples, nothing yet.
    assert feed(g, GREEN, "candidate", 48.0, 19, 100.0) == []
    verdicts = feed(g, GREEN, "candidate", 48.0, 30, 119.0)
    assert len(verdicts) == 1  # at once, and only once while it lasts
    v = verdicts[0]
    assert (v.trigger, v.severity, v.action, v.color) == (
        "latency",
        Severity.MEDIUM,
        Action.ALERT,
        GREEN,
    )
    assert v.message == "candidate median 48.0 ms is 4.8× stable 10.0 ms (threshold 2×)"
    assert (v.value, v.threshold, v.window, v.baseline) == (4.8, 2.0, 20.0, 10.0)
    st = g.state(GREEN, now=130.0)
    assert st["state"] == "alert"
    assert st["since"] == 119.0
    assert st["for_s"] == 11.0
    assert st["candidate_median_ms"] == 48.0
    assert st["stable_median_ms"] == 10.0
    assert g.state(BLUE)["role"] == "stable"


def test_twice_is_not_over_twice() -> None:
    g = guard()
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    assert feed(g, GREEN, "candidate", 20.0, 50, 100.0) == []
    assert g.ratio == 2.0


def test_rollback_only_once_the_episode_has_lasted_persist_s() -> None:
    g = guard(persist_s=300)
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    [alert] = feed(g, GREEN, "candidate", 30.0, 20, 1000.0)  # starts at t=1019
    assert alert.action is Action.ALERT
    # Sparse decisions: the housekeeping tick judges persistence on its own.
    assert g.tick(1019.0 + 299.9) is None
    rollback = g.tick(1019.0 + 300.0)
    assert rollback is not None
    assert rollback.action is Action.ROLLBACK
    assert rollback.severity is Severity.MEDIUM
    assert rollback.color is GREEN
    assert rollback.message.endswith("(threshold 2×) for 300 s")
    assert rollback.value == 3.0
    # Once per candidate: neither ticks nor decisions raise it again.
    assert g.tick(2000.0) is None
    assert feed(g, GREEN, "candidate", 30.0, 10, 2001.0) == []
    assert g.state(GREEN)["state"] == "fired"
    assert g.state(GREEN)["fired"] == 2  # the alert and the rollback


def test_rollback_also_from_a_decision_after_persist_s() -> None:
    g = guard(persist_s=60)
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    feed(g, GREEN, "candidate", 30.0, 20, 100.0)  # slow since t=119
    v = g.decision(GREEN, 30.0, 179.0, "candidate")
    assert v is not None
    assert v.action is Action.ROLLBACK


def test_recovery_clears_the_episode_and_a_new_one_alerts_again() -> None:
    g = guard(persist_s=300, window=20)
    feed(g, BLUE, "stable", 10.0, 20, 0.0)
    [first] = feed(g, GREEN, "candidate", 30.0, 20, 100.0)  # slow from t=119
    assert first.action is Action.ALERT
    # Back to normal before persist_s: the median falls once half the window is fast.
    assert feed(g, GREEN, "candidate", 10.0, 20, 200.0) == []
    assert g.state(GREEN)["state"] == "ok"
    assert g.tick(119.0 + 10_000) is None  # no rollback: the episode ended
    [second] = feed(g, GREEN, "candidate", 30.0, 20, 500.0)
    assert second.action is Action.ALERT
    assert g.tick(second_start := 510.0) is None
    assert g.state(GREEN)["since"] == second_start


def test_a_median_hovering_at_the_threshold_alerts_once() -> None:
    g = guard(persist_s=2_000_000, window=20)
    feed(g, BLUE, "stable", 10.0, 20, 0.0)
    rng = random.Random(5)
    # Ratios between 1.9 and 2.1: over the line, under it, over it again, but never under the
    # clearing band (CLEAR_BELOW × 2 = 1.8), so it is one episode and one alert.
    assert 2.0 * CLEAR_BELOW < 1.9
    verdicts = feed(g, GREEN, "candidate", 21.0, 20, 100.0)
    for i in range(5000):
        v = g.decision(GREEN, rng.uniform(19.0, 21.0), 200.0 + i, "candidate")
        if v is not None:
            verdicts.append(v)
    assert [v.action for v in verdicts] == [Action.ALERT]


def test_no_verdict_while_stable_has_too_few_samples() -> None:
    g = guard()
    feed(g, BLUE, "stable", 10.0, 19, 0.0)
    assert feed(g, GREEN, "candidate", 500.0, 200, 100.0) == []
    assert g.tick(1e9) is None
    assert g.state(GREEN)["value"] is None
    # The twentieth stable decision completes the baseline: the next candidate one is judged.
    assert g.decision(BLUE, 10.0, 400.0, "stable") is not None  # judged on the stable side too


def test_other_roles_are_ignored() -> None:
    g = guard()
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    assert feed(g, GREEN, "other", 500.0, 100, 100.0) == []
    assert feed(g, GREEN, "shadow", 500.0, 100, 100.0) == []
    assert g.state(GREEN)["samples"] == 0


def test_reset_candidate_keeps_the_stable_baseline() -> None:
    g = guard(persist_s=300)
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    feed(g, GREEN, "candidate", 30.0, 20, 100.0)
    assert g.tick(1000.0) is not None  # rolled back
    g.reset_candidate()
    assert g.state(GREEN)["samples"] == 0
    assert g.state(BLUE)["samples"] == 50
    # The next candidate is judged against the same baseline and gets its own alert.
    [alert] = feed(g, GREEN, "candidate", 30.0, 20, 2000.0)
    assert alert.action is Action.ALERT
    assert alert.baseline == 10.0


def test_a_new_stable_color_starts_its_baseline_afresh() -> None:
    g = guard()
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    g.reset_candidate()
    feed(g, GREEN, "stable", 40.0, 5, 100.0)  # green was promoted: blue's numbers are void
    assert g.state(GREEN)["samples"] == 5
    assert g.state(GREEN)["stable_median_ms"] == 40.0


def test_bad_numbers_are_dropped_and_disabled_never_fires() -> None:
    g = guard()
    feed(g, BLUE, "stable", 10.0, 50, 0.0)
    for bad in (float("nan"), float("inf"), -1.0):
        assert g.decision(GREEN, bad, 100.0, "candidate") is None
    assert g.dropped == 3
    assert g.state(GREEN)["samples"] == 0

    off = guard(enabled=False)
    feed(off, BLUE, "stable", 10.0, 50, 0.0)
    assert feed(off, GREEN, "candidate", 500.0, 50, 100.0) == []
    assert off.tick(1e9) is None


def test_a_zero_stable_median_gives_a_finite_ratio() -> None:
    g = guard()
    feed(g, BLUE, "stable", 0.0, 50, 0.0)
    [v] = feed(g, GREEN, "candidate", 1.0, 20, 100.0)
    assert v.value == 1000.0  # 1 ms against the 1 µs floor


def test_config_checks_min_samples_against_window() -> None:
    with pytest.raises(ValidationError, match="min_samples must be at most window"):
        LatencyTrigger(window=10, min_samples=11)
    with pytest.raises(ValidationError):
        LatencyTrigger(ratio=1.0)
    assert LatencyTrigger().min_samples == 20


def test_memory_stays_bounded_over_a_million_decisions() -> None:
    g = guard(window=50)
    rng = random.Random(11)
    samples = [rng.uniform(5.0, 15.0) for _ in range(1024)]

    def run(start: int, n: int) -> None:
        for i in range(start, start + n):
            g.decision(BLUE, samples[i & 1023], i, "stable")
            g.decision(GREEN, samples[(i * 7) & 1023] * 3, i, "candidate")
            if i & 1023 == 0:
                g.tick(i)

    run(0, 400_000)  # 800,000 decisions: the windows never hold more than `window`
    assert len(g.stable._sorted) == len(g.candidate._sorted) == 50
    tracemalloc.start()
    try:
        run(400_000, 10_000)  # every value held before tracing has been replaced
        before = tracemalloc.get_traced_memory()[0]
        run(410_000, 100_000)  # 200,000 more decisions, every allocation traced
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(g.stable._sorted) == len(g.candidate._sorted) == 50
    assert growth < 16 * 1024, growth
