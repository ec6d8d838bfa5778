"""pnl_sigma: the seed's rule as written, the robust CUSUM, the baseline and the verdicts."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from itertools import pairwise

import pytest
from pydantic import ValidationError

from supervisor.config import Color, PnlSigmaTrigger
from supervisor.guard.pnl import OK_EVERY, BaselineStats, PnlSigma, RobustCusum, SeedRule
from supervisor.guard.verdict import Action, Severity, Verdict

GREEN = Color.GREEN
Draw = Callable[[random.Random], float]


class ArticleGuard:
    """The seed article's RollbackGuard.check, copied as written (minus print and Redis)."""

    def __init__(self, baseline_pnl_per_round: float, std_dev: float) -> None:
        self.baseline = baseline_pnl_per_round
        self.std = std_dev
        self.rounds: list[float] = []

    def check(self, round_pnl: float) -> bool:
        self.rounds.append(round_pnl)
        if len(self.rounds) < 10:
            return False
        recent_mean = sum(self.rounds[-10:]) / 10
        deviation = abs(recent_mean - self.baseline) / self.std
        return deviation > 3.0


def fixed(**settings: object) -> PnlSigma:
    """An evaluator judging against the config's fixed baseline N(0, 1)."""
    config = {"baseline_mean": 0.0, "baseline_std": 1.0, **settings}
    return PnlSigma(PnlSigmaTrigger.model_validate(config))


def rollbacks(guard: PnlSigma, pnls: list[float]) -> list[tuple[int, Verdict]]:
    """(round number, verdict) of every rollback the candidate rounds raise."""
    out = []
    for n, pnl in enumerate(pnls, start=1):
        verdict = guard.candidate_round(GREEN, pnl)
        if verdict is not None and verdict.action is Action.ROLLBACK:
            out.append((n, verdict))
    return out


# -- the seed's rule ---------------------------------------------------------------------------


def test_seed_rule_decides_exactly_like_the_article() -> None:
    rng = random.Random(7)
    article, rule = ArticleGuard(0.1, 0.5), SeedRule(window=10, sigma=3.0)
    pnls = [rng.gauss(-0.6, 1.0) for _ in range(3000)]
    expected = [article.check(x) for x in pnls]
    assert [rule.update(x, 0.1, 0.5) for x in pnls] == expected
    assert 0 < sum(expected) < len(pnls)  # the stream tests both answers


def test_seed_rule_needs_ten_rounds_and_more_than_three_sigma() -> None:
    rule = SeedRule(window=10, sigma=3.0)
    assert not any(rule.update(-100.0, 0.0, 1.0) for _ in range(9))
    assert rule.update(-100.0, 0.0, 1.0)

    at_the_line = SeedRule(window=10, sigma=3.0)
    assert not any(at_the_line.update(-3.0, 0.0, 1.0) for _ in range(50))  # 3σ is not > 3σ


def test_seed_detector_fires_on_the_window_mean_with_its_numbers() -> None:
    guard = fixed(detector="seed")
    # Ten healthy rounds, then -3.5: the last-10 mean passes -3σ with nine of them (-3.15).
    fired = rollbacks(guard, [0.0] * 10 + [-3.5] * 20)
    assert [n for n, _ in fired] == [19]
    verdict = fired[0][1]
    assert (verdict.trigger, verdict.severity, verdict.color) == ("pnl_sigma", Severity.HIGH, GREEN)
    assert verdict.value == pytest.approx(3.15)
    assert (verdict.threshold, verdict.window, verdict.baseline) == (3.0, 10, 0.0)
    assert "σ below baseline +0 (σ 1) over 10 rounds" in verdict.message
    assert "seed rule" in verdict.message


# -- the robust CUSUM --------------------------------------------------------------------------


def test_robust_cusum_catches_a_4_sigma_drop_within_10_rounds() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        guard = PnlSigma(PnlSigmaTrigger())
        for _ in range(1000):
            guard.baseline_round(rng.gauss(5.0, 2.0))
        fired = rollbacks(guard, [rng.gauss(5.0 - 4 * 2.0, 2.0) for _ in range(10)])
        assert fired, f"seed {seed}: no rollback in 10 rounds"
        verdict = fired[0][1]
        assert verdict.trigger == "pnl_sigma"
        assert verdict.action is Action.ROLLBACK
        assert verdict.value is not None
        assert verdict.threshold is not None
        assert verdict.value > verdict.threshold == 13.0
        assert verdict.baseline == pytest.approx(5.0, abs=0.3)
        assert verdict.window is not None
        assert 1 <= verdict.window <= 10
        assert "below baseline" in verdict.message


def test_one_wild_round_cannot_roll_back() -> None:
    # Each round counts at most clip - k = 2.5 toward h = 13: five can never fire, six can.
    assert not rollbacks(fixed(), [-1e9] * 5)
    assert [n for n, _ in rollbacks(fixed(), [-1e9] * 6)] == [6]


def test_a_suspiciously_good_candidate_is_rolled_back_too() -> None:
    [(n, verdict)] = rollbacks(fixed(), [4.0] * 10)
    assert n <= 10
    assert "above baseline" in verdict.message


@pytest.mark.parametrize(
    ("name", "draw"),
    [
        ("normal", lambda rng: rng.gauss(0.0, 1.0)),
        ("t(3)", lambda rng: rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(1.5, 2.0))),
        ("casino", lambda rng: 1.0 if rng.random() < 0.495 else -1.0),
    ],
    ids=["normal", "t3", "casino"],
)
def test_healthy_candidate_is_kept_through_20000_rounds(name: str, draw: Draw) -> None:
    rng = random.Random(f"healthy:{name}")
    guard = PnlSigma(PnlSigmaTrigger())
    for _ in range(1000):
        guard.baseline_round(draw(rng))
    assert rollbacks(guard, [draw(rng) for _ in range(20_000)]) == []
    assert guard.state(GREEN)["rounds"] == 20_000


def test_robust_cusum_rejects_a_clip_it_could_never_pass() -> None:
    with pytest.raises(ValueError, match="clip"):
        RobustCusum(k=1.0, h=5.0, clip=1.0)


# -- the baseline --------------------------------------------------------------------------------


def test_baseline_memory_is_bounded_and_exact_over_100000_rounds() -> None:
    rng = random.Random(3)
    guard = PnlSigma(PnlSigmaTrigger(baseline_rounds=1000))
    # A large offset tests the rounding; 100,500 ends mid-lap, 500 sliding updates after the
    # last exact recompute.
    stream = [rng.gauss(1e6, 3.0) for _ in range(100_500)]
    for x in stream:
        guard.baseline_round(x)
    for _ in range(100_000):
        guard.candidate_round(GREEN, 1e6)
    base = guard.baseline
    assert base.count == base.capacity == len(base._buf) == 1000
    assert len(guard._recent._buf) == guard.config.window
    assert base.mean == pytest.approx(statistics.fmean(stream[-1000:]), rel=1e-12)
    assert base.std == pytest.approx(statistics.stdev(stream[-1000:]), rel=1e-9)


def test_sliding_update_matches_the_window_between_laps() -> None:
    rng = random.Random(5)
    stats = BaselineStats(50)
    seen = [rng.expovariate(1.0) for _ in range(173)]  # stops mid-lap, away from a recompute
    for x in seen:
        stats.add(x)
    assert stats.mean == pytest.approx(statistics.fmean(seen[-50:]), rel=1e-12)
    assert stats.std == pytest.approx(statistics.stdev(seen[-50:]), rel=1e-9)


def test_config_baseline_is_used_until_stable_has_min_baseline_rounds() -> None:
    guard = PnlSigma(
        PnlSigmaTrigger(baseline_mean=0.0, baseline_std=1.0, min_baseline=300, baseline_rounds=300)
    )
    rng = random.Random(11)
    for _ in range(299):
        guard.baseline_round(rng.gauss(100.0, 1.0))  # far from the config's numbers
    assert guard.state(GREEN)["baseline_source"] == "config"
    assert rollbacks(guard, [0.0] * 200) == []  # healthy by the config's N(0, 1)

    guard.baseline_round(100.0)
    state = guard.state(GREEN)
    assert state["baseline_source"] == "stable"
    assert state["baseline_mean"] == pytest.approx(100.0, abs=0.3)
    assert [n for n, _ in rollbacks(guard, [0.0] * 10)] == [6]  # -100σ now: six rounds


def test_without_any_baseline_rounds_are_only_counted() -> None:
    guard = PnlSigma(PnlSigmaTrigger())
    for _ in range(299):
        guard.baseline_round(0.0)
    assert [guard.candidate_round(GREEN, -1e6) for _ in range(1000)] == [None] * 1000
    state = guard.state(GREEN)
    assert (state["rounds"], state["baseline_source"], state["value"]) == (1000, "none", 0.0)


def test_baseline_without_spread_is_not_used() -> None:
    guard = PnlSigma(PnlSigmaTrigger(min_baseline=30, baseline_rounds=100))
    for _ in range(100):
        guard.baseline_round(0.0)  # an agent that reports no PnL: σ = 0 would divide by zero
    assert guard.candidate_round(GREEN, 1.0) is None
    assert guard.state(GREEN)["baseline_source"] == "none"


def test_non_finite_pnl_is_ignored() -> None:
    guard = fixed()
    guard.baseline_round(math.nan)
    assert guard.baseline.count == 0
    assert [guard.candidate_round(GREEN, x) for x in (math.nan, math.inf, -math.inf)] == [None] * 3
    assert guard.state(GREEN)["value"] == 0.0


# -- the candidate's life ------------------------------------------------------------------------


def test_fires_once_then_waits_for_reset_candidate() -> None:
    guard = fixed()
    assert [n for n, _ in rollbacks(guard, [-5.0] * 100)] == [6]  # once, not 95 times
    assert guard.state(GREEN)["fired"] is True

    guard.reset_candidate()
    state = guard.state(GREEN)
    assert (state["rounds"], state["fired"], state["value"], state["role"]) == (
        0,
        False,
        None,
        None,
    )
    assert [n for n, _ in rollbacks(guard, [-5.0] * 100)] == [6]  # a fresh candidate, judged anew


def test_pnl_ok_is_logged_now_and_then() -> None:
    rng = random.Random(2)
    guard = fixed()
    oks = []
    for n in range(1, 1001):
        verdict = guard.candidate_round(GREEN, rng.gauss(0.0, 1.0))
        if verdict is not None:
            oks.append((n, verdict))
    assert 5 <= len(oks) <= 1000 // OK_EVERY
    assert all(later - earlier >= OK_EVERY for (earlier, _), (later, _) in pairwise(oks))
    for _, verdict in oks:
        assert (verdict.trigger, verdict.severity, verdict.action) == (
            "pnl_ok",
            Severity.LOW,
            Action.LOG,
        )
        assert verdict.value is not None
        assert verdict.value < 1.0


def test_disabled_trigger_never_judges() -> None:
    assert rollbacks(fixed(enabled=False), [-1e6] * 100) == []


def test_state_reports_both_colors() -> None:
    guard = fixed()
    guard.candidate_round(GREEN, -1.0)
    green, blue = guard.state(Color.GREEN), guard.state(Color.BLUE)
    assert green["role"] == "candidate"
    assert green["detector"] == "robust_cusum"
    assert green["threshold"] == 13.0
    assert green["value"] == pytest.approx(0.5)
    assert (blue["role"], blue["value"], blue["rounds"]) == ("stable", None, 0)
    assert blue["baseline_source"] == green["baseline_source"] == "config"


def test_config_numbers_come_in_pairs() -> None:
    with pytest.raises(ValidationError, match="together"):
        PnlSigmaTrigger(baseline_mean=0.0)
    with pytest.raises(ValidationError, match="min_baseline"):
        PnlSigmaTrigger(min_baseline=500, baseline_rounds=100)
